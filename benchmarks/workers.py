"""What the server's worker processes did in each round: connections held, CPU spent.

wrk opens all its connections at once. Every uvicorn worker waits on the same
listening socket, and the first one to wake accepts most of what is queued, so
a round often runs with 12, 15 or all 16 connections on one worker. The split
is chance, the same for every server loaded, and it is reported beside the
figures. So is the CPU time the server's processes spent per request: on a
machine shared with the load generator (and, here, with other work), it says
more about a server's own cost than requests per second do.

:class:`WatchedLoad` wraps a load generator; it finds the processes listening
on the round's port with ``ss`` (iproute2), reads their CPU time from /proc
before and after the round, and counts their connections shortly after the
round starts.
"""

import os
import re
import shutil
import subprocess
import threading
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from benchmarks.load import LoadGenerator, LoadResult
from benchmarks.stats import median

SAMPLE_AFTER = 0.5  # seconds into a round
_PID = re.compile(r"pid=(\d+)")


def _ss(*arguments: str) -> list[str]:
    if shutil.which("ss") is None:
        return []
    command = ["ss", "-tnpH", *arguments]
    return subprocess.run(command, capture_output=True, text=True, timeout=10).stdout.splitlines()


def listeners(port: int) -> set[int]:
    """The processes that share the listening socket on ``port``: the server's workers."""
    return {int(pid) for line in _ss("-l", f"( sport = :{port} )") for pid in _PID.findall(line)}


def connections_per_process(port: int) -> list[int]:
    """How many established connections to ``port`` each process holds, largest first."""
    lines = _ss("state", "established", f"( sport = :{port} )")
    holders = Counter(match.group(1) for match in map(_PID.search, lines) if match)
    return sorted(holders.values(), reverse=True)


def cpu_seconds(pids: set[int]) -> float:
    """User and system CPU time the processes have spent so far."""
    ticks = 0
    for pid in pids:
        fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
        ticks += int(fields[11]) + int(fields[12])  # utime, stime
    return ticks / os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True, slots=True)
class Watched:
    """One round as the server's side saw it."""

    connections: list[int]  # per worker, largest first; empty when not seen
    cpu_microseconds_per_request: float | None


@dataclass(slots=True)
class WatchedLoad:
    """A :class:`LoadGenerator` that notes, per URL, what the server did in each round."""

    generator: LoadGenerator
    rounds: dict[str, list[Watched]] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return self.generator.name

    def run(self, url: str, headers: Mapping[str, str], seconds: float) -> LoadResult:
        port = urlsplit(url).port or 80
        pids = listeners(port)
        seen: list[list[int]] = []
        sampler = threading.Timer(SAMPLE_AFTER, lambda: seen.append(connections_per_process(port)))
        before = cpu_seconds(pids)
        sampler.start()
        try:
            result = self.generator.run(url, headers, seconds)
        finally:
            sampler.cancel()
            sampler.join()
        spent = cpu_seconds(pids) - before
        per_request = spent / result.requests * 1e6 if pids and result.requests else None
        self.rounds.setdefault(url, []).append(Watched(seen[0] if seen else [], per_request))
        return result

    def spreads(self, url: str) -> str:
        """The rounds' splits in the order they ran, e.g. ``16, 12+4, 8+8``."""
        rounds = self.rounds.get(url, [])
        return ", ".join("+".join(map(str, r.connections)) or "?" for r in rounds)

    def cpu_per_request(self, url: str) -> float | None:
        """The median over the measured rounds (the warm-up left out) of µs of CPU per request."""
        values = [r.cpu_microseconds_per_request for r in self.rounds.get(url, [])[1:]]
        known = [value for value in values if value is not None]
        return median(known) if known else None
