"""What the abuse limits cost: on the allowed path, and under a flood of bad keys.

``keyguard serve --workers 2`` holds forward's 1,000 keys and believes
``X-Forwarded-For`` from 127.0.0.1, as it would behind nginx, so load generators on
this machine can play any client address. Client A presents the scoped key for
``POST /v3/messages`` and is always allowed.

1. The allowed path. Two servers on one database, one with the limits at their
   defaults and one with both limits off (0), take A's requests in alternating
   rounds, as :func:`benchmarks.forward.side_by_side` loads any two targets.
2. A flood. A's same load runs alone, then while client B floods the server
   with bad keys from two more load generators, one presenting a well-formed
   key that no account holds and one a mistyped key (its checksum fails), with
   FLOOD_FACTOR times A's connections between them. Alone and flooded rounds
   alternate, alone first; the flood starts LEAD seconds before A's load and
   stops LEAD seconds after it. Limits are at their defaults, so B's failures
   soon block B; how the flood was answered is read from every worker's
   ``/metrics``.
"""

import re
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from urllib.parse import urlsplit

from benchmarks.context import Context
from benchmarks.forward import (
    FORWARD_PATH,
    KEYS,
    SCOPED_KEY,
    WORKERS,
    describe,
    forward_headers,
    seed_keys,
    side_by_side,
)
from benchmarks.load import (
    Comparison,
    HttpxLoad,
    LoadGenerator,
    LoadResult,
    Target,
    Wrk,
    pooled_rate,
)
from benchmarks.propagation import pin_workers
from benchmarks.report import Section, comparison_table, millis, rate, table, times
from benchmarks.server import NO_LIMITS, Deployment, Server, deployed, serving
from benchmarks.stats import median
from benchmarks.workers import cpu_seconds, listeners
from keyguard.config import Settings
from keyguard.domain.keys import generate

TRUSTED_PROXY = {"KEYGUARD_TRUSTED_PROXIES": "127.0.0.1"}
CLIENT_A, CLIENT_B = "203.0.113.10", "198.51.100.20"  # documentation addresses
MAX_ROUND_SECONDS = 5.0  # keeps the whole benchmark near 70 s whatever --seconds says
FLOOD_FACTOR = 10  # B's connections per connection of A's
FLOOD_ROUNDS = 2  # of each kind: alone, flooded, flooded, alone
LEAD = 1.0  # seconds of flood before and after A's load, so it covers all of it
WARMUP = 1.0
ALLOWED_PATH_TARGET = 0.95  # limits on / limits off, A's req/s
FLOOD_TARGET = 0.8  # A flooded / A alone, req/s
_DECISIONS = re.compile(rb'keyguard_decisions_total\{outcome="(\w+)",pid="\d+"\} (\S+)')


def without_limits(deployment: Deployment) -> Deployment:
    """The same database, served with both abuse limits off."""
    return replace(deployment, env={**deployment.env, **NO_LIMITS})


def from_client(token: str, address: str) -> dict[str, str]:
    """nginx's ``auth_request`` headers for ``POST /v3/messages`` from ``address``."""
    return {**forward_headers(token), "X-Forwarded-For": address}


def bad_keys() -> dict[str, str]:
    """A well-formed key no account holds, and the same key mistyped."""
    unknown = generate("kg")
    mistyped = unknown[:-1] + ("1" if unknown.endswith("0") else "0")  # a wrong checksum
    return {"well-formed, unknown": unknown, "mistyped (checksum fails)": mistyped}


def with_connections(generator: LoadGenerator, connections: int) -> LoadGenerator:
    """The same kind of load generator with another number of connections."""
    match generator:
        case Wrk() | HttpxLoad():
            return replace(generator, connections=connections)
    raise TypeError(f"cannot set the connections of {generator.name}")


def connections_of(generator: LoadGenerator) -> int:
    match generator:
        case Wrk() | HttpxLoad():
            return generator.connections
    raise TypeError(f"cannot tell the connections of {generator.name}")


@dataclass(frozen=True, slots=True)
class Round:
    """A's load in one round, B's flood beside it if any, and the server's CPU time."""

    good: LoadResult
    bad: dict[str, LoadResult]  # by kind of bad key; empty when A was alone
    cpu_seconds: float  # both workers, from the flood's start to its end

    @property
    def requests(self) -> int:
        return self.good.requests + sum(r.requests for r in self.bad.values())

    @property
    def seconds(self) -> float:
        """How long the round's load lasted: B's flood when there was one, else A's load."""
        return max([self.good.seconds, *(r.seconds for r in self.bad.values())])

    def figures(self) -> dict[str, object]:
        return {
            "good": self.good.figures(),
            "bad": {kind: r.figures() for kind, r in self.bad.items()},
            "server_cpu_seconds": self.cpu_seconds,
            "server_cpu_microseconds_per_request": self.cpu_seconds / self.requests * 1e6,
        }


@dataclass(slots=True)
class Flood:
    """A's load, and B's flood to run beside it."""

    generator: LoadGenerator  # A's
    flood: LoadGenerator  # each of B's
    good: Target
    bad: dict[str, Target]
    pids: set[int]  # the server's workers
    alone: list[Round] = field(default_factory=list)
    flooded: list[Round] = field(default_factory=list)

    def run(self, seconds: float) -> None:
        """A warm-up of A's load, then alone and flooded rounds in ABBA order."""
        self.generator.run(*self.good, WARMUP)
        for index in range(2 * FLOOD_ROUNDS):
            if index % 4 in (1, 2):
                self.flooded.append(self.round(seconds, self.bad))
            else:
                self.alone.append(self.round(seconds, {}))

    def round(self, seconds: float, bad: dict[str, Target]) -> Round:
        before = cpu_seconds(self.pids)
        with ThreadPoolExecutor(max(1, len(bad))) as pool:
            floods = {
                kind: pool.submit(self.flood.run, *target, seconds + 2 * LEAD)
                for kind, target in bad.items()
            }
            if floods:
                time.sleep(LEAD)
            good = self.generator.run(*self.good, seconds)
            answered = {kind: future.result() for kind, future in floods.items()}
        return Round(good, answered, cpu_seconds(self.pids) - before)

    @property
    def bad_rate(self) -> float:
        """B's requests per second in all, each load generator's pooled over the rounds."""
        return sum(pooled_rate([r.bad[kind] for r in self.flooded]) for kind in self.bad)

    @property
    def comparison(self) -> Comparison:
        return Comparison([r.good for r in self.alone], [r.good for r in self.flooded])


def decisions(server: Server) -> Counter[str]:
    """Decisions by outcome, summed over the workers: each one's ``/metrics`` counts its own."""
    counts: Counter[str] = Counter()
    pinned = pin_workers(server)
    try:
        for connection in pinned:
            _, body = connection.request("GET", "/metrics")
            for outcome, value in _DECISIONS.findall(body):
                counts[outcome.decode()] += int(float(value))
    finally:
        for connection in pinned:
            connection.close()
    return counts


def flood_phase(context: Context, server: Server, token: str) -> tuple[Flood, Counter[str]]:
    """Part 2 on the server with default limits; also the decisions it made meanwhile."""
    url = server.url(FORWARD_PATH)
    connections = connections_of(context.generator) * FLOOD_FACTOR // 2
    keys = bad_keys()
    bad: dict[str, Target] = {kind: (url, from_client(key, CLIENT_B)) for kind, key in keys.items()}
    contest = Flood(
        context.generator,
        with_connections(context.generator, connections),
        (url, from_client(token, CLIENT_A)),
        bad,
        listeners(urlsplit(url).port or 80),
    )
    before = decisions(server)
    contest.run(context.seconds)
    after = decisions(server)
    after.subtract(before)
    return contest, after


def run(context: Context) -> Section:
    context = replace(context, seconds=min(context.seconds, MAX_ROUND_SECONDS))
    with deployed(settings=TRUSTED_PROXY) as deployment:
        plain = ({"label": f"bench key {index:05d}"} for index in range(KEYS - 2))
        (_, token), *_ = seed_keys(deployment, [SCOPED_KEY, *plain])
        good = from_client(token, CLIENT_A)
        with serving(deployment, WORKERS, keys=KEYS) as limited:
            with serving(without_limits(deployment), WORKERS, keys=KEYS) as unlimited:
                allowed = side_by_side(
                    context,
                    ("limits_off", "limits_on"),
                    (unlimited.url(FORWARD_PATH), good),
                    (limited.url(FORWARD_PATH), good),
                )
            flooded, answers = flood_phase(context, limited, token)
    section = Section("limits", f"Abuse limits under load: {KEYS:,} keys, {WORKERS} workers")
    section.tables.append(
        comparison_table(
            f"1. {FORWARD_PATH}, allowed, with the limits at their defaults and off",
            ("limits off (both 0)", "limits at defaults", "on / off"),
            allowed.comparison,
        )
    )
    describe(section, context, allowed, ALLOWED_PATH_TARGET)
    _describe_flood(section, context, flooded, answers)
    return section


def _describe_flood(
    section: Section, context: Context, contest: Flood, answers: Counter[str]
) -> None:
    comparison = contest.comparison
    section.tables.append(
        comparison_table(
            "2. Client A's allowed requests, alone and under client B's flood of bad keys",
            ("A alone", "A under B's flood", "flooded / alone"),
            comparison,
        )
    )
    flooded = contest.flooded
    a_rate = pooled_rate([r.good for r in flooded])
    rows = [
        _flood_row(kind, contest.flood, [r.bad[kind] for r in flooded], a_rate)
        for kind in contest.bad
    ]
    total = contest.bad_rate
    rows.append(["B in all", "", rate(total), "", "", times(total / a_rate)])
    section.tables.append(
        table(
            "3. Client B's flood during the flooded rounds",
            ["B's key", "connections", "req/s", "p50 ms", "p99 ms", "B / A req/s"],
            rows,
        )
    )
    _flood_notes(section, context, contest, answers)


def _flood_row(
    kind: str, generator: LoadGenerator, results: list[LoadResult], a_rate: float
) -> list[str]:
    b_rate = pooled_rate(results)
    return [
        kind,
        str(connections_of(generator)),
        rate(b_rate),
        millis(median([r.p50_ms for r in results])),
        millis(median([r.p99_ms for r in results])),
        times(b_rate / a_rate),
    ]


def _flood_notes(section: Section, context: Context, contest: Flood, answers: Counter[str]) -> None:
    achieved = contest.comparison.ratios()["requests_per_second"]
    verdict = "met" if achieved >= FLOOD_TARGET else "missed"
    section.notes.append(
        f"Target A flooded / A alone ≥ {FLOOD_TARGET:.2f} in req/s: {verdict} ({achieved:.2f})."
    )
    refused = answers["throttled"] + answers["unauthorized"]
    b_requests = sum(r.requests - r.good.requests for r in contest.flooded)
    if refused:
        section.notes.append(
            f"B's flood was answered 429 {answers['throttled']:,} times "
            f"({answers['throttled'] / refused:.2%}) and 401 {answers['unauthorized']:,} times "
            f"({answers['unauthorized'] / refused:.2%}), as both workers' /metrics counted "
            f"(B's load generators counted {b_requests:,} answers); A's requests were "
            f"allowed {answers['allowed']:,} times and refused {answers['forbidden']:,} times."
        )
    alone_cpu = median([r.cpu_seconds / r.requests * 1e6 for r in contest.alone])
    mixed_cpu = median([r.cpu_seconds / r.requests * 1e6 for r in contest.flooded])
    bad_cpu = median(
        [
            (r.cpu_seconds * 1e6 - r.good.requests * alone_cpu) / (r.requests - r.good.requests)
            for r in contest.flooded
        ]
    )
    section.notes.append(
        f"Server CPU per request (both workers, from /proc, medians of the rounds): "
        f"{alone_cpu:.0f} µs per allowed request with A alone, {mixed_cpu:.0f} µs per "
        f"request over A's and B's together when flooded; so each of B's refused requests "
        f"cost about {bad_cpu:.0f} µs (the flooded rounds' CPU less A's requests at the "
        "alone rate)."
    )
    served = median([r.requests / r.seconds for r in contest.flooded])
    a_rate = pooled_rate([r.good for r in contest.flooded])
    share = a_rate / (a_rate + contest.bad_rate)
    a_connections = connections_of(context.generator)
    all_connections = a_connections + connections_of(contest.flood) * len(contest.bad)
    section.notes.append(
        f"In flooded rounds the server answered about {served:,.0f} req/s in all (A and B), "
        f"against {pooled_rate([r.good for r in contest.alone]):,.0f} req/s for A alone; "
        f"A's share of the answers was {share:.1%}, its share of the connections "
        f"{a_connections} / {all_connections} = {a_connections / all_connections:.1%}."
    )
    section.notes.append(
        f"{FLOOD_ROUNDS} rounds alone and {FLOOD_ROUNDS} flooded, in ABBA order, after a "
        f"warm-up; A's load runs {context.seconds:.0f} s ({context.generator.name}); each of "
        f"B's ({contest.flood.name}) from {LEAD:.0f} s before it to {LEAD:.0f} s after; "
        f"all on the same 2 cores as the server. A is {CLIENT_A}, B {CLIENT_B}, both in "
        "X-Forwarded-For from a trusted 127.0.0.1."
    )
    defaults = Settings.model_fields
    section.figures["flood"] = {
        "auth_failures_per_minute": defaults["auth_failures_per_minute"].default,
        "management_writes_per_minute": defaults["management_writes_per_minute"].default,
        "alone": [r.figures() for r in contest.alone],
        "flooded": [r.figures() for r in contest.flooded],
        "alone_requests_per_second": pooled_rate([r.good for r in contest.alone]),
        "flooded_requests_per_second": pooled_rate([r.good for r in contest.flooded]),
        "ratio_flooded_over_alone": contest.comparison.ratios(),
        "target_ratio": FLOOD_TARGET,
        "decisions_during_flood_phase": dict(answers),
        "server_cpu_microseconds_per_request": {
            "alone": alone_cpu,
            "flooded_mixed": mixed_cpu,
            "refused_bad_key_estimate": bad_cpu,
        },
        "bad_connections_each": connections_of(contest.flood),
    }
