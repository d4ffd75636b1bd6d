"""Request counts: do the usage endpoints count every request sent, and how soon?

One ``keyguard serve --workers 2`` on SQLite with the usage flush every
FLUSH_INTERVAL seconds. Four keys, chosen to meet every outcome the gate can
give a known key here (allowed; 401 for an inactive key; 403 for a route outside
its scope; a rate limit that runs out, so allowed then 429), receive forward-auth
requests from several client threads for a few seconds, each answer's status
tallied by the client. Then ``GET /v1/usage`` is read until every key's counts
equal what was answered, and the time from the last answer to that moment is
reported. The target: equal, within one flush interval (plus reading them).
"""

import time
from collections import Counter
from collections.abc import Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta

import httpx
from tests.server import NO_LIMITS

from benchmarks.context import Context
from benchmarks.forward import FORWARD_PATH, SCOPED_KEY, forward_headers, seed_keys
from benchmarks.report import Section, table
from benchmarks.server import Deployment, deployed, serving
from keyguard.domain.counts import OUTCOMES

FLUSH_INTERVAL = 1.0
WORKERS = 2
THREADS = 4
SETTLE_TIMEOUT = 10.0
POLL = 0.02
LIMIT = 50
KEYS: dict[str, Mapping[str, object]] = {  # the forward request is a POST /v3/messages
    "allowed": SCOPED_KEY,
    "inactive": {"label": "inactive", "active": False},
    "out of scope": {"label": "calls only", "scopes_enabled": True, "calls": {"allow": "read"}},
    "rate limited": {
        **SCOPED_KEY,
        "label": "limited",
        "ratelimit": {"limit": LIMIT, "duration": 3600},
    },
}
OUTCOME_OF_STATUS = {200: "allowed", 401: "unauthorized", 403: "forbidden", 429: "rate_limited"}

Tally = dict[int, Counter[str]]  # key id -> outcome -> requests


def run(context: Context) -> Section:
    settings = {**NO_LIMITS, "KEYGUARD_USAGE_FLUSH_INTERVAL": str(FLUSH_INTERVAL)}
    with seeded(settings) as (deployment, keys), serving(deployment, WORKERS) as server:
        since = datetime.now(UTC) - timedelta(minutes=1)
        sent = send(server.url(FORWARD_PATH), list(keys.values()), context.seconds)
        last_answer = time.monotonic()
        counted = settle(server.url("/v1/usage"), server.tenant.token, sent, since)
        waited = time.monotonic() - last_answer
    equal = counted == sent
    section = Section("analytics", "Request counts: the usage endpoint against the requests sent")
    rows = [
        [
            name,
            outcome,
            f"{sent[key_id][outcome]:,}",
            f"{counted.get(key_id, Counter())[outcome]:,}",
        ]
        for name, (key_id, _) in keys.items()
        for outcome in OUTCOMES
        if sent[key_id][outcome] or counted.get(key_id, Counter())[outcome]
    ]
    section.tables.append(
        table(
            f"{FORWARD_PATH} over HTTP, {WORKERS} workers, SQLite, usage flush every "
            f"{FLUSH_INTERVAL:g} s, {THREADS} client threads",
            ("key", "outcome", "answered", "counted by GET /v1/usage"),
            rows,
        )
    )
    verdict = "equal to" if equal else f"NOT equal to (after {SETTLE_TIMEOUT:g} s)"
    section.notes.append(
        f"Counts {verdict} the answers {waited * 1000:,.0f} ms after the last answer (target: "
        f"within one flush interval, {FLUSH_INTERVAL:g} s, plus the flush and reading them)."
    )
    section.figures.update(
        sent={str(key): dict(counts) for key, counts in sent.items()},
        counted={str(key): dict(counts) for key, counts in counted.items()},
        equal=equal,
        seconds_after_last_answer=waited,
        flush_interval=FLUSH_INTERVAL,
    )
    return section


@contextmanager
def seeded(settings: Mapping[str, str]) -> Iterator[tuple[Deployment, dict[str, tuple[int, str]]]]:
    """A deployment holding the keys of :data:`KEYS`, by name: ``(id, token)``."""
    with deployed(settings=settings) as deployment:
        yield deployment, dict(zip(KEYS, seed_keys(deployment, KEYS.values()), strict=True))


def send(url: str, pairs: list[tuple[int, str]], seconds: float) -> Tally:
    """Requests for every key in turn from THREADS threads; what each key was answered."""
    deadline = time.monotonic() + seconds

    def load() -> Tally:
        answered: Tally = {key_id: Counter() for key_id, _ in pairs}
        with httpx.Client(timeout=5.0) as client:
            while time.monotonic() < deadline:
                for key_id, token in pairs:
                    status = client.get(url, headers=forward_headers(token)).status_code
                    answered[key_id][OUTCOME_OF_STATUS[status]] += 1
        return answered

    tally: Tally = {key_id: Counter() for key_id, _ in pairs}
    with ThreadPoolExecutor(THREADS) as pool:
        for answered in pool.map(lambda _: load(), range(THREADS)):
            for key_id, counts in answered.items():
                tally[key_id].update(counts)
    return tally


def settle(url: str, token: str, sent: Tally, since: datetime) -> Tally:
    """``GET /v1/usage`` until it counts the keys of ``sent`` as sent, or SETTLE_TIMEOUT."""
    deadline = time.monotonic() + SETTLE_TIMEOUT
    params = {"from": since.isoformat(timespec="seconds")}
    with httpx.Client(headers={"Authorization": f"Bearer {token}"}, timeout=5.0) as client:
        while True:
            response = client.get(url, params=params)
            response.raise_for_status()
            counted: Tally = {
                item["key_id"]: Counter({name: item[name] for name in OUTCOMES if item[name]})
                for item in response.json()["items"]
                if item["key_id"] in sent
            }
            if counted == sent or time.monotonic() > deadline:
                return counted
            time.sleep(POLL)
