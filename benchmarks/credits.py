"""Usage credits: what they cost a decision, and how they hold across processes.

1. Cost. ``Decider.decide`` in-process (:mod:`benchmarks.decide`'s warm pattern,
   1,000 keys): the keys plain, and the same keys with a rate limit they never
   reach and credits their leases always hold, in alternating rounds. The
   target: at most +TARGET_MICROSECONDS per decision.
2. Bounds. Two instances x two workers on one PostgreSQL schema
   (``KEYGUARD_BENCH_POSTGRES_URL``): a load spread evenly over four connections
   pinned one to each worker (:mod:`benchmarks.accuracy`), on a new key each time:
   more requests than credits (never more allowed than credits, at least
   ``credits - 4 x MAX_LEASE``), then fewer, after which the unused leases must go
   back (all but one credit per process) within IDLE_RETURN + 1 seconds.
"""

import os
import time
from collections.abc import Callable, Mapping
from contextlib import ExitStack
from functools import partial

import httpx

from benchmarks.accuracy import FORWARD, forward_headers, spread_load
from benchmarks.context import Context
from benchmarks.decide import SMALL, build, make_tokens, time_decide, warm_calls
from benchmarks.propagation import Pinned, pin_workers
from benchmarks.ratelimit import two_instances
from benchmarks.report import Section, table
from benchmarks.server import Server
from benchmarks.stats import median, median_interval
from keyguard.credits import IDLE_RETURN, MAX_LEASE

TARGET_MICROSECONDS = 0.5
ROUNDS = 21
PROCESSES = 4
LOADS = {  # credits, requests per second, seconds
    "over": (1_000, 500.0, 3.0),
    "under": (5_000, 400.0, 3.0),
}


def ask(client: httpx.Client, headers: Mapping[str, str]) -> int:
    """One forward-auth request: its status."""
    return client.get(FORWARD, headers=dict(headers)).status_code


def run(context: Context) -> Section:  # noqa: ARG001
    section = Section(
        "credits", "Usage credits: the cost of a decision, and bounds across processes"
    )
    _describe_cost(section, cost())
    _describe_bounds(section, bounds())
    return section


# -- 1. cost ----------------------------------------------------------------------------


def cost() -> dict[str, list[float]]:
    """µs per decision of the plain and the metered keys, one figure per round each."""
    secret = os.urandom(32).hex()
    tokens = make_tokens(SMALL)
    plain, _ = build(secret, tokens, SMALL)
    metered, _ = build(secret, tokens, SMALL, "metered")
    calls = warm_calls(tokens)
    cases = {
        "plain": partial(time_decide, plain, calls),
        "metered": partial(time_decide, metered, calls),
    }
    for case in cases.values():  # warm-up
        case()
    rounds: dict[str, list[float]] = {name: [] for name in cases}
    for round_ in range(ROUNDS):
        order = list(cases) if round_ % 2 else list(reversed(cases))
        for name in order:
            rounds[name].append(cases[name]())
    return rounds


def _describe_cost(section: Section, rounds: dict[str, list[float]]) -> None:
    added = [m - p for m, p in zip(rounds["metered"], rounds["plain"], strict=True)]
    verdict = median_interval(added).verdict(TARGET_MICROSECONDS, at_least=False)
    section.tables.append(
        table(
            f"1. Decider.decide, warm, {SMALL:,} keys: µs per allowed decision, median of "
            f"{ROUNDS} alternating rounds",
            ["no rate limit, no credits", "rate limit + credits", "added µs", "target"],
            [
                [
                    f"{median(rounds['plain']):.2f}",
                    f"{median(rounds['metered']):.2f}",
                    f"{median(added):+.2f}",
                    f"{verdict} (≤ +{TARGET_MICROSECONDS} µs)",
                ]
            ],
        )
    )
    section.figures["cost"] = {
        "microseconds_plain": median(rounds["plain"]),
        "microseconds_metered": median(rounds["metered"]),
        "microseconds_added": median(added),
    }


# -- 2. bounds ------------------------------------------------------------------------


def create_credited_key(server: Server, credits: int) -> dict[str, object]:
    headers = {"Authorization": f"Bearer {server.tenant.token}"}
    body = {"label": "credited", "remaining": credits}
    answer = httpx.post(server.url("/v1/api-keys"), json=body, headers=headers, timeout=10)
    answer.raise_for_status()
    key: dict[str, object] = answer.json()
    return key


def shown_remaining(server: Server, key_id: object) -> int:
    headers = {"Authorization": f"Bearer {server.tenant.token}"}
    answer = httpx.get(server.url(f"/v1/api-keys/{key_id}"), headers=headers, timeout=10)
    left: int = answer.json()["remaining"]
    return left


def _ask_pinned(pinned: Pinned, headers: Mapping[str, str]) -> int:
    status, _ = pinned.request("GET", FORWARD, headers)
    return status


def bounds() -> dict[str, dict[str, int]]:
    """Each load on a new key over the four workers: what was sent, allowed, left."""
    found: dict[str, dict[str, int]] = {}
    with two_instances("database") as (a, b):
        for name, (credits, rate, seconds) in LOADS.items():
            key = create_credited_key(a, credits)
            time.sleep(0.5)  # every worker has the key and its first lease
            with ExitStack() as connections:
                pinned = [pin for server in (a, b) for pin in pin_workers(server)]
                for pin in pinned:
                    connections.callback(pin.close)
                senders: list[Callable[[Mapping[str, str]], int]] = [
                    partial(_ask_pinned, pin) for pin in pinned
                ]
                result = spread_load(
                    senders, forward_headers(str(key["value"])), 1, 1, rate, seconds
                )
            time.sleep(IDLE_RETURN + 1.0)
            found[name] = {
                "credits": credits,
                "sent": result.sent,
                "allowed": len(result.accepted),
                "failed": result.failed,
                "left": shown_remaining(b, key["id"]),
            }
    return found


def _describe_bounds(section: Section, measured: dict[str, dict[str, int]]) -> None:
    rows = []
    for name, run_ in measured.items():
        credits, allowed, left = run_["credits"], run_["allowed"], run_["left"]
        if name == "over":
            floor = credits - PROCESSES * MAX_LEASE
            met = floor <= allowed <= credits and run_["failed"] == 0
            target = f"{floor:,} ≤ allowed ≤ {credits:,}"
        else:
            met = credits - allowed - PROCESSES <= left <= credits - allowed
            target = f"left ≥ credits - allowed - {PROCESSES}"
        rows.append(
            [
                f"{name} the credits",
                f"{credits:,}",
                f"{run_['sent']:,}",
                f"{allowed:,}",
                f"{left:,}",
                target,
                "met" if met else "**missed**",
            ]
        )
    section.tables.append(
        table(
            f"2. Credits across 2 instances x 2 workers on PostgreSQL, a load spread evenly "
            f"over the 4 workers; 'left' is the key's remaining {IDLE_RETURN + 1:g} s after",
            ["load", "credits", "sent", "allowed", "left", "bound", "target"],
            rows,
        )
    )
    section.notes.append(
        f"MAX_LEASE is {MAX_LEASE} credits per key and process: at most that many can sit "
        "unspent in each process when the store runs dry; an idle process keeps one."
    )
    section.figures["bounds"] = measured
