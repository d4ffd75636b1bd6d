"""What a real ``keyguard serve`` worker holds per key once its snapshot is loaded.

``keyguard serve --workers 2`` starts on a SQLite database holding only the
account's first key, and each worker's resident memory is read once it
answers. Then KEYS keys are put into the same database by SQL (keyguard's own
tables and stored settings document, one ``executemany`` in one transaction,
the revision bumped as keyguard's writes leave it), the server starts again,
and each worker's memory is read once its own ``/metrics`` counts every key.
(resident with KEYS keys - resident with one) / KEYS is what a user's worker
holds per key after a start: the snapshot, and whatever the load left in
Python's allocator. Two databases: every key full access, and a mix of a third
each full access, scoped, and scoped with a four-entry allow-list (the kinds
of :mod:`benchmarks.decide`).

:mod:`benchmarks.decide` builds a snapshot in-process with the collector
paused, which holds less: that is the floor, this is what a worker holds.
"""

import os
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime

from sqlalchemy import create_engine, insert, select, update
from tests.server import NO_LIMITS

from benchmarks.context import Context
from benchmarks.decide import KINDS
from benchmarks.propagation import pin_workers
from benchmarks.report import Section, table
from benchmarks.server import (
    Deployment,
    Server,
    counted_keys,
    deployed,
    memory_mib,
    serving,
)
from keyguard.domain.records import KeySettings, settings_document
from keyguard.storage.tables import api_keys, meta

KEYS = 200_000
WORKERS = 2
START_TIMEOUT = 150.0
SETTLE = 1.0  # seconds between every worker holding every key and reading its memory
SEALED = b"\xa5" * 69  # as long as a real key's sealed value; no key can be unsealed
MIXES: dict[str, Sequence[KeySettings]] = {
    "full access": [KINDS["full"]],
    "mixed thirds": list(KINDS.values()),  # full access, scoped, scoped with an allow-list
}


@dataclass(frozen=True, slots=True)
class Start:
    """One start on a database holding ``keys`` keys, and its workers' memory."""

    keys: int
    seconds: float  # from process start until every worker's snapshot held every key
    rss_mib: list[float]  # per worker, once loaded
    peak_mib: list[float]  # per worker, its peak resident memory, loading included


def wait_loaded(server: Server, keys: int, timeout: float) -> list[int]:
    """Until every worker's own ``/metrics`` counts ``keys`` keys; the workers' pids.

    :func:`pin_workers` checks that the connections reached every worker process.
    """
    deadline = time.monotonic() + timeout
    pinned = pin_workers(server)
    try:
        for connection in pinned:
            while counted_keys(connection.request("GET", "/metrics")[1].decode()) < keys:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"worker {connection.pid} never held {keys:,} keys")
                time.sleep(0.1)
        return [connection.pid for connection in pinned]
    finally:
        for connection in pinned:
            connection.close()


def start(deployment: Deployment, workers: int, keys: int, timeout: float = START_TIMEOUT) -> Start:
    """Serve ``deployment`` until every worker holds ``keys`` keys; their memory then."""
    started = time.perf_counter()
    with serving(deployment, workers, keys=keys, timeout=timeout) as server:
        pids = wait_loaded(server, keys, timeout)
        elapsed = time.perf_counter() - started
        time.sleep(SETTLE)
        memories = [memory_mib(pid) for pid in pids]
    return Start(keys, elapsed, [rss for rss, _ in memories], [peak for _, peak in memories])


def insert_keys(
    database_url: str, account_id: int, count: int, kinds: Sequence[KeySettings]
) -> float:
    """``count`` keys of ``kinds`` in turn, by SQL in one transaction; seconds taken."""
    engine = create_engine(database_url)
    now = datetime.now(UTC)
    started = time.perf_counter()
    try:
        with engine.begin() as connection:
            base = connection.execute(select(meta.c.revision)).scalar_one()
            rows = [
                {
                    **settings_document(kinds[n % len(kinds)]),
                    "label": f"bulk key {n}",
                    "account_id": account_id,
                    "digest": os.urandom(32),
                    "sealed_value": SEALED,
                    "created_at": now.replace(microsecond=0),
                    "revision": base + 1 + n,
                    "changed_at": now,
                }
                for n in range(count)
            ]
            connection.execute(insert(api_keys), rows)
            connection.execute(update(meta).values(revision=base + count))
    finally:
        engine.dispose()
    return time.perf_counter() - started


@dataclass(frozen=True, slots=True)
class Measured:
    mix: str
    empty: Start
    loaded: Start
    insert_seconds: float

    @property
    def bytes_per_key(self) -> float:
        """The largest worker's growth, per key."""
        added = max(self.loaded.rss_mib) - max(self.empty.rss_mib)
        return added * 2**20 / (self.loaded.keys - self.empty.keys)


def measure(mix: str, kinds: Sequence[KeySettings]) -> Measured:
    with deployed(settings=NO_LIMITS) as deployment:
        empty = start(deployment, WORKERS, 1)
        url = deployment.database_url
        inserted = insert_keys(url, deployment.tenant.account_id, KEYS, kinds)
        loaded = start(deployment, WORKERS, KEYS + 1)
    return Measured(mix, empty, loaded, inserted)


def run(context: Context) -> Section:  # noqa: ARG001
    measured = [measure(mix, kinds) for mix, kinds in MIXES.items()]
    section = Section("memory", f"Memory per key of a real worker: {KEYS:,} keys, SQLite")
    rows = []
    for result in measured:
        for name, began in (("1", result.empty), (f"{KEYS + 1:,}", result.loaded)):
            rows.append(
                [
                    result.mix if began is result.empty else "",
                    name,
                    f"{began.seconds:.1f}",
                    " / ".join(f"{rss:,.0f}" for rss in began.rss_mib),
                    " / ".join(f"{peak:,.0f}" for peak in began.peak_mib),
                    "" if began is result.empty else f"{result.bytes_per_key:,.0f}",
                ]
            )
    section.tables.append(
        table(
            f"1. keyguard serve --workers {WORKERS}: start until every worker holds every key",
            ["keys", "in the database", "start s", "RSS MiB, each worker", "peak MiB", "bytes/key"],
            rows,
        )
    )
    section.notes.append(
        "Mixed thirds: full access; scoped to three groups; scoped and restricted to a "
        "four-entry allow-list (the kinds of the decide benchmark)."
    )
    section.notes.append(
        f"Keys put into SQLite by SQL ({', '.join(f'{r.insert_seconds:.1f} s' for r in measured)}"
        f"); memory read from /proc {SETTLE:.0f} s after every worker's /metrics counted every "
        "key. bytes/key: the larger worker's resident growth over the one-key start, per key. "
        "Each worker holds its own snapshot: a server needs that much per key per worker."
    )
    section.figures.update(
        {
            "keys": KEYS,
            "workers": WORKERS,
            "database": "sqlite",
            "mixes": {r.mix: {**asdict(r), "bytes_per_key": r.bytes_per_key} for r in measured},
        }
    )
    return section
