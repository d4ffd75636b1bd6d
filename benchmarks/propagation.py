"""How soon the other worker refuses a key that one worker deactivated.

``keyguard serve --workers 2`` on SQLite: the worker that takes a change puts
it in its own snapshot at once; the other reads it from the database at its
next refresh (every ``KEYGUARD_REFRESH_INTERVAL``, 0.25 s by default).

The kernel hands each new connection to whichever worker accepts it first, so
polling with fresh connections would time whichever worker answered. Instead,
kept-alive connections are pinned to a worker each: a connection's worker is
the ``pid`` label of the ``/metrics`` it serves, and a connection that drops is
never silently replaced. A trial sends ``PATCH /v1/api-keys/{id}/deactivate``
on one worker's connection and polls ``/auth/forward`` with that key on the
other worker's connection until it is refused; the time runs from the PATCH's
200. Trials alternate the two workers' roles, wait a random fraction of the
refresh interval first, so deactivations fall anywhere between two refreshes,
and each deactivates a key of its own.
"""

import http.client
import random
import re
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from urllib.parse import urlsplit

from tests.server import NO_LIMITS

from benchmarks.context import Context
from benchmarks.forward import FORWARD_PATH, WORKERS, forward_headers, seed_keys
from benchmarks.report import Section, millis, table
from benchmarks.server import Server, deployed, serving, worker_pids
from benchmarks.stats import Latency, median

TRIALS = 50
BUDGET = 60.0  # seconds for all trials; fewer are reported as such
WAIT = 5.0  # seconds one trial polls before it counts the refusal as missed
POLL_PAUSE = 0.001
REFRESH_INTERVAL = 0.25  # keyguard's default KEYGUARD_REFRESH_INTERVAL
PIN_BUDGET = 15.0
REQUEST_TIMEOUT = 5.0
TARGET_SECONDS = 1.0  # the README: a change is enforced everywhere within one second

_PID = re.compile(rb'pid="(\d+)"')


class UnpinnedError(RuntimeError):
    """A pinned connection was closed, so its next request could reach another worker."""


class Pinned:
    """One kept-alive HTTP connection, and the worker process that accepted it."""

    def __init__(self, server: Server) -> None:
        address = urlsplit(server.base_url)
        self._connection = http.client.HTTPConnection(
            address.hostname or "", address.port, timeout=REQUEST_TIMEOUT
        )
        self._connection.connect()
        self._socket = self._connection.sock
        _, metrics = self.request("GET", "/metrics")
        found = _PID.search(metrics)
        if found is None:
            raise RuntimeError("/metrics carries no pid label to tell the workers apart")
        self.pid = int(found.group(1))

    def request(
        self, method: str, path: str, headers: Mapping[str, str] | None = None
    ) -> tuple[int, bytes]:
        try:
            self._connection.request(method, path, headers=dict(headers or {}))
            response = self._connection.getresponse()
            body = response.read()
        except (OSError, http.client.HTTPException) as error:
            raise UnpinnedError(
                f"{type(error).__name__} on the connection to {self.pid}"
            ) from error
        if self._connection.sock is not self._socket:
            raise UnpinnedError(f"the server closed the connection to {self.pid}")
        return response.status, body

    def close(self) -> None:
        self._connection.close()


def pin_workers(server: Server) -> list[Pinned]:
    """One pinned connection per worker: new connections until every worker took one."""
    pinned: dict[int, Pinned] = {}
    deadline = time.monotonic() + PIN_BUDGET
    while len(pinned) < server.workers and time.monotonic() < deadline:
        connection = Pinned(server)
        if connection.pid in pinned:
            connection.close()
            time.sleep(0.02)
        else:
            pinned[connection.pid] = connection
    if len(pinned) < server.workers:
        raise RuntimeError(f"only {len(pinned)} of {server.workers} workers took a connection")
    expected = set(worker_pids(server))
    if set(pinned) != expected:
        raise RuntimeError(f"connections reached {sorted(pinned)}, workers are {sorted(expected)}")
    return list(pinned.values())


@dataclass(frozen=True, slots=True)
class Trial:
    writer_pid: int  # took the PATCH
    other_pid: int
    patch_ms: float  # the PATCH's own round trip
    writer_ms: float  # from the PATCH's 200 to the writer's refusal (one request)
    writer_status: int
    other_ms: float | None  # from the PATCH's 200 to the other's refusal; None: missed
    other_status: int
    polls: int


def trial(
    writer: Pinned, other: Pinned, key_id: int, token: str, admin: Mapping[str, str]
) -> Trial:
    forward = forward_headers(token)
    for connection in (writer, other):
        status, _ = connection.request("GET", FORWARD_PATH, forward)
        if status != 200:
            raise RuntimeError(f"worker {connection.pid} refused a fresh key with {status}")
    sent = time.perf_counter()
    status, body = writer.request("PATCH", f"/v1/api-keys/{key_id}/deactivate", admin)
    acknowledged = time.perf_counter()
    if status != 200:
        raise RuntimeError(f"deactivation answered {status}: {body[:200]!r}")
    writer_status, _ = writer.request("GET", FORWARD_PATH, forward)
    writer_ms = (time.perf_counter() - acknowledged) * 1000
    polls, other_ms = 0, None
    while True:
        other_status, _ = other.request("GET", FORWARD_PATH, forward)
        elapsed = time.perf_counter() - acknowledged
        polls += 1
        if other_status != 200:
            other_ms = elapsed * 1000
            break
        if elapsed > WAIT:
            break
        time.sleep(POLL_PAUSE)
    patch_ms = (acknowledged - sent) * 1000
    return Trial(
        writer.pid, other.pid, patch_ms, writer_ms, writer_status, other_ms, other_status, polls
    )


def run(context: Context) -> Section:  # noqa: ARG001
    phases = random.Random(11)
    trials: list[Trial] = []
    with deployed(settings=NO_LIMITS) as deployment:
        keys = seed_keys(deployment, [{"label": f"propagation {n:02d}"} for n in range(TRIALS)])
        with serving(deployment, WORKERS, keys=TRIALS + 1) as server:
            pinned = pin_workers(server)
            deadline = time.monotonic() + BUDGET
            for index, (key_id, token) in enumerate(keys):
                if time.monotonic() > deadline:
                    break
                writer, other = pinned[index % 2], pinned[1 - index % 2]
                time.sleep(phases.uniform(0, REFRESH_INTERVAL))
                trials.append(trial(writer, other, key_id, token, server.tenant.headers))
            for connection in pinned:
                connection.close()
    if not trials:
        raise RuntimeError("no trial ran")
    section = Section("propagation", f"Deactivation seen by the other worker, {WORKERS} workers")
    _describe(section, trials)
    return section


def _describe(section: Section, trials: list[Trial]) -> None:
    reached = [t.other_ms / 1000 for t in trials if t.other_ms is not None]
    other = Latency.of(reached) if reached else None
    writer = Latency.of([t.writer_ms / 1000 for t in trials])

    def row(name: str, latency: Latency | None) -> list[str]:
        if latency is None:
            return [name, "0", "", "", ""]
        figures = (latency.p50_ms, latency.p95_ms, latency.max_ms)
        return [name, str(latency.samples), *(millis(value) for value in figures)]

    section.tables.append(
        table(
            "1. From the deactivation's 200 until a worker refuses the key",
            ["worker", "trials", "p50 ms", "p95 ms", "max ms"],
            [
                row("the other worker", other),
                row("the worker that took the PATCH", writer),
            ],
        )
    )
    missed = len(trials) - len(reached)
    if other is not None:
        verdict = "met" if missed == 0 and other.max_ms <= TARGET_SECONDS * 1000 else "missed"
        section.notes.append(
            f"Target: refused everywhere within {TARGET_SECONDS:.0f} s: {verdict} "
            f"(max {other.max_ms:,.0f} ms over {len(trials)} trials, {missed} missed)."
        )
    if len(trials) < TRIALS:
        section.notes.append(f"Only {len(trials)} of {TRIALS} trials fitted in {BUDGET:.0f} s.")
    wrong = [t for t in trials if t.writer_status != 401 or t.other_status not in (200, 401)]
    if wrong:
        section.notes.append(f"{len(wrong)} trials saw a status other than 401 for the key.")
    section.notes.append(
        "Method: one kept-alive connection pinned to each worker (identified by the pid in "
        "its /metrics); each trial deactivates its own key through one worker's connection "
        "and polls /auth/forward on the other's about every millisecond, the roles "
        "alternating, after a random wait within the 0.25 s refresh interval."
    )
    section.notes.append(
        f"PATCH …/deactivate round trip: p50 {median([t.patch_ms for t in trials]):.1f} ms; "
        "the times above start when its 200 arrived."
    )
    section.figures.update(
        {
            "trials": [asdict(t) for t in trials],
            "other_worker": asdict(other) if other is not None else None,
            "writer_worker": asdict(writer),
            "missed": missed,
            "refresh_interval_seconds": REFRESH_INTERVAL,
            "target_seconds": TARGET_SECONDS,
        }
    )
