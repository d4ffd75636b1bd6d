"""``python -m benchmarks``: every benchmark in one run, one report, one JSON file.

Figures that are compared are measured side by side in the same run, because
this machine is shared and noisy; a later benchmark adds itself to BENCHMARKS.
"""

import argparse
import os
import platform
import signal
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from importlib.metadata import version
from pathlib import Path
from types import FrameType
from typing import Any

from rich.console import Console

from benchmarks import (
    analytics,
    baseline,
    bounded,
    console_keys,
    credits,
    decide,
    drf,
    forward,
    importing,
    limits,
    lists,
    management,
    memory,
    postgres,
    propagation,
    ratelimit,
    replica,
    snapshot,
)
from benchmarks.context import Context
from benchmarks.load import choose_generator
from benchmarks.report import Section, show, write_json

BENCHMARKS: dict[str, Callable[[Context], Section]] = {
    "management": management.run,
    "decide": decide.run,
    "memory": memory.run,
    "forward": forward.run,
    "drf": drf.run,
    "propagation": propagation.run,
    "postgres": postgres.run,
    "limits": limits.run,
    "ratelimit": ratelimit.run,
    "analytics": analytics.run,
    "replica": replica.run,
    "console": console_keys.run,
    "importing": importing.run,
    "snapshot": snapshot.run,
    "baseline": baseline.run,
    "credits": credits.run,
    "lists": lists.run,
    "bounded": bounded.run,
}
RESULTS = Path(__file__).with_name("results") / "latest.json"


def parse_arguments(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__)
    parser.add_argument(
        "--only", choices=sorted(BENCHMARKS), action="append", help="Run only these (repeatable)."
    )
    parser.add_argument(
        "--load",
        choices=["auto", "wrk", "httpx"],
        default="auto",
        help="Load generator: wrk if available (auto), wrk only, or in-process httpx.",
    )
    parser.add_argument(
        "--no-install", action="store_true", help="Do not apt-get install wrk when it is missing."
    )
    parser.add_argument("--workers", type=int, default=1, help="keyguard serve --workers.")
    parser.add_argument("--keys", type=int, default=10_000, help="Keys to create.")
    parser.add_argument("--seconds", type=float, default=5.0, help="Length of one load round.")
    parser.add_argument("--output", type=Path, default=RESULTS, help="Where to write the JSON.")
    return parser.parse_args(argv)


def _exit_on_sigterm(signum: int, _frame: FrameType | None) -> None:
    sys.exit(128 + signum)  # unwinds through the `finally` that stops servers


def main(argv: list[str] | None = None) -> int:
    arguments = parse_arguments(argv)
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    console = Console()
    generator, notes = choose_generator(arguments.load, install=not arguments.no_install)
    context = Context(generator, arguments.workers, arguments.keys, arguments.seconds)
    console.print(
        f"[bold]keyguard {version('keyguard')}[/bold] benchmarks, "
        f"{os.cpu_count()} CPUs, Python {platform.python_version()}, "
        f"{context.workers} server worker(s), load by {generator.name}",
        highlight=False,
    )
    for note in notes:
        console.print(f"[yellow]note:[/yellow] {note}", highlight=False)
    document: dict[str, Any] = {
        "started_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "keyguard": version("keyguard"),
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "workers": context.workers,
        "load_generator": generator.name,
        "notes": notes,
        "benchmarks": {},
    }
    failed = False
    for name in arguments.only or BENCHMARKS:
        began = time.perf_counter()
        try:
            section = BENCHMARKS[name](context)
        except Exception as error:
            failed = True
            console.print(f"[red]{name} failed:[/red] {type(error).__name__}: {error}")
            document["benchmarks"][name] = {"error": f"{type(error).__name__}: {error}"}
            continue
        show(console, section)
        elapsed = time.perf_counter() - began
        document["benchmarks"][name] = {**section.figures, "notes": section.notes}
        document["benchmarks"][name]["elapsed_seconds"] = elapsed
        console.print(f"[dim]{name}: {elapsed:.0f} s[/dim]")
    write_json(arguments.output, document)
    console.print(f"Raw figures: {arguments.output}", highlight=False)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
