"""Usage credits at the gate: spent from leases, with no database write per request.

The decider calls :meth:`CreditLeases.spend` for an allowed decision of a key
that has credits, and only then: keys without credits pay nothing. A process
spends only credits it holds in a :class:`Lease`, taken from the store in blocks
by :meth:`CreditLeases.sync`, run in the background (every :data:`LEASE_INTERVAL`):

- every key with credits gets a lease of one credit as soon as the snapshot
  holds it, so that its first request is answered without waiting;
- a lease in use is topped up before it runs out, to about one second of the
  load it serves (adaptive), never more than :data:`MAX_LEASE` credits nor a
  quarter of what the store has left; a
  request refused because the lease ran dry while the store still had credits
  starts a round at once, and counts as load;
- a lease unused for :data:`IDLE_RETURN` seconds gives back all but one credit,
  and :meth:`CreditLeases.close` (a graceful shutdown) gives back everything;
- a key whose credits changed (the snapshot shows a newer epoch) or whose refill
  period ended drops its lease: those credits are not given back, so they never
  add to the new amount.

So across processes no more requests succeed than there are credits (a process
killed with SIGKILL takes its lease with it), and while the load is spread at
most ``processes * MAX_LEASE`` credits sit in leases when the store runs dry.
On ``memory://`` there is one process, and a missing lease is taken at once:
exactly as many requests succeed as there are credits.

Threads: the hot path (one event loop) is the only writer of ``Lease.spent``,
the leasing thread the only writer of the rest of a lease.
"""

import logging
import math
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from keyguard.domain.credits import NO_END, CreditGrant, period_end

if TYPE_CHECKING:  # the middleware imports this module, and must not load SQLAlchemy
    from keyguard.cache import CachedKey, Profile, Snapshot
    from keyguard.storage import Store

log = logging.getLogger("keyguard.credits")

USAGE_EXCEEDED = "Usage limit exceeded"
LEASE_INTERVAL = 0.1  # seconds between leasing rounds
MAX_LEASE = 100  # credits one process holds of one key, at most
LOAD_SECONDS = 1.0  # a lease holds about this many seconds of the load it serves
IDLE_RETURN = 2.0  # seconds without a spend before a lease is given back but one credit
DRY_RETRY = 1.0  # seconds between asking again for a key the store has no credits of
MIN_ROUND = 0.005  # seconds between rounds, however often leases run dry
# Requests that may be between the check and the spend while a lease shrinks: the
# hot path is one thread, so one.
_IN_FLIGHT = 1
_SHORTEST = 0.02  # seconds: the shortest span a rate is worked out over


class Lease:
    """Credits of one key this process may spend: ``granted - spent`` of them."""

    __slots__ = (
        "asked", "at", "busy", "epoch", "granted", "missed", "period", "seen", "spent",
        "stored", "until",
    )  # fmt: skip

    def __init__(self, epoch: int, period: int, until: float, granted: int) -> None:
        self.epoch = epoch  # the key's credits epoch it was taken under
        self.period = period  # and its refill period, which ends at ``until``
        self.until = until  # POSIX seconds
        self.granted = granted
        self.spent = 0
        self.missed = 0  # requests refused while it was dry (written by the hot path)
        self.seen = 0  # ``spent + missed`` at the previous round
        self.busy = 0.0  # when a round last saw a request
        self.at = 0.0  # when the previous round looked at it
        self.stored = 0  # what the store had left after the last grant
        self.asked = 0.0  # when the store last gave nothing


class CreditLeases:
    """The credits of one process, leased from the store in the background."""

    def __init__(
        self,
        store: "Store | None",
        cache: "Snapshot | None" = None,
        clock: Callable[[], float] = time.time,
        *,
        inline: bool = False,
    ) -> None:
        self._store = store
        self._cache = cache
        self._clock = clock
        self._inline = inline  # the store is in this process: lease on the hot path
        self._leases: dict[int, Lease] = {}
        self._lock = threading.Lock()  # one leasing round at a time
        self._wake = threading.Event()  # a lease ran dry: lease now, not at the next round
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="keyguard-credits", daemon=True)
        self.refused = 0  # requests refused for want of credits, for /metrics

    # -- the hot path -------------------------------------------------------------

    def spend(self, key_id: int, profile: "Profile") -> bool:
        """Spend one credit of key ``key_id`` (whose profile is ``profile``) if this
        process holds one."""
        lease = self._leases.get(key_id)
        if (
            lease is not None
            and lease.spent < lease.granted
            and lease.epoch >= profile.credits  # type: ignore[operator]  # not None here
            and (lease.until is NO_END or self._clock() < lease.until)  # no clock without refill
        ):
            lease.spent += 1
            return True
        if self._inline and self._lease_now(key_id, profile):
            return self.spend(key_id, profile)
        self.refused += 1
        if lease is not None:
            lease.missed += 1
        self._wake.set()
        return False

    def _lease_now(self, key_id: int, profile: "Profile") -> bool:
        """Take a lease at once (``memory://`` only): whether one was granted."""
        from keyguard.cache import CachedKey

        with self._lock:
            return self._take({key_id: 1}, {key_id: CachedKey(key_id, profile)}) > 0

    def prime(self, key_id: int) -> None:
        """Lease one credit of a key that was just given credits, or just read into a
        bounded snapshot, unless a lease of its current credits with one left is held
        already (a management call or a worker thread's, not the hot path).

        Only while this process leases (it serves requests): a command line that
        manages keys must not carry credits away."""
        key = None if self._cache is None else self._cache.by_id(key_id)
        if not self._thread.is_alive() or key is None or key.credits is None:
            return
        with self._lock:
            lease = self._leases.get(key_id)
            if lease is None or lease.epoch < key.credits or lease.spent >= lease.granted:
                self._take({key_id: 1}, {key_id: key})

    # -- in the background --------------------------------------------------------

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        """Stop leasing, and give back every unspent credit (a graceful shutdown)."""
        self._stop.set()
        self._wake.set()
        if self._thread.is_alive():
            self._thread.join(timeout=10)
        try:
            self.close()
        except Exception as error:  # lost, as after a crash: never more than there are
            log.warning("giving back credit leases failed: %s", type(error).__name__)

    def _run(self) -> None:
        failing = False
        while not self._stop.is_set():
            self._wake.wait(LEASE_INTERVAL)
            self._wake.clear()
            if self._stop.is_set():
                return
            try:
                self.sync()
            except Exception as error:
                if not failing:
                    log.warning("credit leasing failed, will retry: %s", type(error).__name__)
                failing = True
                self._stop.wait(LEASE_INTERVAL)  # no tight loop while the store is away
                continue
            if failing:
                log.warning("credit leasing works again")
                failing = False
            self._stop.wait(MIN_ROUND)

    def sync(self) -> None:
        """One leasing round: take, top up, drop and give back leases."""
        if self._store is None or self._cache is None:
            return
        with self._lock:
            now = self._clock()
            keys = {key.key_id: key for key in self._cache.credited()}
            wanted: dict[int, int] = {}
            returned: dict[int, CreditGrant] = {}
            for key_id in [key_id for key_id in self._leases if key_id not in keys]:
                # Deleted, unlimited now, or out of a bounded snapshot's working set: what
                # is unspent goes back, and the store drops it if the credits changed.
                gone = self._leases.pop(key_id)
                given = self._shrink(gone, keep=0)  # room left for a spend under way
                if given > 0:
                    returned[key_id] = CreditGrant(given, gone.epoch, gone.period, 0)
            for key_id, key in keys.items():
                lease = self._leases.get(key_id)
                if lease is None and not key.active:
                    continue  # refused before its credits are looked at: no lease needed
                if lease is None or lease.epoch < key.credits or now >= lease.until:  # type: ignore[operator]
                    wanted[key_id] = self._size(1)
                    continue
                spent = lease.spent
                asked = spent + lease.missed
                load, lease.seen = asked - lease.seen, asked
                # The load since the previous round, taken to have come within the last
                # interval (it may have begun just now, after a quiet spell).
                elapsed = max(min(now - lease.at, LEASE_INTERVAL), _SHORTEST)
                lease.at = now
                if load:
                    lease.busy = now
                left = lease.granted - spent
                # About a second of that load, but no more than a quarter of what the
                # store has left, so that near the end the processes share it.
                target = self._size(
                    min(math.ceil(load * LOAD_SECONDS / elapsed), (lease.stored + left) // 4)
                )
                if left * 2 < target or left == 0:
                    if left == 0 and lease.asked and now - lease.asked < DRY_RETRY:
                        continue
                    wanted[key_id] = target - left
                elif now - lease.busy >= IDLE_RETURN and left > 1:
                    given = self._shrink(lease, keep=1)
                    if given > 0:
                        returned[key_id] = CreditGrant(given, lease.epoch, lease.period, 0)
            self._store.return_credits(returned)
            self._take(wanted, keys)

    def close(self) -> None:
        """Give back every unspent credit: decisions are over (a graceful shutdown)."""
        if self._store is None:
            return
        with self._lock:
            returned = {
                key_id: self._unspent(lease)
                for key_id, lease in self._leases.items()
                if lease.granted > lease.spent
            }
            self._leases.clear()
            self._store.return_credits(returned)

    @staticmethod
    def _unspent(lease: "Lease") -> CreditGrant:
        return CreditGrant(lease.granted - lease.spent, lease.epoch, lease.period, 0)

    def held(self) -> int:
        """Credits this process holds unspent, over all keys."""
        return sum(max(0, lease.granted - lease.spent) for lease in list(self._leases.values()))

    @staticmethod
    def _size(load: int) -> int:
        return max(1, min(MAX_LEASE, load))

    def _take(self, wanted: dict[int, int], keys: "dict[int, CachedKey]") -> int:
        """Ask the store for ``wanted`` credits; how many it granted in all."""
        assert self._store is not None
        if not wanted:
            return 0
        now = self._clock()
        grants = self._store.lease_credits(wanted, datetime.fromtimestamp(now, UTC))
        total = 0
        for key_id, grant in grants.items():
            key = keys.get(key_id)
            if key is not None:
                self.hold(key, grant, now)
                total += grant.granted
        return total

    def hold(self, key: "CachedKey", grant: CreditGrant, now: float) -> None:
        """Add credits the store granted to ``key``'s lease, which is started afresh
        (the old one dropped) when they are of another epoch or refill period."""
        lease = self._leases.get(key.key_id)
        if lease is None or (lease.epoch, lease.period) != (grant.epoch, grant.period):
            until = period_end(key.refill_interval, grant.period)
            lease = Lease(grant.epoch, grant.period, until, 0)
            lease.busy = lease.at = now
            self._leases[key.key_id] = lease
        lease.granted += grant.granted
        lease.stored = grant.left
        lease.asked = 0.0 if grant.granted else now

    def _shrink(self, lease: Lease, keep: int) -> int:
        """Keep ``keep`` unspent credits of a lease (and any the hot path may be
        spending meanwhile); how many to give back."""
        granted = lease.granted
        lease.granted = lease.spent + keep
        # A spend under way may have read the old ``granted``: leave room for it.
        kept = min(granted, max(lease.granted, lease.spent + _IN_FLIGHT))
        lease.granted = kept
        return granted - kept
