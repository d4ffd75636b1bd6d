"""Open-loop HTTP load: requests sent on a fixed schedule, whatever the answers.

A closed-loop generator (:mod:`benchmarks.load`) sends a connection's next
request only when the last one is answered, so a slow server slows its load
down and hides the wait. :class:`PacedClient` sends request ``i`` at ``start +
i / rate`` on an idle keep-alive connection, opening another when none is idle
(up to a limit, after which requests queue in the client), and times
each from the moment it was due: time spent waiting anywhere, in the client's
queue or the server's, counts against the server.

The client runs in a process of its own, on asyncio protocols (uvloop) with
pre-encoded request bytes, at a raised CPU priority where the system allows it:
on a machine whose cores the server and the load generators share, a starved
client would be late on its own account. How late it sent is reported beside
the latencies, and so is the priority it got.
"""

import argparse
import asyncio
import json
import os
import subprocess
import sys
import time
from collections import deque
from collections.abc import Mapping
from contextlib import suppress
from dataclasses import asdict, dataclass
from typing import Any
from urllib.parse import urlsplit

import uvloop

from benchmarks.server import BENCHMARKS_ROOT
from benchmarks.stats import percentile

CONNECTIONS = 256  # opened, and answered once, before the schedule starts
MAX_CONNECTIONS = 1024
REQUEST_TIMEOUT = 5.0
PRIME_TIMEOUT = 30.0
TICK = 0.001  # seconds: the shortest sleep between bursts of due requests
NICENESS = -10  # the client's, where the system allows raising it
HEADERS_VARIABLE = "BENCH_PACED_HEADERS"


@dataclass(frozen=True, slots=True)
class PacedResult:
    """One paced run: what was due, what came back 200, and how long it took."""

    rate: float  # requests per second asked for
    due: int  # requests the schedule held
    succeeded: int  # answered 200
    refused: int  # answered anything else
    lost: int  # connection errors, timeouts, and requests not answered by the end
    seconds: float  # of the schedule
    p50_ms: float  # from the moment each request was due until its answer; lost ones
    p99_ms: float  # count as REQUEST_TIMEOUT
    max_ms: float
    lag_p99_ms: float  # how late requests left the client: its schedule, a free connection
    connections: int  # open at the end
    niceness: int  # the client process's

    @property
    def success_rate(self) -> float:
        return self.succeeded / self.due

    def figures(self) -> dict[str, Any]:
        return {**asdict(self), "success_rate": self.success_rate}


@dataclass(frozen=True, slots=True)
class PacedClient:
    """Requests to one URL at a fixed rate, timed from when each was due."""

    rate: float
    connections: int = CONNECTIONS
    max_connections: int = MAX_CONNECTIONS

    @property
    def name(self) -> str:
        return f"paced client, {self.rate:,.0f} req/s, open loop"

    def run(self, url: str, headers: Mapping[str, str], seconds: float) -> PacedResult:
        """Run the schedule in a child process at a raised priority, if allowed."""
        command = [
            *(sys.executable, "-m", "benchmarks.paced", url, str(self.rate), str(seconds)),
            *(f"--connections={self.connections}", f"--max-connections={self.max_connections}"),
        ]
        env = {**os.environ, HEADERS_VARIABLE: json.dumps(dict(headers))}
        with subprocess.Popen(
            command, cwd=BENCHMARKS_ROOT, env=env, stdout=subprocess.PIPE, text=True
        ) as child:
            # Not root: the client runs at the same priority as the rest.
            with suppress(PermissionError):
                os.setpriority(os.PRIO_PROCESS, child.pid, NICENESS)
            try:
                output, _ = child.communicate(timeout=seconds + REQUEST_TIMEOUT + 30)
            except subprocess.TimeoutExpired:
                child.kill()
                raise
        if child.returncode != 0:
            raise RuntimeError(f"the paced client exited with {child.returncode}")
        return PacedResult(**json.loads(output))


class _Connection(asyncio.Protocol):
    """One keep-alive connection, with at most one request in flight."""

    def __init__(self, schedule: "_Schedule") -> None:
        self.schedule = schedule
        self.transport: asyncio.Transport | None = None
        self.buffer = b""
        self.due: float | None = None  # of the request in flight
        self.retried = False  # whether the request in flight is a second attempt

    def send(self, due: float, *, retried: bool = False) -> None:
        assert self.transport is not None
        self.due, self.retried = due, retried
        self.transport.write(self.schedule.request)
        if not retried:
            self.schedule.lags.append(time.perf_counter() - due)

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        end = self.buffer.find(b"\r\n\r\n")
        if end < 0:
            return
        head = self.buffer[:end].lower()
        length = 0
        found = head.find(b"content-length:")
        if found >= 0:
            line_end = head.find(b"\r\n", found)
            length = int(head[found + 15 : line_end if line_end >= 0 else None])
        if len(self.buffer) < end + 4 + length:
            return
        self.buffer = self.buffer[end + 4 + length :]
        due, self.due = self.due, None
        if due is not None:
            self.schedule.answered(self, int(head[9:12]), due)

    def connection_lost(self, exc: Exception | None) -> None:  # noqa: ARG002
        self.schedule.closed(self)


class _Schedule:
    """The state of one paced run on one event loop."""

    def __init__(self, url: str, headers: Mapping[str, str], client: PacedClient) -> None:
        parts = urlsplit(url)
        self.host, self.port = parts.hostname or "127.0.0.1", parts.port or 80
        lines = [f"GET {parts.path or '/'} HTTP/1.1", f"Host: {parts.netloc}"]
        lines += [f"{name}: {value}" for name, value in headers.items()]
        self.request = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
        self.rate = client.rate
        self.connections, self.max_connections = client.connections, client.max_connections
        # First in, first out: every connection keeps being used, so none sits idle
        # long enough for the server to close it (uvicorn: after 5 s).
        self.idle: deque[_Connection] = deque()
        self.backlog: deque[float] = deque()  # due times waiting for a connection
        self.opened = 0
        self.in_flight = 0
        self.latencies: list[float] = []
        self.lags: list[float] = []
        self.refused = 0
        self.lost = 0
        self.settled = asyncio.Event()  # set when nothing is in flight
        self.tasks: set[asyncio.Task[None]] = set()

    async def run(self, seconds: float) -> PacedResult:
        await self._prime()
        total = round(self.rate * seconds)
        start = time.perf_counter() + 0.01
        sent = 0
        while sent < total:
            # Send every request that is due, then sleep until the next one, a
            # millisecond at least: the event loop's timers are no finer, and a
            # shorter sleep would spin.
            now = time.perf_counter()
            while sent < total and (due := start + sent / self.rate) <= now:
                self._send(due)
                sent += 1
            if sent < total:
                await asyncio.sleep(max(TICK, start + sent / self.rate - time.perf_counter()))
        if self.in_flight:
            with suppress(TimeoutError):
                await asyncio.wait_for(self.settled.wait(), REQUEST_TIMEOUT)
        for connection in self.idle:
            if connection.transport is not None:
                connection.transport.close()
        return self._result(total)

    async def _prime(self) -> None:
        """Open the first connections and have each answer once, uncounted.

        A connection is open as soon as the kernel completes its handshake, but
        under a flood the server may take seconds to accept it: that belongs to the
        start of a client's life, not to the steady state measured here.
        """
        for _ in range(self.connections):
            self.idle.append(await self._open())
        for _ in range(self.connections):
            self._send(time.perf_counter())
        await asyncio.wait_for(self.settled.wait(), PRIME_TIMEOUT)
        self.latencies.clear()
        self.lags.clear()
        self.refused = self.lost = 0

    async def _open(self) -> _Connection:
        loop = asyncio.get_running_loop()
        transport, connection = await loop.create_connection(
            lambda: _Connection(self), self.host, self.port
        )
        connection.transport = transport  # uvloop calls connection_made only later
        self.opened += 1
        return connection

    def _send(self, due: float) -> None:
        self.in_flight += 1
        self.settled.clear()
        if self.idle:
            self.idle.popleft().send(due)
        elif self.opened + len(self.tasks) < self.max_connections:
            self._send_on_new(due, retry=False)
        else:
            self.backlog.append(due)

    def _send_on_new(self, due: float, *, retry: bool) -> None:
        task = asyncio.create_task(self._open_and_send(due, retried=retry))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def _open_and_send(self, due: float, *, retried: bool) -> None:
        try:
            connection = await asyncio.wait_for(self._open(), REQUEST_TIMEOUT)
        except (OSError, TimeoutError):
            self._settle(lost=True)
            return
        connection.send(due, retried=retried)

    def answered(self, connection: _Connection, status: int, due: float) -> None:
        self.latencies.append(time.perf_counter() - due)
        self.refused += status != 200
        self._settle(lost=False)
        if self.backlog:
            connection.send(self.backlog.popleft())
        else:
            self.idle.append(connection)

    def closed(self, connection: _Connection) -> None:
        """A connection closed: a request it held (a kept-alive connection the server
        closed as the request left) is sent once more, on a new connection."""
        self.opened -= 1
        with suppress(ValueError):
            self.idle.remove(connection)
        if connection.due is None:
            return
        if connection.retried:
            self._settle(lost=True)
        else:
            self._send_on_new(connection.due, retry=True)

    def _settle(self, *, lost: bool) -> None:
        self.lost += lost
        self.in_flight -= 1
        if not self.in_flight:
            self.settled.set()

    def _result(self, total: int) -> PacedResult:
        answered = len(self.latencies)
        # A request never answered was at least REQUEST_TIMEOUT late: it counts so.
        latencies = self.latencies + [REQUEST_TIMEOUT] * (total - answered)
        return PacedResult(
            rate=self.rate,
            due=total,
            succeeded=answered - self.refused,
            refused=self.refused,
            lost=total - answered,
            seconds=total / self.rate,
            p50_ms=percentile(latencies, 50) * 1000,
            p99_ms=percentile(latencies, 99) * 1000,
            max_ms=max(latencies) * 1000,
            lag_p99_ms=percentile(self.lags or [0.0], 99) * 1000,
            connections=self.opened,
            niceness=os.getpriority(os.PRIO_PROCESS, 0),
        )


def main(argv: list[str] | None = None) -> None:
    """``python -m benchmarks.paced URL RATE SECONDS``, headers as JSON in the environment."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.paced", description=__doc__)
    parser.add_argument("url")
    parser.add_argument("rate", type=float)
    parser.add_argument("seconds", type=float)
    parser.add_argument("--connections", type=int, default=CONNECTIONS)
    parser.add_argument("--max-connections", type=int, default=MAX_CONNECTIONS)
    arguments = parser.parse_args(argv)
    headers = json.loads(os.environ.get(HEADERS_VARIABLE, "{}"))
    client = PacedClient(arguments.rate, arguments.connections, arguments.max_connections)
    schedule = _Schedule(arguments.url, headers, client)
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        result = runner.run(schedule.run(arguments.seconds))
    print(json.dumps(asdict(result)))


if __name__ == "__main__":
    main()
