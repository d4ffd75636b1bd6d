"""``last_used_at`` and per-key request counts, coalesced.

A decision only notes the time, and counts its outcome, in dicts; a background
thread writes the notes in batched statements per interval. So the hot path never
waits on the database, and the store sees at most one write per key per interval.
The database lags by at most one interval (plus the duration of a flush); this
process's own answers overlay the ``last_used_at`` notes it has not flushed yet.
"""

import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime

from keyguard.domain.counts import Outcome
from keyguard.storage import Store

__all__ = ["Outcome", "UsageRecorder"]


class UsageRecorder:
    """Notes key use in memory and flushes it to the store."""

    def __init__(
        self, store: Store, clock: Callable[[], float] = time.time, settle: float = 0.0
    ) -> None:
        self._store = store
        self._clock = clock
        # Across processes, a key is written at most once per ``settle`` seconds: a
        # process that saw it within that time of the stored value writes nothing.
        self._settle = settle
        self._lock = threading.Lock()
        self._pending: dict[int, int] = {}
        self._flushing: dict[int, int] = {}
        # The last batch written. A management answer may read its key from a
        # transaction that began before that write committed: until the next flush,
        # this process still answers with the uses it wrote.
        self._flushed: dict[int, int] = {}
        # key id -> [account id, a count per Outcome], since the last flush.
        self._counts: dict[int, list[int]] = {}

    def touch(self, key_id: int, account_id: int) -> None:
        """Note an allowed request: the key's last use, and one more allowed."""
        now = int(self._clock())
        with self._lock:  # a count must not land in a batch that is being written
            self._pending[key_id] = now
            counts = self._counts.get(key_id)
            if counts is None:
                counts = self._counts[key_id] = [account_id, 0, 0, 0, 0, 0]
            counts[1] += 1

    def count(self, key_id: int, account_id: int, outcome: Outcome) -> None:
        """Count a refused request of a known key."""
        with self._lock:
            counts = self._counts.get(key_id)
            if counts is None:
                counts = self._counts[key_id] = [account_id, 0, 0, 0, 0, 0]
            counts[outcome + 1] += 1

    def latest(self, key_id: int) -> datetime | None:
        """The newest use this process has noted but perhaps not yet flushed."""
        seconds = (
            self._pending.get(key_id) or self._flushing.get(key_id) or self._flushed.get(key_id)
        )
        return None if seconds is None else datetime.fromtimestamp(seconds, UTC)

    @property
    def backlog(self) -> int:
        return len(self._pending)

    def flush(self) -> int:
        """Write pending uses and counts; on failure keep them for the next flush."""
        with self._lock:
            self._flushing, self._pending = self._pending, {}
            counts, self._counts = self._counts, {}
        try:
            self._write_counts(counts)
        finally:
            written = self._write_uses()
        return written

    def _write_counts(self, counts: dict[int, list[int]]) -> None:
        if not counts:
            return
        try:
            self._store.record_counts(counts, datetime.fromtimestamp(self._clock(), UTC))
        except Exception:
            with self._lock:  # counted again at the next flush, added to what came since
                for key_id, added in counts.items():
                    held = self._counts.setdefault(key_id, [added[0], 0, 0, 0, 0, 0])
                    for column in range(1, len(added)):
                        held[column] += added[column]
            raise

    def _write_uses(self) -> int:
        batch = self._flushing
        if not batch:
            return 0
        try:
            self._store.record_usage(
                {key_id: datetime.fromtimestamp(when, UTC) for key_id, when in batch.items()},
                self._settle,
            )
        except Exception:
            with self._lock:
                for key_id, when in batch.items():
                    self._pending[key_id] = max(when, self._pending.get(key_id, 0))
            self._flushing = {}
            raise
        self._flushed, self._flushing = batch, {}
        return len(batch)
