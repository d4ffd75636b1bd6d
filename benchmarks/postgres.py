"""keyguard on PostgreSQL: propagation between instances, and SQLite side by side.

Four phases, each on throwaway schemas of the PostgreSQL server named by
``KEYGUARD_BENCH_POSTGRES_URL`` (default: this machine's, 127.0.0.1:5432/test),
dropped at the end even when a phase fails:

1. two instances on one database: deactivate a key through instance A and poll
   instance B's ``/auth/forward`` until it refuses the key, then re-activate it
   and wait until B allows it again; 100 times;
2. the management phases of :mod:`benchmarks.management` (create, list) on a
   SQLite server and on a PostgreSQL server, one after the other, with at most
   MANAGEMENT_KEYS keys each to keep the whole run near five minutes;
3. ``/auth/forward`` on both servers under the same load, in alternating rounds;
4. start-up with 1,000,000 keys put into PostgreSQL with one ``INSERT … SELECT``,
   beside the start-up of the same database with one key, and the memory of the
   worker that holds them.

Servers run without keyguard's abuse limits, which would refuse the
benchmark's own traffic (hundreds of refused requests and of writes a minute
from 127.0.0.1).
"""

import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

import httpx
import psycopg
from tests.postgres import postgres_schema
from tests.server import NO_LIMITS

from benchmarks import management
from benchmarks.context import Context
from benchmarks.forward import FORWARD_PATH, forward_headers
from benchmarks.load import Comparison, Target, compare
from benchmarks.memory import Start, start
from benchmarks.report import Section, comparison_table, millis, rate, table, times
from benchmarks.server import (
    Server,
    deployed,
    running_keyguard,
    serving,
)
from benchmarks.stats import Latency

POSTGRES_URL_VARIABLE = "KEYGUARD_BENCH_POSTGRES_URL"
DEFAULT_POSTGRES_URL = "postgresql://postgres@127.0.0.1:5432/test"

TRIALS = 100
PROPAGATION_BUDGET = 60.0  # seconds for all trials; fewer trials are reported as such
PROPAGATION_WAIT = 5.0  # one wait for B; a longer one counts as missed
PROPAGATION_TARGET = 1.0  # seconds: "enforced everywhere within one second"

MANAGEMENT_KEYS = 3_000  # per database, at most; see run()
CREATE_BUDGET = 45.0  # seconds per database

FORWARD_ROUNDS = 3

BULK_KEYS = 1_000_000
BULK_START_TIMEOUT = 150.0
SQL_TIMEOUT = "SET statement_timeout = '120s'"  # bounds the bulk insert and the fetch


def postgres_server() -> str:
    return os.environ.get(POSTGRES_URL_VARIABLE) or DEFAULT_POSTGRES_URL


# -- 1. propagation -----------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Propagation:
    """Seconds until instance B answered as the change made through A requires."""

    deactivated: list[float]  # from the deactivation being sent to A until B refused
    acknowledged: list[float]  # from A's answer until B refused
    activated: list[float]  # from the activation being sent to A until B allowed
    missed: int  # waits longer than PROPAGATION_WAIT; trials stop at the first


def answered_as(client: httpx.Client, url: str, token: str, *, allowed: bool) -> float | None:
    """``perf_counter()`` when ``url`` first answered allowed (200) or refused (401/403).

    Polls back to back, so the time is that of the first answer showing the
    change: an upper bound, by at most one request. None after PROPAGATION_WAIT.
    """
    headers = forward_headers(token)
    deadline = time.perf_counter() + PROPAGATION_WAIT
    while time.perf_counter() < deadline:
        status = client.get(url, headers=headers).status_code
        if status not in (200, 401, 403):
            raise RuntimeError(f"/auth/forward answered {status}")
        if (status == 200) == allowed:
            return time.perf_counter()
    return None


def propagation(a: Server, b: Server) -> Propagation:
    deactivated: list[float] = []
    acknowledged: list[float] = []
    activated: list[float] = []
    missed = 0
    with httpx.Client(headers=a.tenant.headers, timeout=10.0) as client:
        created = client.post(a.url("/v1/api-keys"), json={"label": "propagation"})
        key = created.raise_for_status().json()
        toggle, token, forward = f"/v1/api-keys/{key['id']}/", key["value"], b.url(FORWARD_PATH)
        if answered_as(client, forward, token, allowed=True) is None:
            raise RuntimeError("instance B never allowed the key created through instance A")
        deadline = time.perf_counter() + PROPAGATION_BUDGET
        while len(deactivated) < TRIALS and time.perf_counter() < deadline:
            sent = time.perf_counter()
            client.patch(a.url(toggle + "deactivate")).raise_for_status()
            answered = time.perf_counter()
            refused = answered_as(client, forward, token, allowed=False)
            if refused is None:
                missed += 1
                break
            deactivated.append(refused - sent)
            acknowledged.append(refused - answered)
            sent = time.perf_counter()
            client.patch(a.url(toggle + "activate")).raise_for_status()
            allowed = answered_as(client, forward, token, allowed=True)
            if allowed is None:
                missed += 1
                break
            activated.append(allowed - sent)
    return Propagation(deactivated, acknowledged, activated, missed)


def measure_propagation(server: str, workers: int) -> Propagation:
    with (
        postgres_schema(server, "kg_bench") as url,
        deployed(url, NO_LIMITS) as deployment,
        serving(deployment, workers) as a,
        serving(deployment, workers) as b,
    ):
        return propagation(a, b)


# -- 2. and 3. management and forward auth, SQLite against PostgreSQL ---------


@dataclass(frozen=True, slots=True)
class Backend:
    """What the management phases measured on one database."""

    created: management.CreateResult
    lists: list[management.ListResult]


def manage(server: Server, keys: int) -> Backend:
    created = management.create_keys(server, keys, CREATE_BUDGET)
    lists = [
        management.list_latency(server, "", created.created + 1),  # + the account's first key
        management.list_latency(server, f"?label={management.LABEL_FILTER}", created.needles),
    ]
    return Backend(created, lists)


def forward_target(server: Server) -> Target:
    return server.url(FORWARD_PATH), forward_headers(server.tenant.token)


# -- 4. start-up with a million keys ------------------------------------------


@dataclass(frozen=True, slots=True)
class Startup:
    one_key: Start
    loaded: Start
    insert_seconds: float  # the INSERT … SELECT, the revision bump and ANALYZE
    fetch_seconds: float  # the snapshot's rows fetched as tuples, JSON as text: no keys built


def insert_keys(url: str, account_id: int, count: int) -> float:
    """``count`` active, unrestricted, full-access keys of one account, by SQL.

    Digests are random 32-byte values; every sealed value is the same 69 bytes,
    as long as a real key's, so no key can be unsealed. As keyguard's own writes
    leave them, each row gets its own revision and a ``changed_at``, and
    keyguard_meta then holds the newest revision.
    """
    started = time.perf_counter()
    with psycopg.connect(url) as connection:
        connection.execute(SQL_TIMEOUT)
        base = connection.execute("SELECT revision FROM keyguard_meta FOR UPDATE").fetchone()
        assert base is not None
        connection.execute(
            """
            INSERT INTO api_keys (account_id, label, digest, sealed_value, active, restricted,
                                  permitted_ips, scopes_enabled, scopes, created_at, revision,
                                  changed_at)
            SELECT %(account)s, 'bulk key ' || n, sha256(uuid_send(gen_random_uuid())),
                   decode(repeat('a5', 69), 'hex'), true, false, '[]'::json, false, '{}'::json,
                   date_trunc('second', now()), %(base)s + n, now()
            FROM generate_series(1, %(count)s) AS n
            """,
            {"account": account_id, "base": base[0], "count": count},
        )
        connection.execute("UPDATE keyguard_meta SET revision = %s", (base[0] + count,))
    with psycopg.connect(url, autocommit=True) as connection:
        connection.execute("ANALYZE api_keys")
    return time.perf_counter() - started


def fetch_rows(url: str) -> float:
    """Seconds to fetch the rows a snapshot loads, as plain tuples, JSON columns as text."""
    started = time.perf_counter()
    with psycopg.connect(url) as connection:
        connection.execute(SQL_TIMEOUT)
        connection.execute(
            "SELECT id, account_id, label, digest, sealed_value, active, restricted,"
            " permitted_ips::text, scopes_enabled, scopes::text, created_at, last_used_at,"
            " deleted_at, revision, changed_at FROM api_keys"
            " WHERE revision > 0 AND deleted_at IS NULL ORDER BY revision"
        ).fetchall()
    return time.perf_counter() - started


def measure_startup(server: str, workers: int) -> Startup:
    with postgres_schema(server, "kg_bench") as url, deployed(url, NO_LIMITS) as deployment:
        one_key = start(deployment, workers, 1, BULK_START_TIMEOUT)
        inserted = insert_keys(url, deployment.tenant.account_id, BULK_KEYS)
        fetched = fetch_rows(url)
        loaded = start(deployment, workers, BULK_KEYS + 1, BULK_START_TIMEOUT)
    return Startup(one_key, loaded, inserted, fetched)


# -- the benchmark ------------------------------------------------------------


def side_by_side(context: Context, server: str, keys: int) -> tuple[list[Backend], Comparison]:
    """Phases 2 and 3 on a SQLite server and a PostgreSQL server, both running throughout."""
    with (
        running_keyguard(context.workers, None, NO_LIMITS) as lite,
        postgres_schema(server, "kg_bench") as url,
        running_keyguard(context.workers, url, NO_LIMITS) as pg,
    ):
        backends = [manage(lite, keys), manage(pg, keys)]
        forward = compare(
            context.generator,
            forward_target(lite),
            forward_target(pg),
            context.seconds,
            FORWARD_ROUNDS,
        )
    return backends, forward


def run(context: Context) -> Section:
    server = postgres_server()
    keys = min(context.keys, MANAGEMENT_KEYS)
    spread = measure_propagation(server, context.workers)
    backends, forward = side_by_side(context, server, keys)
    startup = measure_startup(server, context.workers)
    section = Section("postgres", "PostgreSQL: propagation, SQLite side by side, 1M-key start")
    _describe_propagation(section, spread)
    _describe_management(section, backends, context.keys)
    _describe_forward(section, forward, context)
    _describe_startup(section, startup, context.workers)
    return section


def _describe_propagation(section: Section, spread: Propagation) -> None:
    if not spread.deactivated:
        raise RuntimeError("instance B never refused the key deactivated through instance A")
    series = {
        "deactivate: from the request to A": spread.deactivated,
        "deactivate: from A's answer": spread.acknowledged,
        "activate: from the request to A": spread.activated,
    }
    summaries = {name: Latency.of(values) for name, values in series.items() if values}
    section.tables.append(
        table(
            "1. Two instances, one database: a change through A until B's /auth/forward obeys",
            ["change", "trials", "p50 ms", "p99 ms", "max ms"],
            [
                [
                    name,
                    str(latency.samples),
                    millis(latency.p50_ms),
                    millis(latency.p99_ms),
                    millis(latency.max_ms),
                ]
                for name, latency in summaries.items()
            ],
        )
    )
    worst = max(spread.deactivated)
    verdict = "below" if worst < PROPAGATION_TARGET else "ABOVE"
    section.notes.append(
        f"Deactivation: max {worst * 1000:,.0f} ms from the request to A until B refused, "
        f"{verdict} the {PROPAGATION_TARGET:.0f} s target. B polled back to back "
        "(an upper bound, by one request); the key re-activated between trials."
    )
    if spread.missed or len(spread.deactivated) < TRIALS:
        section.notes.append(
            f"{len(spread.deactivated)} of {TRIALS} trials ran within "
            f"{PROPAGATION_BUDGET:.0f} s; {spread.missed} wait(s) exceeded "
            f"{PROPAGATION_WAIT:.0f} s."
        )
    section.figures["propagation"] = {
        "target_seconds": PROPAGATION_TARGET,
        "missed": spread.missed,
        **{name: asdict(latency) for name, latency in summaries.items()},
    }


def _describe_management(section: Section, backends: list[Backend], asked: int) -> None:
    lite, pg = backends

    def row(name: str, of: Callable[[Backend], float], show: Callable[[float], str]) -> list[str]:
        return [name, show(of(lite)), show(of(pg)), times(of(pg) / of(lite))]

    per_database = lite.created.asked
    section.tables.append(
        table(
            f"2. Management API, {per_database:,} keys in one account, each database in turn",
            ["", "SQLite", "PostgreSQL", "PostgreSQL / SQLite"],
            [
                row("keys created", lambda b: b.created.created, lambda v: f"{v:,.0f}"),
                row("creates/s (4 clients)", lambda b: b.created.keys_per_second, rate),
                row("create p50 ms", lambda b: b.created.latency.p50_ms, millis),
                row("create p95 ms", lambda b: b.created.latency.p95_ms, millis),
                row("list all, p50 ms", lambda b: b.lists[0].latency.p50_ms, millis),
                row("list ?label=, p50 ms", lambda b: b.lists[1].latency.p50_ms, millis),
            ],
        )
    )
    if per_database < asked:
        section.notes.append(
            f"{per_database:,} keys per database, not --keys {asked:,}: creates are one durable "
            f"write each, and {asked:,} on both databases would take most of this "
            "benchmark's five minutes."
        )
    for name, backend in zip(("SQLite", "PostgreSQL"), backends, strict=True):
        if backend.created.created < backend.created.asked:
            section.notes.append(
                f"{name}: only {backend.created.created:,} keys created within "
                f"{CREATE_BUDGET:.0f} s."
            )
        section.notes.extend(
            f"{name}: GET /v1/api-keys{result.query} returned {result.returned:,} keys, "
            f"expected {result.expected:,}."
            for result in backend.lists
            if result.returned != result.expected
        )
    section.figures["management"] = {
        name: {"create": asdict(backend.created), "list": [asdict(r) for r in backend.lists]}
        for name, backend in zip(("sqlite", "postgresql"), backends, strict=True)
    }


def _describe_forward(section: Section, forward: Comparison, context: Context) -> None:
    section.tables.append(
        comparison_table(
            "3. /auth/forward on each database's server, same load, every answer an allowed 200",
            ("SQLite", "PostgreSQL", "PostgreSQL / SQLite"),
            forward,
        )
    )
    section.notes.append(
        f"{FORWARD_ROUNDS} alternating rounds of {context.seconds:.0f} s each, "
        f"{context.generator.name}, {context.workers} worker(s) per server."
    )
    section.figures["forward"] = {
        "sqlite": [r.figures() for r in forward.baseline],
        "postgresql": [r.figures() for r in forward.subject],
        "ratio_postgresql_over_sqlite": forward.ratios(),
    }


def _describe_startup(section: Section, startup: Startup, workers: int) -> None:
    one, loaded = startup.one_key, startup.loaded

    def row(start: Start) -> list[str]:
        rss, peak = f"{max(start.rss_mib):,.0f}", f"{max(start.peak_mib):,.0f}"
        return [f"{start.keys:,}", f"{start.seconds:.2f}", rss, peak]

    section.tables.append(
        table(
            "4. Start-up on PostgreSQL: process start until every worker holds every key",
            ["keys in the database", "seconds", "worker RSS MiB", "worker peak MiB"],
            [
                row(one),
                row(loaded),
                [
                    "ratio",
                    times(loaded.seconds / one.seconds),
                    times(max(loaded.rss_mib) / max(one.rss_mib)),
                    times(max(loaded.peak_mib) / max(one.peak_mib)),
                ],
            ],
        )
    )
    per_key = (loaded.seconds - one.seconds) / (loaded.keys - one.keys) * 1e6
    added = (max(loaded.rss_mib) - max(one.rss_mib)) * 2**20 / (loaded.keys - one.keys)
    section.notes.append(
        f"{BULK_KEYS:,} keys inserted by SQL in {startup.insert_seconds:.1f} s. Loading adds "
        f"about {per_key:.1f} µs and {added:,.0f} bytes of resident memory per key "
        f"({workers} worker(s), each holding every key). The same rows fetched as plain "
        f"tuples with the JSON columns as text take {startup.fetch_seconds:.1f} s."
    )
    section.figures["startup"] = asdict(startup)
