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

from benchmarks.context import Context
from benchmarks.load import Comparison, Target, compare, pooled_rate
from benchmarks.report import Section, comparison_table
from benchmarks.server import Deployment, Server, deployed, running_asgi, serving
from benchmarks.workers import WatchedLoad
from keyguard.config import Settings
from keyguard.runtime import Keyguard

WORKERS = 2
KEYS = 1_000  # in the snapshot, the account's first key included
ROUNDS = 3
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
    env = deployment.env
    settings = Settings(
        database_url=env["KEYGUARD_DATABASE_URL"],
        secret_key=SecretStr(env["KEYGUARD_SECRET_KEY"]),
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


def side_by_side(
    context: Context, names: tuple[str, str], baseline: Target, subject: Target
) -> Contest:
    load = WatchedLoad(context.generator)
    comparison = compare(load, baseline, subject, context.seconds, ROUNDS)
    return Contest(names, (baseline[0], subject[0]), load, comparison)


def describe(section: Section, context: Context, contest: Contest, target: float | None) -> None:
    """Notes and figures for a contest: the target, the method, how the load spread."""
    baseline, subject = contest.names
    comparison = contest.comparison
    achieved = comparison.ratios()["requests_per_second"]
    if target is not None:
        verdict = "met" if achieved >= target else "missed"
        section.notes.append(
            f"Target {subject} / {baseline} ≥ {target:.2f} in req/s: {verdict} ({achieved:.2f})."
        )
    section.notes.append(
        f"{ROUNDS} alternating rounds of {context.seconds:.0f} s each after a warm-up, "
        f"{context.generator.name}, on the same 2 cores as the servers; req/s pools the "
        "rounds, p50 and p99 are medians of the rounds, ratios medians of each round's ratio."
    )
    urls = dict(zip(contest.names, contest.urls, strict=True))
    cpu = {name: contest.load.cpu_per_request(url) for name, url in urls.items()}
    base_cpu, subject_cpu = cpu[baseline], cpu[subject]
    if base_cpu is not None and subject_cpu is not None:
        section.notes.append(
            f"Server CPU per request (all workers, from /proc, median of the rounds): "
            f"{baseline} {base_cpu:.0f} µs, {subject} {subject_cpu:.0f} µs, "
            f"a difference of {subject_cpu - base_cpu:+.0f} µs."
        )
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
            "rounds": ROUNDS,
            "rounds_seconds": context.seconds,
            "load_generator": context.generator.name,
            baseline: [r.figures() for r in comparison.baseline],
            subject: [r.figures() for r in comparison.subject],
            f"{baseline}_requests_per_second": pooled_rate(comparison.baseline),
            f"{subject}_requests_per_second": pooled_rate(comparison.subject),
            f"ratio_{subject}_over_{baseline}": comparison.ratios(),
            "target_ratio": target,
            "server_cpu_microseconds_per_request": cpu,
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
        contest = side_by_side(context, ("hello", "keyguard"), hello, keyguard)
    section = Section("forward", f"Forward auth under load: {KEYS:,} keys, {WORKERS} workers")
    section.tables.append(
        comparison_table(
            f"1. GET {FORWARD_PATH} for {METHOD} {URI} against a bare hello, same uvicorn",
            ("hello, raw ASGI", "keyguard /auth/forward", "keyguard / hello"),
            contest.comparison,
        )
    )
    describe(section, context, contest, TARGET_RATIO)
    section.figures["request"] = {"method": METHOD, "uri": URI, "key": "scoped, messages: write"}
    return section
