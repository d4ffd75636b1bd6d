"""The hot path in-process: ``Decider.decide`` on a cache hit, over 1,000 and 1,000,000 keys.

Two keyguards are composed as ``keyguard serve`` composes one (:class:`Keyguard`,
its metrics and abuse limits included) over a memory store, and their snapshots
are filled directly with :meth:`KeyCache.put`: one holds 1,000 keys, the other
the same 1,000 plus 999,000 more. Half the keys have full access, half only
``messages: write``. Every call is ``POST /v3/messages`` from one address, with
the presented key cycling over distinct keys, all in both snapshots, so each
call is a hit on a different entry; one more case draws each call's key from
100,000 keys of the large snapshot, where the CPU caches help less.

Rounds alternate the cases, including keyguard's own HMAC-SHA256 digest of the
same keys, which every decision computes: its cost is the floor. Figures are
medians over the rounds of the mean cost per call in each round.
"""

import gc
import os
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

from pydantic import SecretStr

from benchmarks.context import Context
from benchmarks.report import Section, table, times
from benchmarks.stats import median
from keyguard.config import Settings
from keyguard.domain.keys import ALPHABET, BODY_LENGTH, checksum
from keyguard.domain.records import KeySettings, StoredKey
from keyguard.domain.scopes import Level
from keyguard.runtime import Keyguard

SMALL, LARGE = 1_000, 1_000_000
PRESENTED = 1_000  # distinct keys presented in turn, half of each kind, in both snapshots
SPREAD = 100_000  # distinct keys presented in the spread case, large snapshot only
CALLS = 20_000  # per case and round
ROUNDS = 9
IP, METHOD, PATH = "198.51.100.7", "POST", "/v3/messages"
TARGET_MICROSECONDS = 3.0
TARGET_SCALING = 1.2  # large ÷ small

FULL_ACCESS = KeySettings(label="full access")
SCOPED = KeySettings(label="messages", scopes_enabled=True, scopes={"messages": Level.WRITE})


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


def fill(keyguard: Keyguard, tokens: list[str], size: int) -> None:
    """Put ``size`` keys in the snapshot: ``tokens`` first (even: scoped), then random digests.

    The cyclic collector is paused meanwhile, as it would rescan the growing
    snapshot again and again; the keys themselves are the same.
    """
    created = datetime.now(UTC)
    digest = keyguard.vault.digest
    gc.disable()
    try:
        for index in range(size):
            key_digest = digest(tokens[index]) if index < len(tokens) else os.urandom(32)
            settings = SCOPED if index % 2 == 0 else FULL_ACCESS
            keyguard.cache.put(
                StoredKey(
                    id=index + 1,
                    account_id=1 + index // 1_000,
                    digest=key_digest,
                    sealed_value=b"",
                    settings=settings,
                    created_at=created,
                    revision=index + 1,
                )
            )
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


def build(secret: str, tokens: list[str], size: int) -> tuple[Keyguard, Snapshot]:
    keyguard = compose(secret)
    before = resident_bytes()
    started = time.perf_counter()
    fill(keyguard, tokens, size)
    elapsed = time.perf_counter() - started
    return keyguard, Snapshot(size, elapsed, resident_bytes() - before)


def time_decide(decide: Callable[[str, str, str, str], object], batch: list[str]) -> float:
    """Mean µs per call over ``batch`` (the loop's own ~0.02 µs included)."""
    started = time.perf_counter_ns()
    for token in batch:
        decide(token, IP, METHOD, PATH)
    return (time.perf_counter_ns() - started) / len(batch) / 1000


def time_digest(digest: Callable[[str], bytes], batch: list[str]) -> float:
    started = time.perf_counter_ns()
    for token in batch:
        digest(token)
    return (time.perf_counter_ns() - started) / len(batch) / 1000


def cycle(pool: list[str]) -> list[str]:
    return (pool * (CALLS // len(pool) + 1))[:CALLS]


def measure(small: Keyguard, large: Keyguard, tokens: list[str]) -> dict[str, list[float]]:
    """µs per call of every case, one figure per round."""
    scoped, full = tokens[0:PRESENTED:2], tokens[1:PRESENTED:2]
    for keyguard in (small, large):
        for token in (scoped[0], full[0]):
            decision = keyguard.decider.decide(token, IP, METHOD, PATH)
            if not decision.allowed:
                raise RuntimeError(f"the benchmark's key was refused: {decision.message}")
    # A fresh sample of distinct keys each round (and for the warm-up), drawn beforehand.
    chooser = random.Random(3)
    spread = iter([chooser.sample(tokens[:SPREAD], CALLS) for _ in range(ROUNDS + 1)])
    cases: dict[str, Callable[[], float]] = {
        "full_small": lambda: time_decide(small.decider.decide, cycle(full)),
        "full_large": lambda: time_decide(large.decider.decide, cycle(full)),
        "scoped_small": lambda: time_decide(small.decider.decide, cycle(scoped)),
        "scoped_large": lambda: time_decide(large.decider.decide, cycle(scoped)),
        "spread_large": lambda: time_decide(large.decider.decide, next(spread)),
        "digest": lambda: time_digest(small.vault.digest, cycle(tokens[:PRESENTED])),
    }
    for case in cases.values():  # warm-up
        case()
    rounds: dict[str, list[float]] = {name: [] for name in cases}
    names = list(cases)
    for round_ in range(ROUNDS):
        # Each round starts with another case, so no case always runs first.
        shift = round_ % len(names)
        for name in names[shift:] + names[:shift]:
            rounds[name].append(cases[name]())
    return rounds


def run(context: Context) -> Section:  # noqa: ARG001
    secret = os.urandom(32).hex()
    tokens = make_tokens(SPREAD)
    small, _ = build(secret, tokens[:SMALL], SMALL)
    large, snapshot = build(secret, tokens, LARGE)
    rounds = measure(small, large, tokens)
    section = Section("decide", "Decider.decide in-process: a cache hit, 1,000 vs 1,000,000 keys")
    _describe(section, rounds, snapshot)
    return section


def _ratio(rounds: dict[str, list[float]], top: str, bottom: str) -> float:
    """The median of the rounds' own ratios: both figures of a round ran side by side."""
    return median([a / b for a, b in zip(rounds[top], rounds[bottom], strict=True)])


def _describe(section: Section, rounds: dict[str, list[float]], snapshot: Snapshot) -> None:
    us = {name: median(values) for name, values in rounds.items()}

    def row(label: str, kind: str) -> list[str]:
        return [
            label,
            f"{us[f'{kind}_small']:.2f}",
            f"{us[f'{kind}_large']:.2f}",
            times(_ratio(rounds, f"{kind}_large", f"{kind}_small")),
            times(_ratio(rounds, f"{kind}_small", "digest")),
            times(_ratio(rounds, f"{kind}_large", "digest")),
        ]

    section.tables.append(
        table(
            f"1. µs per call, {METHOD} {PATH}, median of {ROUNDS} rounds of {CALLS:,} calls",
            ["key presented", "1k keys", "1M keys", "1M/1k", "1k/digest", "1M/digest"],
            [
                row("full access", "full"),
                row("scoped (messages)", "scoped"),
                [
                    f"any of {SPREAD // 1000}k keys",
                    "",
                    f"{us['spread_large']:.2f}",
                    "",
                    "",
                    times(_ratio(rounds, "spread_large", "digest")),
                ],
                ["digest alone", f"{us['digest']:.2f}", "", "", "", ""],
            ],
        )
    )
    section.tables.append(
        table(
            f"2. The snapshot of {snapshot.keys:,} keys, built with KeyCache.put",
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
    worst = max(us[f"{kind}_{size}"] for kind in ("full", "scoped") for size in ("small", "large"))
    scaling = max(_ratio(rounds, f"{kind}_large", f"{kind}_small") for kind in ("full", "scoped"))
    section.notes.append(
        f"Target ≤ {TARGET_MICROSECONDS:.1f} µs per decision: "
        f"{'met' if worst <= TARGET_MICROSECONDS else 'missed'} (slowest {worst:.2f} µs). "
        f"Target 1M / 1k ≤ {TARGET_SCALING:.1f}: "
        f"{'met' if scaling <= TARGET_SCALING else 'missed'} (largest {scaling:.2f})."
    )
    section.notes.append(
        f"Keys presented in turn: {PRESENTED // 2:,} distinct keys of each kind, in both "
        f"snapshots; ratios are medians of each round's own ratio. The spread row presents "
        f"{CALLS:,} distinct keys a round, drawn from {SPREAD:,} keys of the large snapshot, "
        "so most lookups miss the CPU caches."
    )
    section.notes.append(
        "digest alone: Vault.digest, the HMAC-SHA256 of the key that every decision computes "
        "before its lookup, over the same keys."
    )
    section.notes.append(
        "Memory: growth of this process's resident set while the snapshot was built, "
        "divided by its keys (digest, parsed key, scope levels, the two dicts that index them)."
    )
    section.figures.update(
        {
            "request": {"ip": IP, "method": METHOD, "path": PATH},
            "calls_per_round": CALLS,
            "presented_keys": PRESENTED,
            "spread_keys": SPREAD,
            "microseconds_per_call": {
                name: {"median": us[name], "rounds": rounds[name]} for name in rounds
            },
            "ratio_large_over_small": {
                kind: _ratio(rounds, f"{kind}_large", f"{kind}_small")
                for kind in ("full", "scoped")
            },
            "ratio_over_digest": {
                name: _ratio(rounds, name, "digest") for name in rounds if name != "digest"
            },
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
