"""Forward auth under load: keyguard's ``/auth/forward`` beside a bare "hello" ASGI app.

``keyguard serve --workers 2`` holds 1,000 keys; the load asks, as nginx's
``auth_request`` would, whether a key scoped to ``messages: write`` may make
``POST /v3/messages``, and every answer is an allowed 200. :mod:`benchmarks.hello`
runs under the same uvicorn with the options ``keyguard serve`` gives it, and
receives the very same requests. The two are loaded in alternating rounds, so
the ratio keyguard / hello is what keyguard adds to the server it runs in.
"""

from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import asdict, dataclass

from pydantic import SecretStr
from rich.table import Table

from benchmarks.context import Context
from benchmarks.load import Comparison, LoadResult, Target, compare, pooled_rate
from benchmarks.report import Section, micros, millis, ranged, rate, ratio_text, table
from benchmarks.server import Deployment, Server, deployed, running_asgi, serving
from benchmarks.stats import median, median_interval
from benchmarks.workers import WatchedLoad
from keyguard.config import Settings
from keyguard.runtime import Keyguard

WORKERS = 2
KEYS = 1_000  # in the snapshot, the account's first key included
ROUNDS = 9  # enough for a 95 % interval of the median that leaves out the extreme rounds
ROUND_SECONDS = 3.0  # at most; --seconds may ask for less
FORWARD_PATH = "/auth/forward"
METHOD, URI = "POST", "/v3/messages"
SCOPED_KEY = {"label": "bench messages", "scopes_enabled": True, "messages": {"allow": "write"}}
TARGET_RATIO = 0.8


def seed_keys(
    deployment: Deployment, bodies: Iterable[Mapping[str, object]]
) -> list[tuple[int, str]]:
    """Create keys in the deployment's database, before any server runs; their ids and secrets.

    Through keyguard's own service, as ``keyguard keys create`` does, but in this
    process: one HTTP call or one CLI process per key would take far longer.
    """
    settings = Settings(
        database_url=deployment.database_url, secret_key=SecretStr(deployment.secret_key)
    )
    keyguard = Keyguard(settings)
    account = deployment.tenant.account_id
    try:
        views = [keyguard.service.create_key(account, dict(body)) for body in bodies]
    finally:
        keyguard.store.close()
    return [(view.key.id, view.value) for view in views]


def forward_headers(token: str) -> dict[str, str]:
    """What nginx's ``auth_request`` sends for a ``POST /v3/messages`` carrying ``token``."""
    return {"Authorization": f"Bearer {token}", "X-Original-Method": METHOD, "X-Original-URI": URI}


@contextmanager
def keyguard_forward() -> Iterator[tuple[Server, Target]]:
    """``keyguard serve --workers 2`` with KEYS keys, and the forward-auth request to load."""
    with deployed() as deployment:
        plain = ({"label": f"bench key {index:05d}"} for index in range(KEYS - 2))
        (_, token), *_ = seed_keys(deployment, [SCOPED_KEY, *plain])
        with serving(deployment, WORKERS, keys=KEYS) as server:
            yield server, (server.url(FORWARD_PATH), forward_headers(token))


@dataclass(frozen=True, slots=True)
class Contest:
    """Two targets loaded in alternating rounds, and how the rounds went."""

    names: tuple[str, str]  # the baseline's and the subject's, as the JSON names them
    urls: tuple[str, str]
    load: WatchedLoad
    comparison: Comparison
    rounds: int  # of each target, after a warm-up
    seconds: float  # per round

    def results(self, name: str) -> list[LoadResult]:
        comparison = self.comparison
        return comparison.baseline if name == self.names[0] else comparison.subject

    def rates(self, name: str) -> list[float]:
        return [r.requests_per_second for r in self.results(name)]

    def cpu(self, name: str) -> list[float]:
        """The server's CPU µs per request in each measured round (the warm-up left out)."""
        url = self.urls[self.names.index(name)]
        values = [r.cpu_microseconds_per_request for r in self.load.rounds.get(url, [])[1:]]
        return [value for value in values if value is not None]

    def client_cores(self, name: str) -> list[float]:
        return [c for r in self.results(name) if (c := r.client_cores) is not None]

    def rate_ratios(self) -> list[float]:
        """Subject ÷ baseline requests/s, one per round: both ran side by side."""
        baseline, subject = self.names
        return [s / b for s, b in zip(self.rates(subject), self.rates(baseline), strict=True)]

    def cpu_ratios(self) -> list[float]:
        """Baseline ÷ subject server CPU per request, one per round: the subject's rate
        relative to the baseline's if the server's own CPU were all that bounded both."""
        baseline, subject = self.names
        return [b / s for s, b in zip(self.cpu(subject), self.cpu(baseline), strict=True)]


def side_by_side(
    context: Context,
    names: tuple[str, str],
    baseline: Target,
    subject: Target,
    rounds: int = ROUNDS,
    seconds: float | None = None,
) -> Contest:
    load = WatchedLoad(context.generator)
    seconds = seconds or context.seconds
    comparison = compare(load, baseline, subject, seconds, rounds)
    return Contest(names, (baseline[0], subject[0]), load, comparison, rounds, seconds)


def contest_table(title: str, labels: tuple[str, str, str], contest: Contest) -> Table:
    """Both targets, req/s and server CPU per request, median (range) of the rounds; the
    ratio row compares rates, measured and as the CPU per request would bound them."""

    def row(label: str, name: str) -> list[str]:
        results = contest.results(name)
        cores = contest.client_cores(name)
        return [
            label,
            ranged(contest.rates(name), rate),
            ranged(contest.cpu(name), micros),
            f"{median(cores):.0%}" if cores else "?",
            millis(median([r.p50_ms for r in results])),
            millis(median([r.p99_ms for r in results])),
        ]

    baseline, subject, ratio = labels
    cpu_ratios = contest.cpu_ratios()
    return table(
        title,
        ["target", "req/s", "server CPU µs/req", "wrk CPU", "p50 ms", "p99 ms"],
        [
            row(baseline, contest.names[0]),
            row(subject, contest.names[1]),
            [
                f"ratio: {ratio}",
                ranged(contest.rate_ratios(), ratio_text),
                ranged(cpu_ratios, ratio_text) if cpu_ratios else "?",
                "",
                "",
                "",
            ],
        ],
    )


def judged(measure: str, ratios: list[float], target: float) -> str:
    """``in req/s: met (0.97; 95 % interval of the median 0.95-0.99, 10 rounds)``."""
    if not ratios:
        return f"{measure}: not measured"
    interval = median_interval(ratios)
    return (
        f"{measure} {interval.verdict(target)} ({median(ratios):.2f}; "
        f"{interval.confidence:.0%} interval of the median {interval.low:.2f}-"
        f"{interval.high:.2f}, {len(ratios)} rounds)"
    )


def describe(
    section: Section,
    context: Context,
    contest: Contest,
    target: float | None,
) -> None:
    """Notes and figures for a contest: the target, the method, how the load spread."""
    baseline, subject = contest.names
    comparison = contest.comparison
    cpu_ratios = contest.cpu_ratios()
    if target is not None:
        section.notes.append(
            f"Target {subject} / {baseline} ≥ {target:.2f}: "
            + judged("in req/s", contest.rate_ratios(), target)
            + "; "
            + judged("by server CPU per request", cpu_ratios, target)
            + "."
        )
    if cpu_ratios:
        base_cpu, subject_cpu = median(contest.cpu(baseline)), median(contest.cpu(subject))
        section.notes.append(
            f"Server CPU per request (all of the server's processes, from /proc): {baseline} "
            f"{base_cpu:.0f} µs, {subject} {subject_cpu:.0f} µs, {subject_cpu - base_cpu:+.0f} "
            f"µs. A server bound by its own CPU would serve {subject} at "
            f"{median(cpu_ratios):.2f} of {baseline}'s rate (each round's {baseline} CPU "
            f"÷ {subject} CPU, median; the ratio row's CPU column): a figure that the other work "
            "on the machine and the load generator disturb less than req/s."
        )
    cores = {name: contest.client_cores(name) for name in contest.names}
    if all(cores.values()):
        shown = ", ".join(f"{name} {median(c):.0%}" for name, c in cores.items())
        section.notes.append(
            f"The load generator's own CPU, in cores (median of the rounds): {shown}. Near 100 %, "
            "the one wrk thread, not the server, sets the rate."
        )
    section.notes.append(
        f"{contest.rounds} alternating rounds (ABBA) of {contest.seconds:.0f} s each after a "
        f"warm-up, {context.generator.name}, on the same 2 cores as the servers, a machine "
        "shared with other work; figures are medians of the rounds with their range, ratios "
        "the median (range) of each round's own ratio."
    )
    urls = dict(zip(contest.names, contest.urls, strict=True))
    spreads = "; ".join(f"{name} {contest.load.spreads(url)}" for name, url in urls.items())
    section.notes.append(
        "Connections per worker, warm-up first (the first worker to wake accepts most, by "
        f"chance): {spreads}."
    )
    failures = sum(r.failures for r in [*comparison.baseline, *comparison.subject])
    if failures:
        section.notes.append(f"{failures:,} requests failed or were refused under load.")
    section.figures.update(
        {
            "keys": KEYS,
            "workers": WORKERS,
            "rounds": contest.rounds,
            "rounds_seconds": contest.seconds,
            "load_generator": context.generator.name,
            baseline: [r.figures() for r in comparison.baseline],
            subject: [r.figures() for r in comparison.subject],
            f"{baseline}_requests_per_second": pooled_rate(comparison.baseline),
            f"{subject}_requests_per_second": pooled_rate(comparison.subject),
            f"ratio_{subject}_over_{baseline}": {
                **comparison.ratios(),
                "requests_per_second_rounds": contest.rate_ratios(),
                "server_cpu_per_request_rounds": cpu_ratios,
            },
            "target_ratio": target,
            "server_cpu_microseconds_per_request_rounds": {
                name: contest.cpu(name) for name in contest.names
            },
            "load_generator_cores_rounds": cores,
            "server_rounds": {
                name: [asdict(r) for r in contest.load.rounds.get(url, [])]
                for name, url in urls.items()
            },
        }
    )


def run(context: Context) -> Section:
    with (
        keyguard_forward() as (_, keyguard),
        running_asgi("benchmarks.hello:app", WORKERS) as hello_url,
    ):
        hello: Target = (hello_url + FORWARD_PATH, keyguard[1])
        seconds = min(context.seconds, ROUND_SECONDS)
        contest = side_by_side(context, ("hello", "keyguard"), hello, keyguard, ROUNDS, seconds)
    section = Section("forward", f"Forward auth under load: {KEYS:,} keys, {WORKERS} workers")
    section.tables.append(
        contest_table(
            f"1. GET {FORWARD_PATH} for {METHOD} {URI} against a bare hello, same uvicorn",
            ("hello (raw ASGI)", "keyguard", "keyguard / hello"),
            contest,
        )
    )
    describe(section, context, contest, TARGET_RATIO)
    section.figures["request"] = {"method": METHOD, "uri": URI, "key": "scoped, messages: write"}
    return section
