"""What the abuse limits cost: on the allowed path, and under a flood of bad keys.

``keyguard serve --workers 2`` holds forward's 1,000 keys and believes
``X-Forwarded-For`` from 127.0.0.1, as it would behind nginx, so load generators on
this machine can play any client address. Client A presents the scoped key for
``POST /v3/messages`` and is always allowed.

1. The allowed path. Two servers on one database, one with the limits at their
   defaults and one with both limits off (0), take A's requests in alternating
   rounds, as :func:`benchmarks.forward.side_by_side` loads any two targets:
   ALLOWED_ROUNDS short rounds each, judged by the median of the rounds'
   ratios and its 95 % interval, in requests/s and in the servers' CPU time
   per request. On a shared machine that interval is often wider than the 5 %
   the target allows, so the same two configurations are also called
   in-process (:mod:`benchmarks.inprocess`), hundreds of short batches in ABBA
   order: keyguard's own part of each request, where any cost of the limits
   lies, measured closely enough to judge the target.
2. A flood, measured open loop. A's capacity is part 1's closed-loop rate
   with the limits on. A paced client (:mod:`benchmarks.paced`) then sends A's
   request at PACED_SHARE of that rate on a fixed schedule, whatever the
   answers, and times each request from the moment it was due: alone, and
   while client B floods the server with bad keys from two closed-loop load
   generators, one presenting a well-formed key that no account holds and one a
   mistyped key (its checksum fails). Alone and flooded rounds alternate, alone
   first; the flood starts LEAD seconds before A's schedule and stops LEAD
   seconds after it. Limits are at their defaults. The targets: every one of
   A's requests answered 200 under the flood, and its p99 at most P99_TARGET
   times its p99 alone. How the flood was answered is read from every worker's
   ``/metrics``.

   Two closed loops against each other would measure each one's share of the
   connections; a paced client asks whether good traffic at a sustainable rate
   still gets through, and how much later.
"""

import re
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from urllib.parse import urlsplit

from tests.server import NO_LIMITS

from benchmarks.context import Context
from benchmarks.forward import (
    FORWARD_PATH,
    KEYS,
    SCOPED_KEY,
    WORKERS,
    contest_table,
    describe,
    forward_headers,
    seed_keys,
    side_by_side,
)
from benchmarks.inprocess import (
    Interleaved,
    Labels,
    describe_interleaved,
    forward_app,
    http_scope,
    interleave,
)
from benchmarks.load import (
    HttpxLoad,
    LoadGenerator,
    LoadResult,
    Target,
    Wrk,
    pooled_rate,
)
from benchmarks.paced import PacedClient, PacedResult
from benchmarks.propagation import pin_workers
from benchmarks.report import (
    Section,
    millis,
    rate,
    table,
    times,
)
from benchmarks.server import Deployment, Server, deployed, serving
from benchmarks.stats import median
from benchmarks.workers import cpu_seconds, listeners
from keyguard.config import Settings
from keyguard.domain.keys import generate

TRUSTED_PROXY = {"KEYGUARD_TRUSTED_PROXIES": "127.0.0.1"}
CLIENT_A, CLIENT_B = "203.0.113.10", "198.51.100.20"  # documentation addresses
MAX_ROUND_SECONDS = 5.0  # keeps the whole benchmark near 70 s whatever --seconds says
FLOOD_FACTOR = 10  # B's connections in all, per connection of the closed-loop generator's
FLOOD_ROUNDS = 2  # of each kind: alone, flooded, flooded, alone
LEAD = 1.0  # seconds of flood before and after A's load, so it covers all of it
WARMUP = 1.0
ALLOWED_PATH_TARGET = 0.95  # limits on / limits off, A's req/s
ALLOWED_ROUNDS = 10  # of each server in part 1
ALLOWED_ROUND_SECONDS = 3.0
PACED_SHARE = 0.25  # of A's closed-loop capacity, A's paced rate in part 2
SUCCESS_TARGET = 1.0  # A's paced requests answered 200 under the flood
P99_TARGET = 3.0  # at most: A's p99 under the flood ÷ its p99 alone
_DECISIONS = re.compile(rb'keyguard_decisions_total\{outcome="(\w+)",pid="\d+"\} (\S+)')


def without_limits(deployment: Deployment) -> Deployment:
    """The same database, served with both abuse limits off."""
    return replace(deployment, settings={**deployment.settings, **NO_LIMITS})


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
    """A's paced requests in one round, B's flood beside them if any, the server's CPU time."""

    good: PacedResult
    bad: dict[str, LoadResult]  # by kind of bad key; empty when A was alone
    cpu_seconds: float  # both workers, over the whole round

    @property
    def requests(self) -> int:
        answered = self.good.succeeded + self.good.refused
        return answered + sum(r.requests for r in self.bad.values())

    def figures(self) -> dict[str, object]:
        return {
            "good": self.good.figures(),
            "bad": {kind: r.figures() for kind, r in self.bad.items()},
            "server_cpu_seconds": self.cpu_seconds,
        }


@dataclass(slots=True)
class Flood:
    """A's paced requests, and B's closed-loop flood to run beside them."""

    paced: PacedClient  # A's
    flood: LoadGenerator  # each of B's
    good: Target
    bad: dict[str, Target]
    pids: set[int]  # the server's workers
    alone: list[Round] = field(default_factory=list)
    flooded: list[Round] = field(default_factory=list)

    def run(self, seconds: float) -> None:
        """A warm-up of A's paced requests, then alone and flooded rounds in ABBA order."""
        self.paced.run(*self.good, WARMUP)
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
            good = self.paced.run(*self.good, seconds)
            answered = {kind: future.result() for kind, future in floods.items()}
        return Round(good, answered, cpu_seconds(self.pids) - before)

    @property
    def bad_rate(self) -> float:
        """B's requests per second in all, each load generator's pooled over the rounds."""
        return sum(pooled_rate([r.bad[kind] for r in self.flooded]) for kind in self.bad)

    def success_rate(self, rounds: list[Round]) -> float:
        return sum(r.good.succeeded for r in rounds) / sum(r.good.due for r in rounds)

    @property
    def p99_ratio(self) -> float:
        """A's p99 flooded ÷ alone: the median of the ABBA pairs' own ratios."""
        pairs = zip(self.flooded, self.alone, strict=True)
        return median([f.good.p99_ms / a.good.p99_ms for f, a in pairs])


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


def flood_phase(
    context: Context, server: Server, token: str, capacity: float
) -> tuple[Flood, Counter[str]]:
    """Part 2 on the server with default limits; also the decisions it made meanwhile."""
    url = server.url(FORWARD_PATH)
    connections = connections_of(context.generator) * FLOOD_FACTOR // 2
    keys = bad_keys()
    bad: dict[str, Target] = {kind: (url, from_client(key, CLIENT_B)) for kind, key in keys.items()}
    contest = Flood(
        PacedClient(capacity * PACED_SHARE),
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
                    ALLOWED_ROUNDS,
                    ALLOWED_ROUND_SECONDS,
                )
            capacity = pooled_rate(allowed.comparison.subject)
            flooded, answers = flood_phase(context, limited, token, capacity)
    direct = in_process()
    section = Section("limits", f"Abuse limits under load: {KEYS:,} keys, {WORKERS} workers")
    section.tables.append(
        contest_table(
            f"1. {FORWARD_PATH}, allowed, with the limits at their defaults and off",
            ("limits off (both 0)", "limits at defaults", "on / off"),
            allowed,
        )
    )
    describe(section, context, allowed, ALLOWED_PATH_TARGET)
    _describe_in_process(section, direct)
    _describe_flood(section, context, flooded, answers, capacity)
    return section


def in_process() -> Interleaved:
    """Part 1 again without HTTP: keyguard's app with the limits off, then at their defaults."""
    settings = {"trusted_proxies": ["127.0.0.1"]}
    off = {**settings, "auth_failures_per_minute": 0, "management_writes_per_minute": 0}
    first = forward_app(off, SCOPED_KEY, KEYS)
    second = forward_app(settings, SCOPED_KEY, KEYS, share=first)
    apps = [
        (f.app, http_scope(FORWARD_PATH, from_client(f.token, CLIENT_A))) for f in (first, second)
    ]
    return interleave(apps[0], apps[1])


IN_PROCESS = Labels(
    "1b. The same, in-process",
    "limits",
    "off (both 0)",
    "at defaults",
    "limits on / off",
    ("microseconds_limits_off", "microseconds_limits_on", "ratio_on_over_off_rounds"),
)


def _describe_in_process(section: Section, direct: Interleaved) -> None:
    describe_interleaved(section, direct, IN_PROCESS, ALLOWED_PATH_TARGET, "the limits add")


def _describe_flood(
    section: Section, context: Context, contest: Flood, answers: Counter[str], capacity: float
) -> None:
    paced = contest.paced
    section.tables.append(
        table(
            f"2. Client A paced at {paced.rate:,.0f} req/s ({PACED_SHARE:.0%} of its "
            f"{capacity:,.0f} req/s closed-loop capacity), alone and under client B's flood "
            "of bad keys",
            ["A", "due", "answered 200", "p50 ms", "p99 ms", "max ms", "client lag p99 ms"],
            [
                _paced_row("alone", contest.alone, contest),
                _paced_row("under B's flood", contest.flooded, contest),
                ["ratio: flooded / alone", "", "", "", times(contest.p99_ratio), "", ""],
            ],
        )
    )
    rows = [
        _flood_row(kind, contest.flood, [r.bad[kind] for r in contest.flooded], paced.rate)
        for kind in contest.bad
    ]
    total = contest.bad_rate
    rows.append(["B in all", "", rate(total), "", "", times(total / paced.rate)])
    section.tables.append(
        table(
            "3. Client B's flood during the flooded rounds",
            ["B's key", "connections", "req/s", "p50 ms", "p99 ms", "B / A req/s"],
            rows,
        )
    )
    _flood_notes(section, context, contest, answers, capacity)


def _paced_row(name: str, rounds: list[Round], contest: Flood) -> list[str]:
    results = [r.good for r in rounds]
    return [
        name,
        f"{sum(r.due for r in results):,}",
        f"{contest.success_rate(rounds):.2%}",
        millis(median([r.p50_ms for r in results])),
        millis(median([r.p99_ms for r in results])),
        millis(max(r.max_ms for r in results)),
        millis(median([r.lag_p99_ms for r in results])),
    ]


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


def _flood_notes(
    section: Section, context: Context, contest: Flood, answers: Counter[str], capacity: float
) -> None:
    success = contest.success_rate(contest.flooded)
    ratio = contest.p99_ratio
    succeeded = sum(r.good.succeeded for r in contest.flooded)
    due = sum(r.good.due for r in contest.flooded)
    section.notes.append(
        f"Target: every one of A's paced requests answered 200 under the flood: "
        f"{'met' if success >= SUCCESS_TARGET else 'missed'} ({succeeded:,} of {due:,})."
    )
    section.notes.append(
        f"Target: A's p99 under the flood ≤ {P99_TARGET:.0f}x its p99 alone: "
        f"{'met' if ratio <= P99_TARGET else 'missed'} ({ratio:.2f}x)."
    )
    refused = answers["throttled"] + answers["unauthorized"]
    if refused:
        section.notes.append(
            f"B's flood was answered 429 {answers['throttled']:,} times "
            f"({answers['throttled'] / refused:.2%}) and 401 {answers['unauthorized']:,} times "
            f"({answers['unauthorized'] / refused:.2%}), as both workers' /metrics counted; "
            f"A's requests were allowed {answers['allowed']:,} times and refused "
            f"{answers['forbidden']:,} times."
        )
    alone_cpu = median([r.cpu_seconds / r.requests * 1e6 for r in contest.alone])
    bad_cpu = median(
        [
            (r.cpu_seconds * 1e6 - (r.requests - _bad_requests(r)) * alone_cpu) / _bad_requests(r)
            for r in contest.flooded
        ]
    )
    section.notes.append(
        f"Server CPU per request (both workers, from /proc, medians of the rounds): "
        f"{alone_cpu:.0f} µs per request of A's alone; each of B's refused requests cost "
        f"about {bad_cpu:.0f} µs (the flooded rounds' CPU less A's requests at the alone rate)."
    )
    niceness = max(r.good.niceness for r in [*contest.alone, *contest.flooded])
    section.notes.append(
        f"Open loop: A's capacity is part 1's closed-loop rate with the limits on; A's "
        f"requests are then sent on a fixed schedule at {PACED_SHARE:.0%} of it, whatever the "
        f"answers ({contest.paced.name}, in a process of its own at nice {niceness}), and each "
        "is timed from the moment it was due, so waiting in the client's queue counts too "
        "(the client-lag column is the client's own part; its first connections answer once, "
        f"uncounted, before the schedule starts). {FLOOD_ROUNDS} rounds alone and "
        f"{FLOOD_ROUNDS} flooded, in ABBA order, after a warm-up; A's schedule runs "
        f"{context.seconds:.0f} s; each of B's closed-loop generators ({contest.flood.name}) "
        f"from {LEAD:.0f} s before it to {LEAD:.0f} s after. All on the same 2 cores as the "
        "server: B's generators and A's client take CPU the server would otherwise have. "
        f"A is {CLIENT_A} with a valid key, B {CLIENT_B}, both in X-Forwarded-For from a trusted "
        "127.0.0.1."
    )
    defaults = Settings.model_fields
    section.figures["flood"] = {
        "auth_failures_per_minute": defaults["auth_failures_per_minute"].default,
        "capacity_requests_per_second": capacity,
        "paced_requests_per_second": contest.paced.rate,
        "alone": [r.figures() for r in contest.alone],
        "flooded": [r.figures() for r in contest.flooded],
        "success_rate_alone": contest.success_rate(contest.alone),
        "success_rate_flooded": success,
        "p99_ratio_flooded_over_alone": ratio,
        "targets": {"success_rate": SUCCESS_TARGET, "p99_ratio_at_most": P99_TARGET},
        "bad_requests_per_second": contest.bad_rate,
        "bad_connections_each": connections_of(contest.flood),
        "decisions_during_flood_phase": dict(answers),
        "server_cpu_microseconds_per_request": {
            "alone": alone_cpu,
            "refused_bad_key_estimate": bad_cpu,
        },
    }


def _bad_requests(round_: Round) -> int:
    return sum(r.requests for r in round_.bad.values())
