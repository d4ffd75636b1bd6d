"""``decide()`` of this keyguard beside an earlier one, in one process, alternating rounds.

``KEYGUARD_BENCH_BASELINE`` names the ``src`` folder of the earlier keyguard (for
example ``git archive main | tar -x -C /tmp/main``, then ``/tmp/main/src``). Its
package is copied under the name ``keyguard_baseline`` (its own imports renamed),
so both load side by side. Each is composed as ``serve`` composes it over a
memory store and its snapshot filled with the same 1,000,000 keys (the kinds of
:mod:`benchmarks.decide`); then the same batches of allowed decisions, warm and
spread, run on one and the other in alternating order, and each round's ratio
is kept. Without the variable this benchmark only says how to run it.
"""

import gc
import importlib
import os
import random
import re
import shutil
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from types import ModuleType
from typing import Any

from pydantic import SecretStr

from benchmarks.context import Context
from benchmarks.decide import (
    ALLOW_LIST,
    CLIENT_NETWORK,
    SPREAD_ROUTES,
    WARM_IP,
    WARM_METHOD,
    WARM_PATH,
    Call,
    make_tokens,
)
from benchmarks.report import Section, table
from benchmarks.snapshot import BASELINE_VARIABLE
from benchmarks.stats import median

KEYS = 1_000_000
PRESENTED = 300_000  # keys with tokens; the rest have random digests
ROUNDS = 31
CALLS = 10_000
KINDS = ("full access", "scoped", "scoped, allow-list")
_IMPORT = re.compile(r"\b(from|import) keyguard\b")


def load_baseline(source: str, folder: Path) -> None:
    """Copy the package in ``source`` to ``folder`` as ``keyguard_baseline``."""
    target = folder / "keyguard_baseline"
    shutil.copytree(Path(source) / "keyguard", target)
    for module in target.rglob("*.py"):
        module.write_text(_IMPORT.sub(r"\1 keyguard_baseline", module.read_text()))
    sys.path.insert(0, str(folder))


def compose(package: str, tokens: list[str]) -> Any:
    """A keyguard of ``package`` as ``serve`` composes one, its snapshot filled."""

    def part(name: str) -> ModuleType:
        return importlib.import_module(f"{package}.{name}")

    records, level = part("domain.records"), part("domain.scopes").Level
    keyguard = part("runtime").Keyguard(
        part("config").Settings(database_url="memory://", secret_key=SecretStr("s" * 43))
    )
    scopes = {"messages": level.WRITE, "numbers": level.READ, "calls": level.WRITE}
    settings = records.KeySettings
    kinds = [
        settings(label="full"),
        settings(label="scoped", scopes_enabled=True, scopes=scopes),
        settings(
            label="restricted",
            scopes_enabled=True,
            scopes=scopes,
            restricted=True,
            permitted_ips=ALLOW_LIST,
        ),
    ]
    created, digest = datetime.now(UTC), keyguard.vault.digest
    gc.disable()
    try:
        for n in range(KEYS):
            key_digest = digest(tokens[n]) if n < len(tokens) else os.urandom(32)
            keyguard.cache.put(
                records.StoredKey(
                    id=n + 1,
                    account_id=1 + n // 1_000,
                    digest=key_digest,
                    sealed_value=b"",
                    settings=kinds[n % 3],
                    created_at=created,
                    revision=n + 1,
                )
            )
    finally:
        gc.enable()
    return keyguard


def warm(tokens: list[str], kind: int) -> list[Call]:
    pool = tokens[kind : 3 * 1_000 : 3]
    return [(token, WARM_IP, WARM_METHOD, WARM_PATH) for token in (pool * 10)[:CALLS]]


def spread(tokens: list[str], kind: int, chooser: random.Random) -> list[Call]:
    pool, calls = tokens[kind::3], []
    for _ in range(CALLS):
        method, template = chooser.choice(SPREAD_ROUTES)
        path = template.format(uuid.UUID(int=chooser.getrandbits(128)))
        address = f"{CLIENT_NETWORK}{chooser.getrandbits(8) % 254 + 1}"
        calls.append((chooser.choice(pool), address, method, path))
    return calls


def timed(keyguard: Any, batch: list[Call]) -> float:
    """µs per call; every call must be allowed."""
    decide, outcomes = keyguard.decider.decide, keyguard.decider.outcomes
    allowed, started = outcomes[200], time.perf_counter_ns()
    for token, ip, method, path in batch:
        decide(token, ip, method, path)
    elapsed = time.perf_counter_ns() - started
    if outcomes[200] - allowed != len(batch):
        raise RuntimeError("a timed decision was refused")
    return elapsed / len(batch) / 1000


def compare(
    this: Any, before: Any, tokens: list[str], chooser: random.Random
) -> tuple[list[list[str]], dict[str, Any]]:
    """Table rows and raw figures: every case, alternating rounds."""
    rows: list[list[str]] = []
    figures: dict[str, Any] = {}
    for pattern in ("warm", "spread"):
        for kind, name in enumerate(KINDS):
            ratios, ours, theirs = [], [], []
            for round_ in range(ROUNDS):
                batch = warm(tokens, kind) if pattern == "warm" else spread(tokens, kind, chooser)
                pair = (this, before) if round_ % 2 else (before, this)
                times = {id(keyguard): timed(keyguard, batch) for keyguard in pair}
                ours.append(times[id(this)])
                theirs.append(times[id(before)])
                ratios.append(ours[-1] / theirs[-1])
            ordered = sorted(ratios)
            middle = f"{ordered[ROUNDS // 4]:.2f} to {ordered[3 * ROUNDS // 4]:.2f}"
            rows.append(
                [
                    f"{pattern}, {name}",
                    f"{median(ours):.2f}",
                    f"{median(theirs):.2f}",
                    f"{median(ratios):.2f} ({middle})",
                ]
            )
            figures[f"{pattern}_{kind}"] = {"this": ours, "before": theirs, "ratios": ratios}
    return rows, figures


def run(context: Context) -> Section:  # noqa: ARG001
    section = Section("baseline", "decide() beside an earlier keyguard, one process")
    source = os.environ.get(BASELINE_VARIABLE)
    if not source:
        section.notes.append(f"Set {BASELINE_VARIABLE} to an earlier keyguard's src folder.")
        return section
    tokens, chooser = make_tokens(PRESENTED), random.Random(5)
    folder = Path(tempfile.mkdtemp(prefix="keyguard-baseline-"))
    try:
        load_baseline(source, folder)
        this, before = compose("keyguard", tokens), compose("keyguard_baseline", tokens)
        rows, figures = compare(this, before, tokens, chooser)
    finally:
        shutil.rmtree(folder)
    section.tables.append(
        table(
            f"µs per allowed decision, {KEYS:,} keys, median of {ROUNDS} alternating rounds",
            ["case", "this", "before", "this / before (middle half)"],
            rows,
        )
    )
    section.figures.update(figures)
    return section
