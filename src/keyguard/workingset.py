"""A bounded snapshot, for key bases beyond one host's memory.

With ``KEYGUARD_SNAPSHOT_MAX_KEYS`` set, a process holds the keys it has used
lately, at most that many, instead of every live key. A key outside that working
set costs one indexed read of the store, and is then held; a token that is no
key costs no read at all, since a :class:`DigestFilter` of every live key's
digest, kept current from the change feed, says so first.

The working set follows the change feed as the full snapshot does, so a held
key is revoked within the refresh interval; a key not held is read afresh when
it is next used. Eviction is CLOCK: each slot has a bit a lookup sets, and the
hand clears bits until it finds a slot nobody used since it last passed.
"""

import logging
import math
import struct
import threading
from collections.abc import Callable, Sequence

from keyguard.cache import CachedKey, Found, Profile, Snapshot, shared_of
from keyguard.domain.records import DigestStream, Imported, KeyState
from keyguard.storage import Store

log = logging.getLogger("keyguard.cache")

Held = tuple[int, Profile | None, int]  # a digest's key id, profile and slot
_HASHES = struct.Struct("<7I")  # seven bit indices, read straight from a digest
READS = 3  # reads of one lookup at most, while the keys it reads keep changing
FORGET_AFTER = 10_000  # notes of changes kept for reads under way before pruning them


class DigestFilter:
    """A Bloom filter of key digests: whether a digest may be a live key's.

    Digests are HMAC-SHA256 outputs, as good as random, so the filter needs no
    hashing of its own: its seven bit indices are the digest's first 28 bytes,
    read as 32-bit numbers. At ten bits a key, seven indices give 0.82 % false
    positives; the filter is built with room for a quarter more keys than it
    starts with (so fewer, 0.2 %, at first) and :attr:`full` once that room is
    used. A digest cannot be taken out: a deleted key's stays until the filter is
    built again.
    """

    BITS_PER_KEY = 10
    SMALLEST = 2**20  # bits: 128 KiB

    def __init__(self, expected: int) -> None:
        wanted = max(math.ceil(expected * 1.25) * self.BITS_PER_KEY, self.SMALLEST)
        bits = 1 << (wanted - 1).bit_length()  # a power of two: an index is a mask away
        self._mask = bits - 1
        self._bits = bytearray(bits // 8)
        self.capacity = bits // self.BITS_PER_KEY
        self.count = 0

    def add(self, digest: bytes) -> None:
        bits, mask = self._bits, self._mask
        for index in _HASHES.unpack_from(digest):
            index &= mask
            bits[index >> 3] |= 1 << (index & 7)
        self.count += 1

    def __contains__(self, digest: bytes) -> bool:
        bits, mask = self._bits, self._mask
        for index in _HASHES.unpack_from(digest):
            index &= mask
            if not bits[index >> 3] >> (index & 7) & 1:
                return False
        return True

    @property
    def full(self) -> bool:
        return self.count > self.capacity

    @property
    def false_positive_rate(self) -> float:
        """The expected share of digests of no key that the filter lets through."""
        hashes = _HASHES.size // 4
        return float((1 - math.exp(-hashes * self.count / (self._mask + 1))) ** hashes)

    @property
    def size(self) -> int:
        """Bytes the filter's bits take."""
        return len(self._bits)


class WorkingSet(Snapshot):
    """At most ``max_keys`` keys by digest: those used lately, and digests known to
    be no key's.

    A dict maps each digest held to its key's id and profile (``None`` for a
    digest the store said is no key's) and its slot; per slot, the digest and
    the revision held, and the bit the clock reads. A lookup reads one dict entry,
    so a slot taken over by another key while it looks cannot make it answer
    with the other key.
    """

    bounded = True
    # Deleted keys whose digests stay in the filter: past this share of its keys
    # the filter is built again, as such digests each cost a read when used.
    STALE_SHARE = 0.25

    def __init__(
        self,
        store: Store,
        max_keys: int,
        observe_lag: Callable[[float], None] | None = None,
        reader: Store | None = None,
    ) -> None:
        """``store`` feeds the snapshot (it may be a read replica); ``reader`` (default:
        ``store``) answers the reads of keys not held, and should be the primary: a
        replica's answer may be older than what this process wrote or already took in."""
        if max_keys < 1:
            raise ValueError("a working set holds at least one key")
        super().__init__(store, observe_lag)
        self._reader = store if reader is None else reader
        self.max_keys = max_keys
        # digest -> (key id, profile, slot); the profile None for a digest the store
        # said is no key's. One entry, replaced whole: a lookup never sees a mix.
        self._held: dict[bytes, Held] = {}
        self._digests: list[bytes] = []  # by slot: the digest it holds (b"": none)
        self._revisions: list[int] = []  # by slot: the revision of the key held
        self._by_id: dict[int, int] = {}  # key id -> slot
        self._referenced = bytearray(max_keys)
        self._free: list[int] = []
        self._hand = 0
        self._live = 0
        self.filter = DigestFilter(0)
        self._stale = 0  # digests in the filter of keys since deleted
        self._building: list[bytes] | None = None  # digests added while a filter is built
        self._builder: threading.Thread | None = None
        # While reads are under way (by number, the revision the snapshot had when each
        # began): the newest revision the snapshot took in or let go of each key since,
        # and the digests it learnt are keys', so that a read's older answer is refused.
        self._reads: dict[int, int] = {}
        self._read_count = 0
        self._read_ids: dict[int, int] = {}
        self._read_digests: dict[bytes, int] = {}

    def __len__(self) -> int:
        return self._live

    def get(self, digest: bytes) -> Found | None:
        held = self._held.get(digest)
        if held is None:
            return None
        key_id, profile, slot = held
        self._referenced[slot] = 1
        return None if profile is None else (key_id, profile)

    def may_hold(self, digest: bytes) -> bool:
        held = self._held.get(digest)
        if held is not None:
            self._referenced[held[2]] = 1
            return False  # held: a key (get found it) or no key's
        return digest in self.filter

    def fetch(self, digests: Sequence[bytes]) -> None:
        """Read the keys with these digests from the store and hold them, or hold
        each digest as no key's. A failed read is logged and holds nothing: the
        next use reads again. A key that changed while it was read is read again."""
        for _ in range(READS):
            with self._lock:
                wanted = [digest for digest in digests if self.may_hold(digest)]
                if not wanted:
                    return
                self._read_count += 1
                read = self._read_count
                self._reads[read] = self.revision
                self.reads += 1
            states: list[KeyState] = []
            try:
                states = self._reader.key_states(digests=wanted)
            except Exception as error:
                log.warning(
                    "reading a key outside the working set failed: %s", type(error).__name__
                )
                wanted = []  # nothing is known: nothing is held, nothing read again
            finally:
                with self._lock:
                    digests = self._take(wanted, states)
                    del self._reads[read]
                    self._forget_reads()
            if not digests:
                return

    def _forget_reads(self) -> None:
        """Drop what no read under way can still be older than."""
        if not self._reads:
            self._read_ids.clear()
            self._read_digests.clear()
            return
        if len(self._read_ids) + len(self._read_digests) < FORGET_AFTER:
            return
        oldest = min(self._reads.values())  # later reads began after the feed took these in
        self._read_ids = {k: r for k, r in self._read_ids.items() if r > oldest}
        self._read_digests = {d: r for d, r in self._read_digests.items() if r > oldest}

    def _note_change(self, key_id: int, revision: int) -> None:
        if self._reads:
            self._read_ids[key_id] = max(self._read_ids.get(key_id, -1), revision)

    def by_id(self, key_id: int) -> CachedKey | None:
        """The live key with this id: from the working set, else read from the store
        (a management path, such as a console session's check; not a decision's)."""
        with self._lock:
            slot = self._by_id.get(key_id)
            held = None if slot is None else self._held.get(self._digests[slot])
        if held is not None and held[0] == key_id and held[1] is not None:
            return CachedKey(key_id, held[1])
        states = self._reader.key_states(ids=[key_id])
        return CachedKey(key_id, Profile.of(shared_of(states[0]))) if states else None

    def credited(self) -> list[CachedKey]:
        with self._lock:
            held = (self._held[self._digests[self._by_id[key_id]]] for key_id in self._credited)
            return [CachedKey(key_id, profile) for key_id, profile, _ in held if profile]

    def refresh(self) -> int:
        if self.revision == 0:
            self._first_load()
            return 0
        applied = super().refresh()
        with self._lock:
            worn = self.filter.full or self._stale > self.filter.count * self.STALE_SHARE
            if worn and self._builder is None:
                self._builder = threading.Thread(
                    target=self._rebuild, name="keyguard-filter", daemon=True
                )
                self._builder.start()
        return applied

    # -- the filter ---------------------------------------------------------------

    def _first_load(self) -> None:
        try:
            with self._store.stream_digests() as stream, self._lock:
                for account in stream.accounts:
                    self._apply_account(account)
                self.filter = self._filter_of(stream)
                self.revision = max(self.revision, stream.revision)
                self._refreshed()
        except Exception:
            self.store_reachable = False
            raise

    def _rebuild(self) -> None:
        """Build the filter again from the store, without the digests of deleted keys.

        Runs beside the refresh: digests the feed adds meanwhile go to both filters."""
        with self._lock:
            self._building = []
            stale = self._stale
        try:
            with self._store.stream_digests() as stream:
                rebuilt = self._filter_of(stream)
            with self._lock:
                # A key changed between the stream's revision and its rows (PostgreSQL
                # reads each statement afresh) may be missing: the held ones are added,
                # and the feed adds the others as they come.
                for digest in [*self._building, *self._held]:
                    rebuilt.add(digest)
                self.filter = rebuilt
                self._stale -= stale
        except Exception as error:  # the old filter stays: more reads, no wrong answer
            log.warning("rebuilding the digest filter failed: %s", type(error).__name__)
        finally:
            with self._lock:
                self._building = None
                self._builder = None

    def _filter_of(self, stream: DigestStream) -> DigestFilter:
        built = DigestFilter(stream.live)
        add = built.add
        imported: set[Imported] = set()
        for digest, how in stream.digests:
            add(digest)
            if how is not None:
                imported.add(how)
        for how in imported:
            self._note_imported(how)
        return built

    def _remember(self, digest: bytes, revision: int) -> None:
        """A live key has this digest: the filter must say so."""
        if digest not in self.filter:  # its bits are set already otherwise
            self.filter.add(digest)
        if self._building is not None:
            self._building.append(digest)
        if self._reads:
            self._read_digests[digest] = revision
        held = self._held.get(digest)
        if held is not None and held[1] is None:  # held as no key's
            self._release(held[2])
            self._free.append(held[2])

    # -- keys ---------------------------------------------------------------------

    def _apply(self, key: KeyState) -> bool:
        self._note_change(key.id, key.revision)  # held or not: a read began before it
        slot = self._by_id.get(key.id)
        if slot is None:  # not held: the filter learns a new digest; nothing else
            if key.deleted:
                self._stale += 1
            else:
                self._note_imported(key.imported)
                self._remember(key.digest, key.revision)
            return True
        if self._revisions[slot] > key.revision:
            return False
        if key.deleted or key.digest != self._digests[slot]:
            self._release(slot)
            self._free.append(slot)
            self._stale += 1
            if not key.deleted:
                self._remember(key.digest, key.revision)
            return True
        held = self._held[key.digest]
        assert held[1] is not None
        self._release_profile(key.id, held[1])
        self._held[key.digest] = (key.id, self._hold_profile(key.id, key), slot)
        self._revisions[slot] = key.revision
        return True

    def _take(self, wanted: Sequence[bytes], states: Sequence[KeyState]) -> list[bytes]:
        """Hold what a read found, and the digests it did not find as no key's,
        unless the feed said more of them while it read; those digests are returned,
        to be read again. The digests of no key go first, so that they never evict a
        key the same read found."""
        again = [digest for digest in wanted if digest in self._read_digests]
        found = {key.digest for key in states}
        for digest in wanted:
            known = digest in found or digest in self._read_digests or digest in self._held
            if not known:  # no key's, so far as the feed has said: held as such
                slot = self._slot()
                self._digests[slot] = digest
                self._held[digest] = (-1, None, slot)
        for key in states:
            if self._read_ids.get(key.id, -1) > key.revision:
                again.append(key.digest)  # changed while it was read: read it again
                continue
            if key.id in self._by_id:  # another read took it meanwhile
                self._apply(key)
                continue
            slot = self._slot()
            self._digests[slot] = key.digest
            self._revisions[slot] = key.revision
            self._held[key.digest] = (key.id, self._hold_profile(key.id, key), slot)
            self._by_id[key.id] = slot
            self._live += 1
        return again

    def _slot(self) -> int:
        """A slot to fill: a free one, else the one the clock's hand evicts."""
        if self._free:
            slot = self._free.pop()
        elif len(self._digests) < self.max_keys:
            slot = len(self._digests)
            self._digests.append(b"")
            self._revisions.append(-1)
        else:
            referenced, size = self._referenced, self.max_keys
            hand = self._hand
            while referenced[hand]:
                referenced[hand] = 0
                hand = (hand + 1) % size
            self._hand = (hand + 1) % size
            slot = hand
            self._release(slot)
            self.evictions += 1
        self._referenced[slot] = 1  # read because it is about to be used
        return slot

    def _release(self, slot: int) -> None:
        """Empty a slot: its digest and, if it held a key, the key."""
        digest, revision = self._digests[slot], self._revisions[slot]
        self._digests[slot] = b""
        self._revisions[slot] = -1
        held = self._held.get(digest)
        if held is None or held[2] != slot:
            return
        del self._held[digest]
        key_id, profile, _ = held
        if profile is not None:
            # A read under way may bring an older copy: it must not be taken for this.
            self._note_change(key_id, revision)
            del self._by_id[key_id]
            self._release_profile(key_id, profile)
            self._live -= 1
