"""The hot path in-process: ``Decider.decide`` over 1,000 and 1,000,000 keys, warm and spread.

Two keyguards are composed as ``keyguard serve`` composes one (:class:`Keyguard`,
its metrics and abuse limits included) over a memory store, and their snapshots
are filled directly with :meth:`KeyCache.put`: one holds 1,000 keys, the other
the same 1,000 plus 999,000 more. Keys come in three kinds, a third each: full
access; scoped (messages: write, numbers: read, calls: write); and scoped and
IP-restricted to an allow-list of four entries (three ranges and an IPv6
range), the client in the last one, so every entry is checked.

Every timed call is an allowed decision (the run checks the outcome counters),
in two patterns:

- warm: ``POST /v3/messages`` from one address, the key cycling over the 1,000
  keys' of its kind (~333), in both snapshots: the snapshot's entries, the route
  memo and the allowed decisions stay in the CPU caches.
- spread: each call a key not presented for a long time (every key of its kind
  in turn, in a shuffled order: ~333 in the small snapshot, 100,000 in the
  large one), a route of the key's scopes with an id never seen before (so the
  route memo always misses and the path is split and matched), and a client
  address that varies inside the allowed range: the CPU caches and the memo are
  cold, as on a server with many active keys.

Expiry costs a decision one clock read for keys that have one: a third keyguard
holds the 1,000 keys again, each expiring in 2099, and the warm pattern runs on it
too; its figures beside the same keys without an expiry are the check's cost. A
rate limit is measured the same way: a fourth keyguard holds the 1,000 keys with
a limit they never reach (each decision counts one request in its key's window),
and a fifth with that limit and credits too (each decision also spends one credit
from the key's lease, which holds more than a run spends).

A round's requests are built just before it is timed, as an HTTP parser would
have just built them. Rounds alternate the cases, including keyguard's own
HMAC-SHA256 digest of the warm keys, which every decision computes: its cost is
the floor. Figures are medians over the rounds of the mean cost per call in each
round, with the rounds' range beside them; ratios are medians of each round's
own ratio.
"""

import gc
import os
import random
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from functools import partial
from typing import Any

from pydantic import SecretStr

from benchmarks.context import Context
from benchmarks.report import Section, table, times
from benchmarks.stats import median, median_interval
from keyguard.config import Settings
from keyguard.domain.credits import CreditGrant
from keyguard.domain.keys import ALPHABET, BODY_LENGTH, checksum
from keyguard.domain.ratelimit import MAX_LIMIT, RateLimit
from keyguard.domain.records import KeySettings, StoredKey
from keyguard.domain.scopes import Level
from keyguard.runtime import Keyguard

SMALL, LARGE = 1_000, 1_000_000
SPREAD_PER_KIND = 100_000  # keys of each kind the large snapshot's spread case presents
CALLS = 10_000  # per case and round
ROUNDS = 21  # short rounds, many: the medians' 95 % intervals narrow
TARGET_MICROSECONDS = 3.0
TARGET_SCALING = 1.2  # large ÷ small
TARGET_EXPIRY_MICROSECONDS = 0.2  # what an expiry may add to a decision
FAR_EXPIRY = datetime(2099, 1, 1, tzinfo=UTC)
TARGET_RATELIMIT_MICROSECONDS = 0.5  # what a rate limit may add to a decision
NEVER_REACHED = RateLimit(MAX_LIMIT, 3600)
# Keys as the warm pattern finds them in each keyguard: plain, or with one more setting.
TARGET_METERED_MICROSECONDS = 0.5  # what a rate limit and credits together may add
CREDITS = 10**12  # never spent in a run: each key's lease holds them all
VARIANTS: dict[str, dict[str, Any]] = {
    "expiring": {"expires_at": FAR_EXPIRY},
    "limited": {"ratelimit": NEVER_REACHED},
    "metered": {"ratelimit": NEVER_REACHED, "remaining": CREDITS},
}
TARGETS = {
    "expiring": TARGET_EXPIRY_MICROSECONDS,
    "limited": TARGET_RATELIMIT_MICROSECONDS,
    "metered": TARGET_METERED_MICROSECONDS,
}

WARM_IP, WARM_METHOD, WARM_PATH = "198.51.100.7", "POST", "/v3/messages"
CLIENT_NETWORK = "198.51.100."  # spread clients: .1 to .254, all inside the last entry
ALLOW_LIST = ("203.0.113.0/24", "2001:db8::/32", "192.0.2.0/28", "198.51.100.0/24")
SCOPES = {"messages": Level.WRITE, "numbers": Level.READ, "calls": Level.WRITE}
SPREAD_ROUTES = (  # every one allowed to the scoped keys; "{}" is a fresh id per call
    ("GET", "/v3/messages/{}"),
    ("DELETE", "/v3/messages/sender-ids/{}"),
    ("GET", "/v1/numbers/{}"),
    ("POST", "/v1/calls/{}/play"),
    ("GET", "/v1/cdrs/{}/transcription"),
)
KINDS = {
    "full": KeySettings(label="full access"),
    "scoped": KeySettings(label="scoped", scopes_enabled=True, scopes=SCOPES),
    "restricted": KeySettings(
        label="scoped, restricted",
        scopes_enabled=True,
        scopes=SCOPES,
        restricted=True,
        permitted_ips=ALLOW_LIST,
    ),
}
KIND_NAMES = tuple(KINDS)  # key number i is of kind KIND_NAMES[i % 3]
SIZES = {"small": SMALL, "large": LARGE}

Call = tuple[str, str, str, str]  # token, client address, method, path


def make_tokens(count: int) -> list[str]:
    """Well-formed keyguard tokens (random bodies; the checksum is keyguard's own)."""
    chooser = random.Random(7)
    tokens = []
    for _ in range(count):
        head = "kg_" + "".join(chooser.choices(ALPHABET, k=BODY_LENGTH))
        tokens.append(head + checksum(head))
    return tokens


def compose(secret: str) -> Keyguard:
    """A keyguard as ``serve`` builds one, over a memory store; nothing started."""
    return Keyguard(Settings(database_url="memory://", secret_key=SecretStr(secret)))


def fill(keyguard: Keyguard, tokens: list[str], size: int, variant: str | None = None) -> None:
    """Put ``size`` keys in the snapshot: ``tokens`` first, then random digests.

    The cyclic collector is paused meanwhile, as it would rescan the growing
    snapshot again and again; the keys themselves are the same.
    """
    created = datetime.now(UTC)
    digest = keyguard.vault.digest
    kinds = KINDS
    if variant is not None:
        kinds = {name: replace(kind, **VARIANTS[variant]) for name, kind in KINDS.items()}
    gc.disable()
    try:
        for index in range(size):
            key_digest = digest(tokens[index]) if index < len(tokens) else os.urandom(32)
            key = StoredKey(
                id=index + 1,
                account_id=1 + index // 1_000,
                digest=key_digest,
                sealed_value=b"",
                settings=kinds[KIND_NAMES[index % len(KINDS)]],
                created_at=created,
                revision=index + 1,
            )
            keyguard.cache.put(key)
            if key.settings.remaining is not None:  # a lease of every credit, as if leased
                cached = keyguard.cache.by_id(key.id)
                assert cached is not None
                keyguard.credits.hold(cached, CreditGrant(CREDITS, 0, 0, 0), time.time())
    finally:
        gc.enable()


def resident_bytes() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


@dataclass(frozen=True, slots=True)
class Snapshot:
    keys: int
    build_seconds: float
    resident_bytes: int  # growth of this process's RSS while building it

    @property
    def bytes_per_key(self) -> float:
        return self.resident_bytes / self.keys


def build(
    secret: str, tokens: list[str], size: int, variant: str | None = None
) -> tuple[Keyguard, Snapshot]:
    keyguard = compose(secret)
    before = resident_bytes()
    started = time.perf_counter()
    fill(keyguard, tokens, size, variant)
    elapsed = time.perf_counter() - started
    return keyguard, Snapshot(size, elapsed, resident_bytes() - before)


def of_kind(tokens: Sequence[str], kind: str) -> list[str]:
    return list(tokens[KIND_NAMES.index(kind) :: len(KINDS)])


def warm_calls(pool: list[str]) -> list[Call]:
    """CALLS calls of the warm pattern, the keys of ``pool`` in turn."""
    call = [(token, WARM_IP, WARM_METHOD, WARM_PATH) for token in pool]
    return (call * (CALLS // len(call) + 1))[:CALLS]


@dataclass(slots=True)
class Spread:
    """Calls of the spread pattern: every key of ``pool`` in turn, in a shuffled order."""

    pool: list[str]
    chooser: random.Random
    position: int = 0
    order: list[str] = field(init=False)

    def __post_init__(self) -> None:
        self.order = self.chooser.sample(self.pool, len(self.pool))

    def calls(self) -> list[Call]:
        tokens = [self.order[(self.position + n) % len(self.order)] for n in range(CALLS)]
        self.position = (self.position + CALLS) % len(self.order)
        choose, bits = self.chooser.choice, self.chooser.getrandbits
        batch = []
        for token in tokens:
            method, template = choose(SPREAD_ROUTES)
            path = template.format(uuid.UUID(int=bits(128)))
            batch.append((token, f"{CLIENT_NETWORK}{bits(8) % 254 + 1}", method, path))
        return batch


def time_decide(keyguard: Keyguard, batch: list[Call]) -> float:
    """Mean µs per call over ``batch``; every call must have been allowed."""
    decide, outcomes = keyguard.decider.decide, keyguard.decider.outcomes
    allowed = outcomes[200]
    started = time.perf_counter_ns()
    for token, ip, method, path in batch:
        decide(token, ip, method, path)
    elapsed = time.perf_counter_ns() - started
    if outcomes[200] - allowed != len(batch):
        raise RuntimeError(f"{len(batch) - outcomes[200] + allowed} timed calls were refused")
    return elapsed / len(batch) / 1000


def time_spread(keyguard: Keyguard, spread: Spread) -> float:
    return time_decide(keyguard, spread.calls())  # the calls are built before the clock starts


def time_digest(digest: Callable[[str], bytes], batch: list[Call]) -> float:
    started = time.perf_counter_ns()
    for token, _, _, _ in batch:
        digest(token)
    return (time.perf_counter_ns() - started) / len(batch) / 1000


def cases(keyguards: dict[str, Keyguard], tokens: list[str]) -> dict[str, Callable[[], float]]:
    """Every case by name (``warm_scoped_large``, …, ``digest``): each call times one round."""
    chooser = random.Random(3)
    found: dict[str, Callable[[], float]] = {}
    for kind in KIND_NAMES:
        warm = warm_calls(of_kind(tokens[:SMALL], kind))
        pools = {"small": tokens[:SMALL], "large": tokens[: len(KINDS) * SPREAD_PER_KIND]}
        for size in SIZES:
            keyguard = keyguards[size]
            spread = Spread(of_kind(pools[size], kind), random.Random(chooser.random()))
            found[f"warm_{kind}_{size}"] = partial(time_decide, keyguard, warm)
            found[f"spread_{kind}_{size}"] = partial(time_spread, keyguard, spread)
        for variant in VARIANTS:
            found[f"warm_{kind}_{variant}"] = partial(time_decide, keyguards[variant], warm)
    digest_batch = warm_calls(tokens[:SMALL])
    found["digest"] = partial(time_digest, keyguards["small"].vault.digest, digest_batch)
    return found


def measure(keyguards: dict[str, Keyguard], tokens: list[str]) -> dict[str, list[float]]:
    """µs per call of every case, one figure per round."""
    timed = cases(keyguards, tokens)
    for case in timed.values():  # warm-up
        case()
    rounds: dict[str, list[float]] = {name: [] for name in timed}
    names = list(timed)
    for round_ in range(ROUNDS):
        # Each round starts with another case, so no case always runs first.
        shift = round_ * len(names) // ROUNDS
        for name in names[shift:] + names[:shift]:
            rounds[name].append(timed[name]())
    return rounds


def run(context: Context) -> Section:  # noqa: ARG001
    secret = os.urandom(32).hex()
    tokens = make_tokens(len(KINDS) * SPREAD_PER_KIND)
    small, _ = build(secret, tokens, SMALL)
    expiring, _ = build(secret, tokens, SMALL, "expiring")
    limited, _ = build(secret, tokens, SMALL, "limited")
    metered, _ = build(secret, tokens, SMALL, "metered")
    large, snapshot = build(secret, tokens, LARGE)
    keyguards = {
        "small": small,
        "large": large,
        "expiring": expiring,
        "limited": limited,
        "metered": metered,
    }
    rounds = measure(keyguards, tokens)
    section = Section(
        "decide", "Decider.decide in-process: 1,000 vs 1,000,000 keys, warm and spread"
    )
    _describe(section, rounds, snapshot)
    return section


def _ratio(rounds: dict[str, list[float]], top: str, bottom: str) -> float:
    """The median of the rounds' own ratios: both figures of a round ran side by side."""
    return median([a / b for a, b in zip(rounds[top], rounds[bottom], strict=True)])


def _spread(values: list[float]) -> str:
    return f"{median(values):.2f} ({min(values):.2f}-{max(values):.2f})"


KIND_LABELS = {"full": "full access", "scoped": "scoped", "restricted": "scoped, allow-list"}


def _verdict(rounds: dict[str, list[float]], case: str) -> tuple[str, str]:
    """Whether ``case`` met both targets, judged on 95 % intervals of the medians; why."""
    ratios = [
        large / small
        for large, small in zip(rounds[f"{case}_large"], rounds[f"{case}_small"], strict=True)
    ]
    verdicts = [
        median_interval(rounds[f"{case}_{size}"]).verdict(TARGET_MICROSECONDS, at_least=False)
        for size in SIZES
    ]
    verdicts.append(median_interval(ratios).verdict(TARGET_SCALING, at_least=False))
    for verdict in ("missed", "not settled"):
        if verdict in verdicts:
            worst = max(median(rounds[f"{case}_{size}"]) for size in SIZES)
            return verdict, f"{case} {verdict} ({worst:.2f} µs, 1M/1k {median(ratios):.2f})"
    return "met", ""


def _describe(section: Section, rounds: dict[str, list[float]], snapshot: Snapshot) -> None:
    us = {name: median(values) for name, values in rounds.items()}
    missed: list[str] = []
    rows = []
    for pattern in ("warm", "spread"):
        for kind in KIND_NAMES:
            case = f"{pattern}_{kind}"
            verdict, why = _verdict(rounds, case)
            if why:
                missed.append(why)
            rows.append(
                [
                    f"{pattern}, {KIND_LABELS[kind]}",
                    _spread(rounds[f"{case}_small"]),
                    _spread(rounds[f"{case}_large"]),
                    times(_ratio(rounds, f"{case}_large", f"{case}_small")),
                    times(_ratio(rounds, f"{case}_large", "digest")),
                    verdict,
                ]
            )
    rows.append(["digest alone (HMAC-SHA256)", _spread(rounds["digest"]), "", "", "", ""])
    for variant, target in TARGETS.items():
        for kind in KIND_NAMES:
            case = f"warm_{kind}"
            added = [
                with_it - plain
                for with_it, plain in zip(
                    rounds[f"{case}_{variant}"], rounds[f"{case}_small"], strict=True
                )
            ]
            verdict = median_interval(added).verdict(target, at_least=False)
            if verdict != "met":
                missed.append(f"{case} {variant} {verdict} ({median(added):+.2f} µs)")
            rows.append(
                [
                    f"warm, {KIND_LABELS[kind]}, {variant}",
                    f"{_spread(rounds[f'{case}_{variant}'])}, {median(added):+.2f}",
                    "",
                    "",
                    "",
                    verdict,
                ]
            )
    section.tables.append(
        table(
            f"1. µs per allowed decision, median (range) of {ROUNDS} rounds of {CALLS:,} calls",
            ["case, key", "1k keys", "1M keys", "1M/1k", "1M/digest", "target"],
            rows,
        )
    )
    section.tables.append(
        table(
            f"2. The snapshot of {snapshot.keys:,} keys, built in-process with KeyCache.put",
            ["keys", "build s", "µs per key", "RSS growth MiB", "bytes per key"],
            [
                [
                    f"{snapshot.keys:,}",
                    f"{snapshot.build_seconds:.1f}",
                    f"{snapshot.build_seconds / snapshot.keys * 1e6:.2f}",
                    f"{snapshot.resident_bytes / 2**20:,.0f}",
                    f"{snapshot.bytes_per_key:,.0f}",
                ]
            ],
        )
    )
    section.notes.append(
        f"Targets: ≤ {TARGET_MICROSECONDS:.1f} µs per decision and 1M / 1k ≤ "
        f"{TARGET_SCALING:.1f} for every case, an expiry adding ≤ "
        f"{TARGET_EXPIRY_MICROSECONDS:.1f} µs and a rate limit (never reached) "
        f"≤ {TARGET_RATELIMIT_MICROSECONDS:.1f} µs, beside the same keys without, "
        "judged on the 95 % interval of each median "
        "(met or missed when the whole interval is on one side): "
        + ("met." if not missed else "; ".join(missed) + ".")
    )
    section.notes.append(
        f"Kinds, a third of the keys each: full access; scoped ({_scopes()}); scoped and "
        f"restricted to {', '.join(ALLOW_LIST)}, the client in the last entry. Warm: "
        f"{WARM_METHOD} {WARM_PATH} from {WARM_IP}, the 1k snapshot's keys of the kind in turn "
        f"(present in both snapshots). Spread: {SPREAD_PER_KIND:,} keys of the kind in turn in "
        f"the 1M snapshot (all ~333 in the 1k one), each call one of {len(SPREAD_ROUTES)} "
        "routes with a fresh id (the route memo never hits) from an address in "
        f"{CLIENT_NETWORK}0/24. Every timed decision was allowed (checked from the counters)."
    )
    section.notes.append(
        "Memory: growth of this process's resident set while the snapshot was built with the "
        "cyclic collector paused; the benchmark 'memory' measures what a real worker holds."
    )
    section.figures.update(
        {
            "warm_request": {"ip": WARM_IP, "method": WARM_METHOD, "path": WARM_PATH},
            "spread_routes": [f"{method} {path}" for method, path in SPREAD_ROUTES],
            "allow_list": list(ALLOW_LIST),
            "calls_per_round": CALLS,
            "spread_keys_per_kind": SPREAD_PER_KIND,
            "microseconds_per_call": {
                name: {"median": us[name], "rounds": rounds[name]} for name in rounds
            },
            "ratio_large_over_small": {
                f"{pattern}_{kind}": _ratio(
                    rounds, f"{pattern}_{kind}_large", f"{pattern}_{kind}_small"
                )
                for pattern in ("warm", "spread")
                for kind in KIND_NAMES
            },
            "missed": missed,
            "snapshot": {
                "keys": snapshot.keys,
                "build_seconds": snapshot.build_seconds,
                "resident_bytes": snapshot.resident_bytes,
                "bytes_per_key": snapshot.bytes_per_key,
            },
            "targets": {
                "microseconds": TARGET_MICROSECONDS,
                "ratio_large_over_small": TARGET_SCALING,
            },
        }
    )


def _scopes() -> str:
    return ", ".join(f"{group}: {level.label}" for group, level in SCOPES.items())
