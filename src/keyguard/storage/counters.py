"""Where processes share their rate-limit counts: Redis, the database, or memory.

Each process publishes, per slot (a key, its limit's duration and a window's
index), the total it admitted there and the total it may reach before its next
sync (its claim), and reads back the sums over every process.
Publishing a total rather than adding a difference makes a repeated or lost
sync harmless. A process that published within :data:`LIVE_FOR` seconds is live;
the live processes share what a limit has left (:mod:`keyguard.metering`).
"""

import threading
import time
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Protocol

from sqlalchemy import Engine, delete, func, select, tuple_

from keyguard.errors import ConfigurationError
from keyguard.storage.tables import ratelimit_counts as _counts
from keyguard.storage.tables import ratelimit_processes as _processes

Slot = tuple[int, int, int]  # key id, duration, window index
Pair = tuple[int, int]  # admitted, claimed
Sums = tuple[int, int, int]  # admitted, claimed, by how many processes
LIVE_FOR = 3.0  # seconds
_CLEAN_EVERY = 50  # exchanges between deletions of old rows


class Counters(Protocol):
    """The shared counts of every process."""

    def exchange(
        self, process: str, published: Mapping[Slot, Pair], wanted: Sequence[Slot]
    ) -> tuple[dict[Slot, Sums], list[str]]:
        """Store ``process``'s (admitted, claimed) per slot, note it as live, and return
        per ``wanted`` slot the sums over every process and how many published there
        (absent: none did), and the live processes, sorted."""

    def close(self) -> None: ...


def _sum(pairs: Iterable[Pair]) -> Sums:
    admitted = claimed = processes = 0
    for one, other in pairs:
        admitted, claimed, processes = admitted + one, claimed + other, processes + 1
    return admitted, claimed, processes


class MemoryCounters:
    """Counters shared by meters in one process: for tests and ``memory://``."""

    def __init__(self, clock: Any = time.time) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._counts: dict[Slot, dict[str, Pair]] = {}
        self._seen: dict[str, float] = {}

    def exchange(
        self, process: str, published: Mapping[Slot, Pair], wanted: Sequence[Slot]
    ) -> tuple[dict[Slot, Sums], list[str]]:
        with self._lock:
            now = self._clock()
            self._seen[process] = now
            for slot, total in published.items():
                self._counts.setdefault(slot, {})[process] = total
            totals = {slot: _sum(self._counts.get(slot, {}).values()) for slot in wanted}
            live = sorted(name for name, seen in self._seen.items() if now - seen <= LIVE_FOR)
        return totals, live

    def close(self) -> None:
        pass


class SQLCounters:
    """Counters in keyguard's database: one upsert per sync and process."""

    def __init__(self, engine: Engine, clock: Any = time.time) -> None:
        self._engine = engine
        self._clock = clock
        self._exchanges = 0

    def exchange(
        self, process: str, published: Mapping[Slot, Pair], wanted: Sequence[Slot]
    ) -> tuple[dict[Slot, Sums], list[str]]:
        now = self._clock()
        insert = _upsert_for(self._engine.dialect.name)
        with self._engine.connect() as connection:
            connection = connection.execution_options(keyguard_write=True)
            with connection.begin():
                rows = [
                    {
                        "key_id": k,
                        "duration": d,
                        "window": i,
                        "process": process,
                        "admitted": admitted,
                        "claimed": claimed,
                    }
                    for (k, d, i), (admitted, claimed) in sorted(published.items())
                ]
                if rows:
                    statement = insert(_counts)
                    connection.execute(
                        statement.on_conflict_do_update(
                            index_elements=["key_id", "duration", "window", "process"],
                            set_={
                                "admitted": statement.excluded.admitted,
                                "claimed": statement.excluded.claimed,
                            },
                        ),
                        rows,
                    )
                statement = insert(_processes).values(process=process, seen_at=now)
                connection.execute(
                    statement.on_conflict_do_update(
                        index_elements=["process"], set_={"seen_at": statement.excluded.seen_at}
                    )
                )
                totals: dict[Slot, Sums] = {}
                if wanted:
                    slot = tuple_(_counts.c.key_id, _counts.c.duration, _counts.c.window)
                    query = (
                        select(
                            _counts.c.key_id,
                            _counts.c.duration,
                            _counts.c.window,
                            func.sum(_counts.c.admitted),
                            func.sum(_counts.c.claimed),
                            func.count(),
                        )
                        .where(slot.in_(list(set(wanted))))
                        .group_by(_counts.c.key_id, _counts.c.duration, _counts.c.window)
                    )
                    for key_id, duration, window, *sums in connection.execute(query):
                        admitted, claimed, processes = (int(value) for value in sums)
                        totals[key_id, duration, window] = (admitted, claimed, processes)
                live = connection.execute(
                    select(_processes.c.process)
                    .where(_processes.c.seen_at >= now - LIVE_FOR)
                    .order_by(_processes.c.process)
                ).scalars()
                members = list(live)
                self._exchanges += 1
                if self._exchanges % _CLEAN_EVERY == 0:
                    self._clean(connection, now)
        return totals, members

    def _clean(self, connection: Any, now: float) -> None:
        connection.execute(delete(_counts).where((_counts.c.window + 3) * _counts.c.duration < now))
        connection.execute(delete(_processes).where(_processes.c.seen_at < now - 60))

    def close(self) -> None:
        pass


def _upsert_for(dialect: str) -> Any:
    if dialect == "postgresql":
        from sqlalchemy.dialects.postgresql import insert as postgresql_insert

        return postgresql_insert
    from sqlalchemy.dialects.sqlite import insert as sqlite_insert

    return sqlite_insert


class RedisCounters:
    """Counters in Redis: one pipelined round trip per sync and process.

    A slot is a hash of process -> total that expires a few windows after its
    own; the live processes are a sorted set scored by when each was seen.
    """

    def __init__(self, url: str, prefix: str = "keyguard:", clock: Any = time.time) -> None:
        import redis

        try:
            # Short timeouts: the sync thread must notice an outage, never hang on it.
            self._client = redis.Redis.from_url(url, socket_timeout=0.5, socket_connect_timeout=0.5)
        except ValueError as error:
            raise ConfigurationError(f"Invalid KEYGUARD_REDIS_URL: {error}") from None
        self._prefix = prefix
        self._clock = clock

    def _slot(self, slot: Slot) -> str:
        key_id, duration, index = slot
        return f"{self._prefix}rl:{key_id}:{duration}:{index}"

    def exchange(
        self, process: str, published: Mapping[Slot, Pair], wanted: Sequence[Slot]
    ) -> tuple[dict[Slot, Sums], list[str]]:
        now = self._clock()
        members = f"{self._prefix}rl:processes"
        pipe = self._client.pipeline(transaction=False)
        for slot, (admitted, claimed) in published.items():
            name = self._slot(slot)
            pipe.hset(name, process, f"{admitted}:{claimed}")
            pipe.expire(name, 3 * slot[1] + 10)
        pipe.zadd(members, {process: now})
        pipe.zremrangebyscore(members, "-inf", now - LIVE_FOR)
        pipe.zrange(members, 0, -1)
        for slot in wanted:
            pipe.hvals(self._slot(slot))
        replies = pipe.execute()
        tail = replies[2 * len(published) + 2 :]
        live = sorted(name.decode() for name in tail[0])
        totals = {
            slot: _sum(_pair(value) for value in values)
            for slot, values in zip(wanted, tail[1:], strict=True)
        }
        return totals, live

    def close(self) -> None:
        self._client.close()


def _pair(value: bytes) -> Pair:
    admitted, _, claimed = value.partition(b":")
    return int(admitted), int(claimed or admitted)


def open_counters(store: object, redis_url: str | None, prefix: str) -> Counters | None:
    """Redis when ``redis_url`` is set, else the store's database; ``None`` for a
    store in memory, whose keys no other process shares."""
    if redis_url:
        return RedisCounters(redis_url, prefix)
    engine = getattr(store, "engine", None)
    return SQLCounters(engine) if isinstance(engine, Engine) else None


__all__ = [
    "Counters",
    "MemoryCounters",
    "RedisCounters",
    "SQLCounters",
    "Slot",
    "open_counters",
]
