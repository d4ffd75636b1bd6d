"""The bounded snapshot at 10,000,000 keys in PostgreSQL, with a working set of 100,000.

A PostgreSQL schema (``KEYGUARD_BENCH_POSTGRES_URL``, default this machine's) gets
one account and ``KEYGUARD_BENCH_BOUNDED_KEYS`` keys (default 10,000,000): all but
USED of them by one ``INSERT … SELECT`` with random digests, as
:mod:`benchmarks.snapshot` fills, and USED keys whose tokens this benchmark
knows, written by the store's own import. In this process a
:class:`~keyguard.workingset.WorkingSet` of WORKING_SET keys then loads (every
digest into the filter) and decides:

- misses: each of WORKING_SET known keys once, so each costs one indexed read;
- hits: the same keys again, now held, in rounds alternating with a full
  :class:`~keyguard.cache.KeyCache` holding the same known keys (in a memory
  store), for the ratio side by side; which of the two goes first alternates
  too, as the first of a pair is measured slower (by some 20 %) whichever it is;
- keys that do not exist: random well-formed tokens, with how many reached the
  store (the filter's false positives).

Memory is this process's resident set: grown by the first load (the filter), and
by the working set once full.
"""

import gc
import os
import random
import time
from dataclasses import asdict, dataclass

from tests.postgres import postgres_schema

from benchmarks.context import Context
from benchmarks.postgres import postgres_server
from benchmarks.report import Section, rate, ratio_text, table
from benchmarks.snapshot import fill, resident
from benchmarks.stats import median
from keyguard.cache import KeyCache, Snapshot
from keyguard.decide import Decider
from keyguard.domain.keys import generate
from keyguard.domain.records import KeySettings
from keyguard.runtime import MANAGEMENT_ROUTES, wavix_route_map
from keyguard.storage import NewKey, Store, open_store
from keyguard.usage import UsageRecorder
from keyguard.vault import Vault
from keyguard.workingset import WorkingSet

KEYS_VARIABLE = "KEYGUARD_BENCH_BOUNDED_KEYS"
KEYS = 10_000_000
WORKING_SET = 100_000
USED = 150_000  # known keys: the working set's, and more to evict it with
STRANGERS = 100_000
ROUNDS = 8
IMPORT_BATCH = 5_000
IP = "198.51.100.7"
ROUTES = wavix_route_map().with_routes(MANAGEMENT_ROUTES)
VAULT = Vault(b"bounded-benchmark-secret-0123456789")


@dataclass(frozen=True, slots=True)
class Bounded:
    keys: int
    fill_seconds: float
    load_seconds: float
    filter_mib: float
    false_positive_rate: float  # the filter's expected, at its count
    load_rss_mib: float  # grown by the first load
    full_rss_mib: float  # grown once the working set is full
    misses_per_second: float
    hits_per_second: float
    full_per_second: float  # a full snapshot's hits, in the same rounds
    hit_ratio: float  # bounded / full time per decision, median of the rounds
    strangers_per_second: float
    stranger_reads: int
    evictions_per_second: float


def import_known(store: Store, account_id: int, tokens: list[str]) -> None:
    for start in range(0, len(tokens), IMPORT_BATCH):
        batch = tokens[start : start + IMPORT_BATCH]
        keys = [NewKey(VAULT.digest(t), b"s", KeySettings("known"), "value") for t in batch]
        store.import_keys(account_id, keys)


def decider(cache: Snapshot, store: Store) -> Decider:
    return Decider(VAULT, cache, ROUTES, UsageRecorder(store))


def timed(judge: Decider, tokens: list[str]) -> float:
    """Seconds per decision over ``tokens``."""
    decide = judge.decide
    started = time.perf_counter()
    for token in tokens:
        decide(token, IP, "GET", "/v1/numbers")
    return (time.perf_counter() - started) / len(tokens)


def measure(url: str, keys: int) -> Bounded:
    store = open_store(url)
    memory = open_store("memory://")
    try:
        store.migrate()
        account, _key = store.create_account("bench", os.urandom(32), b"s", KeySettings(label="k"))
        filled = fill(url, account.id, keys - USED - 1)
        tokens = [generate("kg") for _ in range(USED)]
        import_known(store, account.id, tokens)
        held_account, _key = memory.create_account("bench", os.urandom(32), b"s", KeySettings("k"))
        import_known(memory, held_account.id, tokens)
        gc.collect()
        before = resident()
        cache = WorkingSet(store, WORKING_SET)
        started = time.perf_counter()
        cache.refresh()
        load_seconds = time.perf_counter() - started
        gc.collect()
        loaded = resident()
        bounded = decider(cache, store)
        working = tokens[:WORKING_SET]
        miss = timed(bounded, working)
        gc.collect()
        full_rss = resident()
        full = KeyCache(memory)
        full.refresh()
        reference = decider(full, memory)
        shuffled = random.Random(7).sample(working, len(working))
        hits, fulls = [], []
        for round_ in range(ROUNDS):  # which goes first alternates: the first of a pair pays more
            if round_ % 2:
                fulls.append(timed(reference, shuffled))
                hits.append(timed(bounded, shuffled))
            else:
                hits.append(timed(bounded, shuffled))
                fulls.append(timed(reference, shuffled))
        reads = cache.reads
        strangers = [generate("kg") for _ in range(STRANGERS)]
        stranger = timed(bounded, strangers)
        stranger_reads = cache.reads - reads
        evicting = tokens[WORKING_SET:]
        eviction = timed(bounded, evicting)
        return Bounded(
            keys=keys,
            fill_seconds=filled,
            load_seconds=load_seconds,
            filter_mib=cache.filter.size / 2**20,
            false_positive_rate=cache.filter.false_positive_rate,
            load_rss_mib=(loaded - before) / 2**20,
            full_rss_mib=(full_rss - before) / 2**20,
            misses_per_second=1 / miss,
            hits_per_second=1 / median(hits),
            full_per_second=1 / median(fulls),
            hit_ratio=median([h / f for h, f in zip(hits, fulls, strict=True)]),
            strangers_per_second=1 / stranger,
            stranger_reads=stranger_reads,
            evictions_per_second=1 / eviction,
        )
    finally:
        store.close()


def run(context: Context) -> Section:  # noqa: ARG001
    keys = int(os.environ.get(KEYS_VARIABLE, KEYS))
    with postgres_schema(postgres_server(), "kg_bounded") as url:
        result = measure(url, keys)
    section = Section(
        "bounded", f"A bounded snapshot: {keys:,} keys in PostgreSQL, {WORKING_SET:,} held"
    )
    section.tables.append(
        table(
            "1. Decisions in one process, by what the key is",
            ["decisions of", "per second", "note"],
            [
                [
                    "held keys (hits)",
                    rate(result.hits_per_second),
                    f"{ratio_text(result.hit_ratio)} of a full snapshot's time "
                    f"({rate(result.full_per_second)}/s, same rounds)",
                ],
                [
                    "keys not held (misses)",
                    rate(result.misses_per_second),
                    "one indexed read each, then held",
                ],
                [
                    "keys not held, evicting",
                    rate(result.evictions_per_second),
                    "a full working set: each read evicts one",
                ],
                [
                    "tokens of no key",
                    rate(result.strangers_per_second),
                    f"{result.stranger_reads} of {STRANGERS:,} reached the store",
                ],
            ],
        )
    )
    section.tables.append(
        table(
            "2. Start and memory of one worker",
            [
                "first load s",
                "filter MiB",
                "filter false positives",
                "RSS after load MiB",
                "RSS, working set full MiB",
            ],
            [
                [
                    f"{result.load_seconds:.1f}",
                    f"{result.filter_mib:.1f}",
                    f"{result.false_positive_rate:.2%}",
                    f"{result.load_rss_mib:.0f}",
                    f"{result.full_rss_mib:.0f}",
                ]
            ],
        )
    )
    section.notes.append(
        f"Keys inserted in {result.fill_seconds:.0f} s. RSS is growth over the process "
        "before the first load. Hits: median of "
        f"{ROUNDS} rounds of {WORKING_SET:,} decisions, alternating with the full snapshot."
    )
    section.figures.update(asdict(result))
    return section
