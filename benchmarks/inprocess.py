"""``/auth/forward`` called in-process: two keyguard configurations in interleaved batches.

Over HTTP on this shared machine, one round's requests/s, and even its CPU time
per request, vary by tens of per cent with the other work on the cores, so a
difference of a few per cent between two configurations of keyguard needs a
finer instrument. Here both apps are built by ``create_app`` over a memory
store with the same keys, and called directly with the ASGI scope uvicorn
passes for nginx's ``auth_request``, in many short batches in ABBA order, so
both meet the same machine within milliseconds of each other. Everything the
HTTP server does per request is the same for both configurations and is left
out, so over HTTP their ratio can only be closer to 1 than here.
"""

import asyncio
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from pydantic import SecretStr
from starlette.types import ASGIApp, Message, Scope

from benchmarks.forward import judged
from benchmarks.report import Section, micro_text, ranged, ratio_text, table
from benchmarks.stats import median
from keyguard.api.app import create_app
from keyguard.config import Settings
from keyguard.domain.network import Network
from keyguard.runtime import Keyguard

PAIRS = 400
BATCH = 500  # requests per batch: ~10 ms
PEER = ("127.0.0.1", 50_000)


@dataclass(frozen=True, slots=True)
class ForwardApp:
    app: ASGIApp
    token: str  # a key that the benchmark presents
    trusted_proxies: tuple[Network, ...]


def forward_app(
    settings: Mapping[str, Any],
    key: Mapping[str, object],
    keys: int,
    share: ForwardApp | None = None,
) -> ForwardApp:
    """keyguard's app with ``settings``, over a memory store holding ``keys`` keys; ``key``
    is the first of them after the account's own.

    keyguard memoises its judgement of client addresses per trusted-proxy tuple,
    process-wide: a second app with an equal but distinct tuple would pay for
    comparing networks by value on every lookup, which no real worker (one app
    per process) does. So a second app takes the first's tuple (``share``).
    """
    secret = SecretStr(os.urandom(32).hex())
    keyguard = Keyguard(Settings(database_url="memory://", secret_key=secret, **settings))
    if share is not None:
        if keyguard.trusted_proxies != share.trusted_proxies:
            raise ValueError("the apps trust different proxies")
        keyguard.trusted_proxies = share.trusted_proxies
    account, _ = keyguard.service.create_account("bench")
    token = keyguard.service.create_key(account.id, dict(key)).value
    for index in range(keys - 2):
        keyguard.service.create_key(account.id, {"label": f"bench key {index:05d}"})
    return ForwardApp(create_app(keyguard=keyguard), token, keyguard.trusted_proxies)


def http_scope(path: str, headers: Mapping[str, str]) -> Scope:
    """The scope uvicorn passes for a ``GET path`` from 127.0.0.1 with ``headers``."""
    return {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.3"},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": [(b"host", b"127.0.0.1:8080")]
        + [(name.lower().encode(), value.encode()) for name, value in headers.items()],
        "client": PEER,
        "server": ("127.0.0.1", 8080),
    }


async def _receive() -> Message:
    return {"type": "http.request", "body": b"", "more_body": False}


async def time_batch(app: ASGIApp, scope: Scope, requests: int) -> float:
    """µs per request over ``requests`` calls; every answer must be a 200."""
    statuses: list[int] = []

    async def send(message: Message) -> None:
        if message["type"] == "http.response.start":
            statuses.append(message["status"])

    started = time.perf_counter_ns()
    for _ in range(requests):
        await app(dict(scope), _receive, send)
    elapsed = time.perf_counter_ns() - started
    refused = sum(status != 200 for status in statuses)
    if refused or len(statuses) != requests:
        raise RuntimeError(f"{refused} of {requests} in-process requests were refused")
    return elapsed / requests / 1000


@dataclass(frozen=True, slots=True)
class Interleaved:
    """µs per request of each batch, the baseline's and the subject's, pair by pair."""

    baseline: list[float]
    subject: list[float]

    def ratios(self) -> list[float]:
        """Baseline ÷ subject per pair: the subject's rate relative to the baseline's."""
        return [b / s for b, s in zip(self.baseline, self.subject, strict=True)]

    def added_microseconds(self) -> float:
        """What the subject adds per request: the median of the pairs' own differences."""
        return median([s - b for b, s in zip(self.baseline, self.subject, strict=True)])


def interleave(
    baseline: tuple[ASGIApp, Scope], subject: tuple[ASGIApp, Scope], pairs: int = PAIRS
) -> Interleaved:
    """Batches of both in ABBA order after a warm-up of each."""

    async def measure() -> Interleaved:
        for app, scope in (baseline, subject):
            await time_batch(app, scope, BATCH)
        results: tuple[list[float], list[float]] = ([], [])
        for pair in range(pairs):
            for index in (0, 1) if pair % 2 == 0 else (1, 0):
                app, scope = (baseline, subject)[index]
                results[index].append(await time_batch(app, scope, BATCH))
        return Interleaved(*results)

    return asyncio.run(measure())


@dataclass(frozen=True, slots=True)
class Labels:
    """How a section names an in-process comparison: its table, rows and figures."""

    title: str
    column: str  # what the rows differ in
    baseline: str
    subject: str
    ratio: str  # "on / off"
    figures: tuple[str, str, str]  # the figures' names: baseline, subject, ratio rounds


def describe_interleaved(
    section: Section, direct: Interleaved, labels: Labels, target: float, why: str
) -> None:
    """A table of both µs per request and their ratio, a note judging the ratio against
    ``target`` (``why`` ends it), and the raw figures under ``in_process``."""
    ratios = direct.ratios()
    section.tables.append(
        table(
            f"{labels.title}: keyguard's app called directly, {len(ratios)} pairs of "
            f"batches of {BATCH} requests, ABBA",
            [labels.column, "µs per request"],
            [
                [labels.baseline, ranged(direct.baseline, micro_text)],
                [labels.subject, ranged(direct.subject, micro_text)],
                [f"ratio: {labels.ratio}, in rate", ranged(ratios, ratio_text)],
            ],
        )
    )
    section.notes.append(
        f"Target {labels.ratio} ≥ {target:.2f}, in-process: "
        + judged("in rate", ratios, target)
        + f"; {why} {direct.added_microseconds():+.2f} µs per request (the median of the "
        "pairs' differences). Over HTTP the server adds the same work to both, so the "
        "ratio there is closer still to 1."
    )
    baseline, subject, ratio = labels.figures
    section.figures["in_process"] = {
        "pairs": len(ratios),
        "batch": BATCH,
        baseline: direct.baseline,
        subject: direct.subject,
        ratio: ratios,
    }
