"""Per-key rate limits: what a limit costs forward auth, and how exactly it holds.

1. Cost. The scoped key of :mod:`benchmarks.forward` and the same key with a rate
   limit it never reaches (``MAX_LIMIT`` per hour, so every request is counted and
   allowed), in-process (:mod:`benchmarks.inprocess`: keyguard's app called directly,
   hundreds of batches in ABBA order) and over HTTP (one ``keyguard serve --workers
   2`` holding both keys, the two keys' requests in alternating rounds). The target:
   limited / unlimited ≥ COST_TARGET in rate.
2. Accuracy. Two instances x two workers on one PostgreSQL schema
   (``KEYGUARD_BENCH_POSTGRES_URL``), counts shared through the database, then through
   Redis (``KEYGUARD_BENCH_REDIS_URL``, default this machine's): a load spread evenly
   over four connections pinned one to each worker (:mod:`benchmarks.accuracy`),
   twice the limit, then 80 % of it, each on a new key. The targets: any window
   accepts at most limit x 1.1 + 1; at most 5 % of the load under the limit refused.
"""

import os
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from functools import partial

import httpx
from tests.postgres import postgres_schema
from tests.server import NO_LIMITS

from benchmarks.accuracy import FORWARD, Accuracy, forward_headers, spread_load
from benchmarks.context import Context
from benchmarks.forward import (
    FORWARD_PATH,
    KEYS,
    SCOPED_KEY,
    WORKERS,
    contest_table,
    describe,
    seed_keys,
    side_by_side,
)
from benchmarks.forward import forward_headers as scoped_headers
from benchmarks.inprocess import (
    Interleaved,
    Labels,
    describe_interleaved,
    forward_app,
    http_scope,
    interleave,
)
from benchmarks.postgres import postgres_server
from benchmarks.propagation import Pinned, pin_workers
from benchmarks.report import Section, table
from benchmarks.server import Server, deployed, serving
from keyguard.domain.ratelimit import MAX_LIMIT

COST_TARGET = 0.95
COST_ROUNDS = 8
COST_ROUND_SECONDS = 3.0
NEVER_REACHED = {"limit": MAX_LIMIT, "duration": 3600}
LIMITED_KEY = {**SCOPED_KEY, "ratelimit": NEVER_REACHED}
REDIS_URL_VARIABLE = "KEYGUARD_BENCH_REDIS_URL"
DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"
LIMIT, DURATION = 100, 2
LOADS = {"over": 2.0, "under": 0.8}  # of the limit
SECONDS = 6.0
SHARED_WORKERS = 2


def run(context: Context) -> Section:
    direct = in_process()
    with deployed(settings=NO_LIMITS) as deployment:
        plain = ({"label": f"bench key {index:05d}"} for index in range(KEYS - 3))
        (_, unlimited), (_, limited), *_ = seed_keys(deployment, [SCOPED_KEY, LIMITED_KEY, *plain])
        with serving(deployment, WORKERS, keys=KEYS) as server:
            url = server.url(FORWARD_PATH)
            contest = side_by_side(
                context,
                ("unlimited", "limited"),
                (url, scoped_headers(unlimited)),
                (url, scoped_headers(limited)),
                COST_ROUNDS,
                min(context.seconds, COST_ROUND_SECONDS),
            )
    measured = {engine: accuracy(engine) for engine in ("database", "redis")}
    section = Section("ratelimit", "Per-key rate limits: the cost, and accuracy across processes")
    _describe_cost(section, direct)
    section.tables.append(
        contest_table(
            f"2. {FORWARD_PATH} over HTTP, {WORKERS} workers: the same scoped key with and "
            "without a rate limit it never reaches",
            ("no rate limit", "rate limit", "limited / unlimited"),
            contest,
        )
    )
    describe(section, context, contest, COST_TARGET)
    _describe_accuracy(section, measured)
    return section


# -- 1. cost ----------------------------------------------------------------------------


def in_process() -> Interleaved:
    """The scoped key without, then with, a rate limit: keyguard's app called directly."""
    first = forward_app({}, SCOPED_KEY, KEYS)
    second = forward_app({}, LIMITED_KEY, KEYS, share=first)
    return interleave(
        (first.app, http_scope(FORWARD_PATH, scoped_headers(first.token))),
        (second.app, http_scope(FORWARD_PATH, scoped_headers(second.token))),
    )


IN_PROCESS = Labels(
    f"1. {FORWARD_PATH} in-process",
    "key",
    "scoped, no rate limit",
    "scoped, a rate limit never reached",
    "limited / unlimited",
    ("microseconds_unlimited", "microseconds_limited", "ratio_limited_over_unlimited_rounds"),
)


def _describe_cost(section: Section, direct: Interleaved) -> None:
    why = "a rate limit, its RateLimit headers included, adds"
    describe_interleaved(section, direct, IN_PROCESS, COST_TARGET, why)


# -- 2. accuracy --------------------------------------------------------------------


@contextmanager
def two_instances(engine: str) -> Iterator[tuple[Server, Server]]:
    """Two instances of SHARED_WORKERS workers on a fresh PostgreSQL schema."""
    settings = dict(NO_LIMITS)
    if engine == "redis":
        redis = os.environ.get(REDIS_URL_VARIABLE) or DEFAULT_REDIS_URL
        prefix = f"keyguard-bench-{os.urandom(6).hex()}:"
        settings |= {"KEYGUARD_REDIS_URL": redis, "KEYGUARD_REDIS_PREFIX": prefix}
    with (
        postgres_schema(postgres_server(), "kg_bench") as url,
        deployed(url, settings) as deployment,
        serving(deployment, SHARED_WORKERS) as a,
        serving(deployment, SHARED_WORKERS) as b,
    ):
        time.sleep(1.5)  # a heartbeat: every worker has seen the others
        yield a, b


def create_limited_key(server: Server) -> str:
    headers = {"Authorization": f"Bearer {server.tenant.token}"}
    body = {"label": "metered", "ratelimit": {"limit": LIMIT, "duration": DURATION}}
    answer = httpx.post(server.url("/v1/api-keys"), json=body, headers=headers, timeout=10)
    answer.raise_for_status()
    token: str = answer.json()["value"]
    return token


def ask(pinned: Pinned, headers: Mapping[str, str]) -> int:
    status, _ = pinned.request("GET", FORWARD, headers)
    return status


def accuracy(engine: str) -> dict[str, Accuracy]:
    """Both loads, each on a new key, spread over the four workers."""
    found: dict[str, Accuracy] = {}
    with two_instances(engine) as (a, b):
        for name, share in LOADS.items():
            token = create_limited_key(a)
            time.sleep(0.5)  # every worker has the key
            with ExitStack() as connections:
                pinned = [pin for server in (a, b) for pin in pin_workers(server)]
                for pin in pinned:
                    connections.callback(pin.close)
                senders: list[Callable[[Mapping[str, str]], int]] = [
                    partial(ask, pin) for pin in pinned
                ]
                rate = share * LIMIT / DURATION
                found[name] = spread_load(
                    senders, forward_headers(token), LIMIT, DURATION, rate, SECONDS
                )
    return found


@dataclass(frozen=True, slots=True)
class Verdicts:
    bound: bool
    refused: bool


def _verdicts(measured: dict[str, Accuracy]) -> Verdicts:
    over, under = measured["over"], measured["under"]
    return Verdicts(over.most_in_any_window <= over.bound, under.refused_share <= 0.05)


def _describe_accuracy(section: Section, measured: dict[str, dict[str, Accuracy]]) -> None:
    rows = []
    for engine, loads in measured.items():
        verdicts = _verdicts(loads)
        for name, result in loads.items():
            verdict = verdicts.bound if name == "over" else verdicts.refused
            rows.append(
                [
                    f"{engine}, {result.rate:g}/s ({LOADS[name]:.0%} of the limit)",
                    f"{result.sent:,}",
                    f"{len(result.accepted):,}",
                    f"{result.refused:,} ({result.refused_share:.1%})",
                    f"{result.most_in_any_window} (bound {result.bound:g})",
                    "met" if verdict else "**missed**",
                ]
            )
    section.tables.append(
        table(
            f"3. One limit of {LIMIT} per {DURATION} s across 2 instances x {SHARED_WORKERS} "
            f"workers on PostgreSQL, {SECONDS:g} s of load spread evenly over the 4 workers",
            [
                "counts shared through, load",
                "sent",
                "accepted",
                "refused",
                "most in any window",
                "target",
            ],
            rows,
        )
    )
    section.notes.append(
        "Targets: over the limit, any window of the limit's duration (sliding) accepts at "
        "most limit x 1.1 + 1; under it, at most 5 % of requests refused. Each load starts "
        "just after a window boundary, on a new key; every request answered 200 or 429."
    )
    section.figures["accuracy"] = {
        engine: {
            name: {
                "rate": result.rate,
                "sent": result.sent,
                "accepted": len(result.accepted),
                "refused": result.refused,
                "failed": result.failed,
                "most_in_any_window": result.most_in_any_window,
                "bound": result.bound,
            }
            for name, result in loads.items()
        }
        for engine, loads in measured.items()
    }
