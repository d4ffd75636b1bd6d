"""Following a read replica: how far the key snapshot is behind the primary.

With ``KEYGUARD_DATABASE_READ_URL`` the snapshot reads its change feed from a
PostgreSQL streaming replica. A standby cannot LISTEN, so the snapshot polls
it every refresh interval: a change reaches decisions once the replica has
replayed it and the next poll has read it. The revocation bound is therefore
replication lag plus the refresh interval.

:class:`ReplicaLag` measures that bound as it is, rather than trusting
``now() - pg_last_xact_replay_timestamp()``, which grows while the primary is
idle although nothing is missing. Every interval it reads the primary's newest
revision and notes when it first saw it; the lag is how long ago the primary
first had a revision the snapshot has not reached, and 0 when nothing is missing.
"""

import threading
import time
from collections import deque
from collections.abc import Callable

from keyguard.cache import Snapshot
from keyguard.storage import Store

MAX_PENDING = 1024  # revisions remembered while the snapshot is behind


class ReplicaLag:
    """How long the snapshot has lacked a change the primary has committed."""

    def __init__(
        self, primary: Store, cache: Snapshot, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._primary = primary
        self._cache = cache
        self._clock = clock
        self._lock = threading.Lock()
        self._pending: deque[tuple[int, float]] = deque()  # (primary revision, first seen)
        self.primary_revision = 0
        self.primary_reachable = False  # did the last sample reach the primary?

    def sample(self) -> None:
        """Read the primary's newest revision; run every refresh interval."""
        try:
            revision = self._primary.newest_revision()
        except Exception:
            self.primary_reachable = False
            raise
        now = self._clock()
        with self._lock:
            self.primary_reachable = True
            self.primary_revision = revision
            newest_pending = self._pending[-1][0] if self._pending else self._cache.revision
            if revision <= newest_pending:
                return
            if len(self._pending) < MAX_PENDING:
                self._pending.append((revision, now))
            else:  # the newest entry takes the revision: an earlier time overstates the lag
                self._pending[-1] = (revision, self._pending[-1][1])

    @property
    def seconds(self) -> float:
        """Since the primary first had a revision the snapshot still lacks; 0 if none."""
        reached = self._cache.revision
        with self._lock:
            while self._pending and self._pending[0][0] <= reached:
                self._pending.popleft()
            return self._clock() - self._pending[0][1] if self._pending else 0.0

    @property
    def behind(self) -> int:
        """Revisions the primary had at the last sample that the snapshot lacks."""
        return max(0, self.primary_revision - self._cache.revision)
