"""The management API with many keys: create them, list them, and weigh authentication.

Three phases against one ``keyguard serve`` on a fresh SQLite database:

1. create ``keys`` keys in one account with ``POST /v1/api-keys`` from a few
   concurrent clients (every create is a durable SQLite write);
2. list that account, without a filter, with a ``?label=`` filter that
   matches one key in a hundred, and its first and last pages of 100;
3. load ``GET /v1/api-keys/{id}`` and ``/healthz`` alternately with the same
   generator, and compare them. Beyond the bearer-key decision, the key route
   reads the key from the database in the thread pool, decrypts and renders it,
   so the ratio holds more than authentication alone.
"""

import asyncio
import time
from dataclasses import asdict, dataclass

import httpx
from tests.server import NO_LIMITS

from benchmarks.context import Context
from benchmarks.load import Comparison, LoadGenerator, Target, compare, pooled_rate
from benchmarks.report import Section, comparison_table, millis, rate, table
from benchmarks.server import Server, running_keyguard
from benchmarks.stats import Latency

CREATE_CLIENTS = 4
CREATE_BUDGET = 90.0  # seconds; a slower create phase stops early and says so
MAX_CREATE_FAILURES = 20
NEEDLE_EVERY = 100  # one key in NEEDLE_EVERY carries the needle in its label
NEEDLE = "Needle"
LABEL_FILTER = "nEEDLE"  # the filter is case-insensitive
LIST_RUNS = 7
PAGE = 100  # keys per page of the paged lists
LIST_BUDGET = 30.0
AUTH_ROUNDS = 3
WARMUP_SECONDS = 1.0


def label(index: int) -> str:
    suffix = f" {NEEDLE}" if index % NEEDLE_EVERY == 0 else ""
    return f"bench key {index:05d}{suffix}"


@dataclass(frozen=True, slots=True)
class CreateResult:
    asked: int
    created: int
    failures: int
    seconds: float
    latency: Latency
    needles: int  # created keys whose label carries NEEDLE
    first_failure: str | None = None

    @property
    def keys_per_second(self) -> float:
        return self.created / self.seconds


def create_keys(server: Server, count: int, budget: float = CREATE_BUDGET) -> CreateResult:
    """Create ``count`` keys, stopping early after ``budget`` seconds."""
    return asyncio.run(_create_keys(server, count, budget))


async def _create_keys(server: Server, count: int, budget: float) -> CreateResult:
    pending = iter(range(count))
    latencies: list[float] = []
    needles = 0
    failures: list[str] = []
    async with httpx.AsyncClient(
        base_url=server.base_url, headers=server.tenant.headers, timeout=30.0
    ) as client:
        started = time.perf_counter()
        deadline = started + budget

        async def create() -> None:
            nonlocal needles
            for index in pending:
                if time.perf_counter() > deadline or len(failures) > MAX_CREATE_FAILURES:
                    return
                begun = time.perf_counter()
                response = await client.post("/v1/api-keys", json={"label": label(index)})
                if response.status_code == 200:
                    latencies.append(time.perf_counter() - begun)
                    needles += NEEDLE in label(index)
                else:
                    failures.append(f"{response.status_code} {response.text[:200]}")

        await asyncio.gather(*(create() for _ in range(CREATE_CLIENTS)))
        elapsed = time.perf_counter() - started
    first_failure = failures[0] if failures else None
    if not latencies:
        raise RuntimeError(f"no key could be created; the first answer was {first_failure}")
    latency = Latency.of(latencies)
    created = len(latencies)
    return CreateResult(count, created, len(failures), elapsed, latency, needles, first_failure)


@dataclass(frozen=True, slots=True)
class ListResult:
    query: str
    expected: int
    returned: int
    latency: Latency


def list_latency(server: Server, query: str, expected: int) -> ListResult:
    """Sequential lists, one untimed warm-up first; at most LIST_RUNS within LIST_BUDGET."""
    url = server.url("/v1/api-keys" + query)
    with httpx.Client(headers=server.tenant.headers, timeout=60.0) as client:
        returned = len(client.get(url).raise_for_status().json())
        durations: list[float] = []
        deadline = time.perf_counter() + LIST_BUDGET
        while len(durations) < LIST_RUNS and (not durations or time.perf_counter() < deadline):
            begun = time.perf_counter()
            client.get(url).raise_for_status()
            durations.append(time.perf_counter() - begun)
    return ListResult(query or "(no filter)", expected, returned, Latency.of(durations))


def auth_cost(server: Server, generator: LoadGenerator, seconds: float) -> Comparison:
    """/healthz (the baseline) against an authenticated key read."""
    healthz: Target = (server.url("/healthz"), {})
    key: Target = (server.url(f"/v1/api-keys/{server.tenant.key_id}"), server.tenant.headers)
    return compare(generator, healthz, key, seconds, AUTH_ROUNDS, WARMUP_SECONDS)


def run(context: Context) -> Section:
    with running_keyguard(context.workers, settings=NO_LIMITS) as server:
        created = create_keys(server, context.keys)
        last = -(-(created.created + 1) // PAGE)
        lists = [
            list_latency(server, "", created.created + 1),  # + the account's first key
            list_latency(server, f"?label={LABEL_FILTER}", created.needles),
            list_latency(server, f"?page=1&per_page={PAGE}", min(PAGE, created.created + 1)),
            list_latency(
                server, f"?page={last}&per_page={PAGE}", (created.created + 1) % PAGE or PAGE
            ),
        ]
        cost = auth_cost(server, context.generator, context.seconds)
    section = Section("management", f"Management API: {created.created:,} keys in one account")
    _describe_create(section, created)
    _describe_lists(section, lists)
    _describe_auth(section, cost, context)
    return section


def _describe_create(section: Section, created: CreateResult) -> None:
    latency = created.latency
    section.tables.append(
        table(
            f"1. POST /v1/api-keys, {CREATE_CLIENTS} concurrent clients",
            ["keys", "seconds", "keys/s", "p50 ms", "p95 ms", "failures"],
            [
                [
                    f"{created.created:,}",
                    f"{created.seconds:.1f}",
                    rate(created.keys_per_second),
                    millis(latency.p50_ms),
                    millis(latency.p95_ms),
                    str(created.failures),
                ]
            ],
        )
    )
    if created.first_failure is not None:
        section.notes.append(f"First failed create answered: {created.first_failure}")
    if created.created < created.asked:
        section.notes.append(
            f"Created only {created.created:,} of {created.asked:,} keys "
            f"within {CREATE_BUDGET:.0f} s; later phases use those."
        )
    section.figures["create"] = {
        **asdict(created),
        "clients": CREATE_CLIENTS,
        "keys_per_second": created.keys_per_second,
    }


def _describe_lists(section: Section, lists: list[ListResult]) -> None:
    rows = [
        [
            result.query,
            f"{result.returned:,}",
            str(result.latency.samples),
            millis(result.latency.p50_ms),
            millis(result.latency.p95_ms),
        ]
        for result in lists
    ]
    section.tables.append(
        table(
            "2. GET /v1/api-keys, sequential", ["query", "keys", "runs", "p50 ms", "p95 ms"], rows
        )
    )
    for result in lists:
        if result.returned != result.expected:
            section.notes.append(
                f"GET /v1/api-keys{result.query} returned {result.returned:,} keys, "
                f"expected {result.expected:,}."
            )
    section.figures["list"] = [asdict(result) for result in lists]


def _describe_auth(section: Section, cost: Comparison, context: Context) -> None:
    ratios = cost.ratios()
    section.tables.append(
        comparison_table(
            "3. GET /v1/api-keys/{id} against /healthz, same server, same load",
            ("GET /healthz (no key)", "GET /v1/api-keys/{id} (Bearer)", "key read / healthz"),
            cost,
        )
    )
    section.notes.append(
        f"{AUTH_ROUNDS} alternating rounds of {context.seconds:.0f} s each, "
        f"{context.generator.name}; ratios are medians of the rounds' own ratios."
    )
    section.notes.append(
        f"About {cost.added_microseconds():,.0f} µs of server time added per request "
        f"(difference of 1/rate, {context.workers} worker(s)). Besides the key decision, "
        "the key route reads the key from the database in the thread pool, decrypts and "
        "renders it."
    )
    failures = sum(r.failures for r in [*cost.baseline, *cost.subject])
    if failures:
        section.notes.append(f"{failures:,} requests failed under load; see the table.")
    section.figures["auth"] = {
        "rounds_seconds": context.seconds,
        "load_generator": context.generator.name,
        "healthz": [r.figures() for r in cost.baseline],
        "key": [r.figures() for r in cost.subject],
        "healthz_requests_per_second": pooled_rate(cost.baseline),
        "key_requests_per_second": pooled_rate(cost.subject),
        "ratio_key_over_healthz": ratios,
        "added_microseconds_per_request": cost.added_microseconds(),
    }
