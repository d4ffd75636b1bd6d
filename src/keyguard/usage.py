"""``last_used_at``, coalesced.

A decision only notes the time in a dict; a background thread writes the notes
in one batched statement per interval. So the hot path never waits on the
database, and the store sees at most one write per key per interval. The
database value lags by at most one interval (plus the duration of a flush);
this process's own answers overlay the notes it has not flushed yet.
"""

import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime

from keyguard.storage import Store


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

    def touch(self, key_id: int) -> None:
        now = int(self._clock())
        # Most uses repeat a time already noted; those skip the lock. If a flush
        # takes the dict just after this read, it writes that same time anyway.
        if self._pending.get(key_id) != now:
            with self._lock:
                self._pending[key_id] = now

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
        """Write pending uses; on failure keep them for the next flush."""
        with self._lock:
            self._flushing, self._pending = self._pending, {}
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
