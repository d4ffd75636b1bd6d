"""The console's keys page with many keys, each with a day of request counts.

One account gets ``keys`` keys and, for every key, a count in each of the last 24
hours (written as usage flushes write them, in this process, on the deployment's
SQLite database). Then a real ``keyguard serve`` answers a signed-in browser's
``GET /console/keys`` (25 keys with their sparklines) for the first page and a
middle one. Side by side, in this process on the same database: the sparklines
of a page read in one query (``Store.usage_of_keys``), and the same read as one
``usage_series`` query per key.
"""

import re
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta

import httpx
from pydantic import SecretStr
from tests.server import NO_LIMITS

from benchmarks.context import Context
from benchmarks.report import Section, millis, table, times
from benchmarks.server import Deployment, deployed, serving
from benchmarks.stats import Latency, median
from keyguard.config import Settings
from keyguard.domain.counts import Granularity
from keyguard.runtime import Keyguard
from keyguard.storage import Store

PER_PAGE = 25  # keys a page of the console's table shows (asserted below)
PAGE_RUNS = 30
READ_ROUNDS = 200
HOURS = 24


@dataclass(frozen=True, slots=True)
class Reads:
    """Milliseconds to read a page's sparkline counts, each way, alternating."""

    one_query_ms: float
    per_key_ms: float

    @property
    def ratio(self) -> float:
        return self.per_key_ms / self.one_query_ms


def in_process(deployment: Deployment) -> Keyguard:
    """keyguard in this process, on the deployment's database."""
    secret = SecretStr(deployment.secret_key)
    return Keyguard(Settings(database_url=deployment.database_url, secret_key=secret))


def fill(deployment: Deployment, keys: int) -> list[int]:
    """``keys`` more keys in the deployment's account, with a count in each hour."""
    runtime = in_process(deployment)
    try:
        account_id = deployment.tenant.account_id
        made = [
            runtime.service.create_key(account_id, {"label": f"key {index:05d}"}).key.id
            for index in range(keys)
        ]
        now = datetime.now(UTC)
        for hour in range(HOURS):
            counts = {key_id: (account_id, 1 + hour, 0, key_id % 3, 0, 0) for key_id in made}
            runtime.store.record_counts(counts, now - timedelta(hours=hour))
    finally:
        runtime.stop()
    return made


def sign_in(browser: httpx.Client, token: str) -> None:
    shown = browser.get("/console/")
    found = re.search(r'name="token" value="([^"]+)"', shown.text)
    assert found is not None, "no sign-in form"
    signed = browser.post("/console/sign-in", data={"token": found.group(1), "api_key": token})
    assert signed.status_code == 303, signed.text


def page_latency(browser: httpx.Client, number: int) -> Latency:
    durations = []
    for _ in range(PAGE_RUNS):
        started = time.perf_counter()
        answer = browser.get(f"/console/keys?page={number}")
        durations.append(time.perf_counter() - started)
        assert answer.status_code == 200
        assert answer.text.count('class="sparkline"') == PER_PAGE
    return Latency.of(durations)


def reads(store: Store, account_id: int, key_ids: list[int]) -> Reads:
    until = Granularity.HOUR.floor(datetime.now(UTC)) + timedelta(hours=1)
    since = until - timedelta(hours=HOURS)

    def one_query() -> None:
        store.usage_of_keys(account_id, key_ids, Granularity.HOUR, since, until)

    def per_key() -> None:
        for key_id in key_ids:
            store.usage_series(account_id, key_id, Granularity.HOUR, since, until)

    timed: dict[Callable[[], None], list[float]] = {one_query: [], per_key: []}
    for _ in range(READ_ROUNDS):
        for read, durations in timed.items():
            started = time.perf_counter()
            read()
            durations.append(time.perf_counter() - started)
    return Reads(median(timed[one_query]) * 1000, median(timed[per_key]) * 1000)


def run(context: Context) -> Section:
    section = Section("console", f"Console keys page, {context.keys:,} keys with counts")
    with deployed(settings=NO_LIMITS) as deployment:
        made = fill(deployment, context.keys)
        middle = (len(made) + 1) // PER_PAGE // 2
        with (
            serving(deployment) as server,
            httpx.Client(base_url=server.base_url, timeout=30) as browser,
        ):
            sign_in(browser, server.tenant.token)
            pages = {number: page_latency(browser, number) for number in (1, middle)}
        runtime = in_process(deployment)
        try:
            read = reads(runtime.store, deployment.tenant.account_id, made[:PER_PAGE])
        finally:
            runtime.stop()
    section.tables.append(
        table(
            f"GET /console/keys ({PER_PAGE} keys and their sparklines), {PAGE_RUNS} runs",
            ["page", "p50", "p95", "max"],
            [
                (str(number), millis(found.p50_ms), millis(found.p95_ms), millis(found.max_ms))
                for number, found in pages.items()
            ],
        )
    )
    section.tables.append(
        table(
            f"A page's sparkline counts ({PER_PAGE} keys x {HOURS} hours), median of "
            f"{READ_ROUNDS}, side by side",
            ["read", "median", "ratio"],
            [
                ("usage_of_keys: one query", millis(read.one_query_ms), "1x"),
                ("usage_series per key", millis(read.per_key_ms), times(read.ratio)),
            ],
        )
    )
    section.figures = {
        "keys": context.keys,
        "pages": {str(number): asdict(found) for number, found in pages.items()},
        "sparkline_reads": {**asdict(read), "ratio": read.ratio},
    }
    return section
