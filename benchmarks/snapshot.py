"""The key snapshot at 1,000,000 keys: start-up until serving, memory per worker and per key.

On SQLite and on PostgreSQL (``KEYGUARD_BENCH_POSTGRES_URL``, default this
machine's), a database gets one account and 1,000,000 keys by one
``INSERT … SELECT`` (a third each full access, scoped, and scoped with a
four-entry allow-list, as :mod:`benchmarks.memory`'s mix; random digests).
``keyguard serve`` then starts with 1 and with 4 workers: the time from the
command until every worker's ``/metrics`` counts every key, and each worker's
resident memory then. bytes/key is the larger worker's growth over a start on
the same database with its one first key, per key.

With ``KEYGUARD_BENCH_BASELINE`` set to the ``src`` folder of an earlier keyguard
(for example ``git archive main | tar -x -C /tmp/main``, then ``/tmp/main/src``),
that keyguard's ``serve`` starts on the same databases too, with one worker,
side by side (its snapshot held a parsed object per key; four of its workers
need more memory than a small machine has).

In-process, a snapshot is loaded from SQLite databases of 200,000 keys, keys
with shared settings and keys whose settings are all their own (each its own
allow-list and expiry second): the worst case's bytes per key.
"""

import gc
import os
import tempfile
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from sqlalchemy import create_engine, text
from tests.postgres import postgres_schema
from tests.server import NO_LIMITS

from benchmarks.context import Context
from benchmarks.memory import Start, start
from benchmarks.postgres import postgres_server
from benchmarks.report import Section, table
from benchmarks.server import Deployment, deployed
from keyguard.cache import KeyCache
from keyguard.domain.records import KeySettings
from keyguard.storage import open_store

KEYS = 1_000_000
WORKERS = (1, 4)
START_TIMEOUT = 600.0
TARGET_SECONDS = 5.0
TARGET_BYTES_PER_KEY = 200
BASELINE_VARIABLE = "KEYGUARD_BENCH_BASELINE"
IN_PROCESS_KEYS = 200_000

# A third each: full access; scoped to three groups; scoped and restricted to four
# ranges. ``unique`` gives every key an allow-list and an expiry second of its own.
_SETTINGS = {
    "restricted": "n % 3 = 2",
    "permitted_ips": """CASE WHEN n % 3 = 2 THEN
        '["203.0.113.0/24", "2001:db8::/32", "192.0.2.0/28", "198.51.100.0/24"]'
        ELSE '[]' END""",
    "scopes_enabled": "n % 3 > 0",
    "scopes": """CASE WHEN n % 3 > 0 THEN
        '{"messages": "write", "numbers": "read", "calls": "write"}' ELSE '{}' END""",
    "expires_at": "NULL",
}
_UNIQUE = {
    "restricted": "1 = 1",
    "permitted_ips": "'[\"10.' || (n / 65536) || '.' || (n / 256 % 256) || '.' || (n % 256)"
    " || '\"]'",
    "scopes_enabled": "1 = 1",
    "scopes": '\'{"messages": "write"}\'',
}
_SERIES = {
    "sqlite": "WITH RECURSIVE series(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM series "
    "WHERE n < :count) SELECT {columns} FROM series",
    "postgresql": "SELECT {columns} FROM generate_series(1, :count) AS n",
}
_EXPRESSIONS = {
    "sqlite": {
        "digest": "randomblob(32)",
        "sealed_value": "zeroblob(69)",
        "now": "datetime('now')",
        "unique_expiry": "datetime('2099-01-01', '+' || n || ' seconds')",
    },
    "postgresql": {
        "digest": "sha256(uuid_send(gen_random_uuid()))",
        "sealed_value": "decode(repeat('a5', 69), 'hex')",
        "now": "now()",
        "unique_expiry": "timestamptz '2099-01-01' + n * interval '1 second'",
    },
}


def fill(url: str, account_id: int, count: int, unique: bool = False) -> float:
    """``count`` keys of one account by one ``INSERT … SELECT``; seconds taken.

    As keyguard's own writes leave them, each row gets its own revision and a
    ``changed_at``, keyguard_meta then holds the newest revision and the account
    counts its keys.
    """
    engine = create_engine(url)
    dialect = engine.dialect.name
    sql = _EXPRESSIONS[dialect]
    settings = {**_SETTINGS, **(_UNIQUE if unique else {})}
    if unique:
        settings["expires_at"] = sql["unique_expiry"]
    json = "" if dialect == "sqlite" else "::json"
    values = {
        "account_id": ":account",
        "label": "'bulk key ' || n",
        "digest": sql["digest"],
        "sealed_value": sql["sealed_value"],
        "active": "1 = 1",
        "restricted": settings["restricted"],
        "permitted_ips": f"({settings['permitted_ips']}){json}",
        "scopes_enabled": settings["scopes_enabled"],
        "scopes": f"({settings['scopes']}){json}",
        "expires_at": settings["expires_at"],
        "created_at": sql["now"],
        "revision": ":base + n",
        "changed_at": sql["now"],
    }
    select = _SERIES[dialect].format(columns=", ".join(values.values()))
    started = time.perf_counter()
    try:
        with engine.begin() as connection:
            base = connection.execute(text("SELECT revision FROM keyguard_meta")).scalar_one()
            connection.execute(
                text(f"INSERT INTO api_keys ({', '.join(values)}) {select}"),
                {"account": account_id, "base": base, "count": count},
            )
            connection.execute(
                text("UPDATE keyguard_meta SET revision = :revision"), {"revision": base + count}
            )
            connection.execute(
                text("UPDATE accounts SET key_count = key_count + :count WHERE id = :account"),
                {"account": account_id, "count": count},
            )
        with engine.connect() as connection:
            connection.execute(text("ANALYZE"))
    finally:
        engine.dispose()
    return time.perf_counter() - started


@dataclass(frozen=True, slots=True)
class Starts:
    """Starts of one keyguard on one database: with one key, then with every key."""

    keyguard: str  # "this" or "baseline"
    workers: int
    empty: Start
    loaded: Start

    @property
    def bytes_per_key(self) -> float:
        added = max(self.loaded.rss_mib) - max(self.empty.rss_mib)
        return added * 2**20 / (self.loaded.keys - self.empty.keys)


def as_baseline(deployment: Deployment, source: str) -> Deployment:
    """The deployment, served by the keyguard whose package is in ``source``."""
    return replace(deployment, settings={**deployment.settings, "PYTHONPATH": source})


def measure_database(url: str | None) -> tuple[list[Starts], float]:
    """Every start on one database (SQLite in a temporary folder when ``url`` is None)."""
    baseline = os.environ.get(BASELINE_VARIABLE)
    servers: list[tuple[str, int, str | None]] = [("this", n, None) for n in WORKERS]
    if baseline:
        servers.append(("baseline", 1, baseline))
    with deployed(url, NO_LIMITS) as deployment:
        empties = {
            (name, workers): start(chosen, workers, 1, START_TIMEOUT)
            for name, workers, source in servers
            for chosen in [as_baseline(deployment, source) if source else deployment]
        }
        inserted = fill(deployment.database_url, deployment.tenant.account_id, KEYS)
        starts = []
        for name, workers, source in servers:
            chosen = as_baseline(deployment, source) if source else deployment
            loaded = start(chosen, workers, KEYS + 1, START_TIMEOUT)
            starts.append(Starts(name, workers, empties[name, workers], loaded))
    return starts, inserted


@dataclass(frozen=True, slots=True)
class InProcess:
    settings: str
    keys: int
    profiles: int
    seconds: float
    bytes_per_key: float


def resident() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def in_process(unique: bool) -> InProcess:
    """One snapshot loaded here from a SQLite database of IN_PROCESS_KEYS keys."""
    with tempfile.TemporaryDirectory(prefix="keyguard-snapshot-") as folder:
        url = f"sqlite:///{Path(folder) / 'keyguard.db'}"
        store = open_store(url)
        try:
            store.migrate()
            account, _key = store.create_account(
                "bench", os.urandom(32), b"s", KeySettings(label="k")
            )
            fill(url, account.id, IN_PROCESS_KEYS, unique)
            gc.collect()
            before = resident()
            cache = KeyCache(store)
            started = time.perf_counter()
            cache.refresh()
            seconds = time.perf_counter() - started
            gc.collect()
            grown = resident() - before
            profiles = len(cache.profiles())
        finally:
            store.close()
    name = "all their own" if unique else "a third each of three kinds"
    return InProcess(name, len(cache), profiles, seconds, grown / len(cache))


def run(context: Context) -> Section:  # noqa: ARG001
    databases: dict[str, tuple[list[Starts], float]] = {"SQLite": measure_database(None)}
    with postgres_schema(postgres_server(), "kg_bench") as url:
        databases["PostgreSQL"] = measure_database(url)
    loads = [in_process(unique=False), in_process(unique=True)]
    section = Section("snapshot", f"The key snapshot with {KEYS:,} keys")
    rows = []
    for database, (starts, _inserted) in databases.items():
        for measured in starts:
            loaded = measured.loaded
            rows.append(
                [
                    database,
                    measured.keyguard,
                    str(measured.workers),
                    f"{loaded.seconds:.1f}",
                    " / ".join(f"{rss:,.0f}" for rss in loaded.rss_mib),
                    f"{sum(loaded.rss_mib):,.0f}",
                    f"{max(loaded.peak_mib):,.0f}",
                    f"{measured.bytes_per_key:,.0f}",
                ]
            )
    section.tables.append(
        table(
            f"1. keyguard serve on {KEYS + 1:,} keys: start until every worker holds every key",
            [
                "database",
                "keyguard",
                "workers",
                "start s",
                "RSS MiB, each worker",
                "RSS MiB, all",
                "peak MiB",
                "bytes/key",
            ],
            rows,
        )
    )
    section.tables.append(
        table(
            f"2. A snapshot loaded in-process from SQLite, {IN_PROCESS_KEYS:,} keys",
            ["key settings", "profiles", "load s", "bytes/key"],
            [
                [
                    load.settings,
                    f"{load.profiles:,}",
                    f"{load.seconds:.1f}",
                    f"{load.bytes_per_key:,.0f}",
                ]
                for load in loads
            ],
        )
    )
    section.notes.append(
        f"Targets: start within {TARGET_SECONDS:.0f} s and at most {TARGET_BYTES_PER_KEY} "
        "bytes per key per worker. Keys inserted by SQL in "
        + ", ".join(f"{name} {inserted:.1f} s" for name, (_s, inserted) in databases.items())
        + ". Baseline rows: the keyguard in KEYGUARD_BENCH_BASELINE, when set."
    )
    section.figures.update(
        {
            "keys": KEYS,
            "databases": {
                name: {
                    "inserted_seconds": inserted,
                    "starts": [{**asdict(s), "bytes_per_key": s.bytes_per_key} for s in starts],
                }
                for name, (starts, inserted) in databases.items()
            },
            "in_process": [asdict(load) for load in loads],
        }
    )
    return section
