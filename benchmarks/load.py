"""Closed-loop HTTP load against one URL: wrk when it is there, else httpx in-process.

Both generators keep a fixed number of connections busy for a fixed time and
report a :class:`LoadResult`. wrk is preferred: it is written in C and costs the
server little CPU; the httpx loop shares this machine's cores with the server,
so it lowers absolute figures (ratios between targets stay comparable).
"""

import asyncio
import json
import os
import shutil
import subprocess
import threading
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Protocol

import httpx

from benchmarks.stats import median, percentile

CONNECTIONS = 16
REQUEST_TIMEOUT = 5.0
WRK_SCRIPT = Path(__file__).with_name("wrk_report.lua")
WRK_MARKER = "BENCH_RESULT "
INSTALL_TIMEOUT = 120.0


@dataclass(frozen=True, slots=True)
class LoadResult:
    """What one load run measured; ``failures`` counts errors, timeouts and 4xx/5xx."""

    requests: int
    seconds: float
    failures: int
    p50_ms: float
    p99_ms: float
    client_cpu_seconds: float | None = None  # the load generator's own CPU time, when known

    @property
    def client_cores(self) -> float | None:
        """The load generator's CPU time per second: 1.0 is one core kept busy."""
        if self.client_cpu_seconds is None:
            return None
        return self.client_cpu_seconds / self.seconds

    @property
    def requests_per_second(self) -> float:
        return self.requests / self.seconds

    def figures(self) -> dict[str, Any]:
        return {
            **asdict(self),
            "requests_per_second": self.requests_per_second,
            "client_cores": self.client_cores,
        }


class LoadGenerator(Protocol):
    @property
    def name(self) -> str: ...

    def run(self, url: str, headers: Mapping[str, str], seconds: float) -> LoadResult:
        """Load ``url`` for about ``seconds`` seconds."""
        ...


@dataclass(frozen=True, slots=True)
class Wrk:
    """wrk with one thread; a Lua script sets the headers and reports JSON.

    Its CPU time is read from its own resource usage when it exits: a wrk that
    keeps its one core busy is the ceiling of what it measures.
    """

    executable: str
    connections: int = CONNECTIONS

    @property
    def name(self) -> str:
        return f"wrk, {self.connections} connections"

    def run(self, url: str, headers: Mapping[str, str], seconds: float) -> LoadResult:
        duration = max(1, round(seconds))
        command = [
            self.executable,
            "--threads=1",
            f"--connections={self.connections}",
            f"--duration={duration}s",
            f"--timeout={REQUEST_TIMEOUT:.0f}s",
            f"--script={WRK_SCRIPT}",
            url,
        ]
        lines = "\n".join(f"{name}: {value}" for name, value in headers.items())
        with subprocess.Popen(
            command,
            env={**os.environ, "BENCH_HEADERS": lines},
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        ) as process:
            watchdog = threading.Timer(duration + 30, process.kill)
            watchdog.start()
            try:
                assert process.stdout is not None
                output = process.stdout.read()
                _, status, usage = os.wait4(process.pid, 0)  # reaps it, with its CPU time
            finally:
                watchdog.cancel()
            process.returncode = os.waitstatus_to_exitcode(status)
        if process.returncode != 0:
            raise subprocess.CalledProcessError(process.returncode, command, output)
        result = parse_wrk_report(output)
        return replace(result, client_cpu_seconds=usage.ru_utime + usage.ru_stime)


def parse_wrk_report(output: str) -> LoadResult:
    for line in output.splitlines():
        if line.startswith(WRK_MARKER):
            report = json.loads(line.removeprefix(WRK_MARKER))
            failures = report["socket_errors"] + report["status_errors"] + report["timeouts"]
            return LoadResult(
                requests=int(report["requests"]),
                seconds=report["duration_us"] / 1e6,
                failures=int(failures),
                p50_ms=report["p50_us"] / 1000,
                p99_ms=report["p99_us"] / 1000,
            )
    raise RuntimeError(f"wrk printed no {WRK_MARKER.strip()} line:\n{output}")


@dataclass(frozen=True, slots=True)
class HttpxLoad:
    """Concurrent httpx requests on this process's event loop."""

    connections: int = CONNECTIONS

    @property
    def name(self) -> str:
        return f"httpx in-process, {self.connections} connections"

    def run(self, url: str, headers: Mapping[str, str], seconds: float) -> LoadResult:
        return asyncio.run(self._run(url, headers, seconds))

    async def _run(self, url: str, headers: Mapping[str, str], seconds: float) -> LoadResult:
        latencies: list[float] = []
        failures = 0
        limits = httpx.Limits(max_connections=self.connections)
        async with httpx.AsyncClient(
            headers=dict(headers), limits=limits, timeout=REQUEST_TIMEOUT
        ) as client:
            started = time.perf_counter()
            deadline = started + seconds

            async def connection() -> None:
                nonlocal failures
                while (begun := time.perf_counter()) < deadline:
                    try:
                        failed = (await client.get(url)).status_code >= 400
                    except httpx.HTTPError:
                        failed = True
                    latencies.append(time.perf_counter() - begun)
                    failures += failed

            await asyncio.gather(*(connection() for _ in range(self.connections)))
            elapsed = time.perf_counter() - started
        return LoadResult(
            requests=len(latencies),
            seconds=elapsed,
            failures=failures,
            p50_ms=percentile(latencies, 50) * 1000,
            p99_ms=percentile(latencies, 99) * 1000,
        )


Target = tuple[str, Mapping[str, str]]  # a URL and the headers to send it


def pooled_rate(results: list[LoadResult]) -> float:
    """Requests per second over several rounds together."""
    return sum(r.requests for r in results) / sum(r.seconds for r in results)


@dataclass(frozen=True, slots=True)
class Comparison:
    """Alternating rounds of two targets under the same load."""

    baseline: list[LoadResult]
    subject: list[LoadResult]

    def ratios(self) -> dict[str, float]:
        """Subject ÷ baseline, each the median of the rounds' own ratios."""
        pairs = list(zip(self.subject, self.baseline, strict=True))
        return {
            "requests_per_second": median(
                [s.requests_per_second / b.requests_per_second for s, b in pairs]
            ),
            "p50": median([s.p50_ms / b.p50_ms for s, b in pairs]),
            "p99": median([s.p99_ms / b.p99_ms for s, b in pairs]),
        }

    def added_microseconds(self) -> float:
        """Extra server time per subject request, if one saturated worker sets both rates."""
        return (1 / pooled_rate(self.subject) - 1 / pooled_rate(self.baseline)) * 1e6


def compare(
    generator: LoadGenerator,
    baseline: Target,
    subject: Target,
    seconds: float,
    rounds: int,
    warmup: float = 1.0,
) -> Comparison:
    """Warm both targets up, then load them in turn, ``rounds`` rounds each."""
    targets = (baseline, subject)
    for url, headers in targets:
        generator.run(url, headers, warmup)
    results: tuple[list[LoadResult], list[LoadResult]] = ([], [])
    for round_ in range(rounds):
        # ABBA order, so a drift in the machine's speed weighs on both alike.
        order = (0, 1) if round_ % 2 == 0 else (1, 0)
        for index in order:
            results[index].append(generator.run(*targets[index], seconds))
    return Comparison(*results)


def choose_generator(preference: str, *, install: bool) -> tuple[LoadGenerator, list[str]]:
    """The generator to use (``auto``, ``wrk`` or ``httpx``) and notes for the report."""
    if preference == "httpx":
        return HttpxLoad(), ["httpx load generator chosen on the command line."]
    wrk, notes = find_wrk(install=install)
    if wrk is not None:
        return Wrk(wrk), notes
    if preference == "wrk":
        raise RuntimeError("wrk was asked for but is not available: " + " ".join(notes))
    fallback = (
        "Falling back to the in-process httpx load generator: it competes with the server "
        "for CPU, so absolute requests/s are lower than with wrk; ratios stay comparable."
    )
    return HttpxLoad(), [*notes, fallback]


def find_wrk(*, install: bool) -> tuple[str | None, list[str]]:
    """wrk from PATH, or installed with apt-get when allowed and running as root."""
    found = shutil.which("wrk")
    if found is not None:
        return found, []
    if not install:
        return None, ["wrk is not on PATH (installing it was turned off)."]
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        return None, ["wrk is not on PATH; as root, `apt-get install -y wrk` adds it."]
    problem = apt_install("wrk")
    found = shutil.which("wrk")
    if problem is not None or found is None:
        return None, [f"wrk is not on PATH and installing it failed: {problem}"]
    return found, ["wrk was not on PATH; installed it with apt-get."]


def apt_install(package: str) -> str | None:
    """Install a Debian package: ``None`` on success, else apt-get's last complaint."""
    problem = _apt("install", "-y", "-qq", package)
    if problem is not None:
        # A fresh machine may have no package lists yet.
        problem = _apt("update", "-qq") or _apt("install", "-y", "-qq", package)
    return problem


def _apt(*arguments: str) -> str | None:
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    try:
        completed = subprocess.run(
            ["apt-get", *arguments],
            env=env,
            capture_output=True,
            text=True,
            timeout=INSTALL_TIMEOUT,
        )
    except subprocess.TimeoutExpired:
        return f"apt-get {arguments[0]} timed out"
    if completed.returncode == 0:
        return None
    lines = completed.stderr.strip().splitlines()
    return lines[-1] if lines else f"apt-get {arguments[0]} exited with {completed.returncode}"
