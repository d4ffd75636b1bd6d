"""The hot path: may this key make this request?

:meth:`Decider.decide` takes a token, a client address, a method and a path and
returns a :class:`Decision`. It reads only the in-memory key snapshot and the
route map; a refusal is a value, never an exception; the side effects are a
note of the key's use, flushed to the database later in a batch, for a key
with a rate limit one count in the :class:`~keyguard.metering.Meter`, and for a
key with credits one credit spent from its :class:`~keyguard.credits.CreditLeases`.

The rate limit is consulted before the credits, so that a request it refuses
spends no credit; a request refused for want of credits is taken back from the
rate limit's count: only allowed requests count or spend.
"""

import time
from collections.abc import Callable
from ipaddress import ip_network
from typing import NamedTuple

import anyio.to_thread

from keyguard.cache import Found, Profile, Snapshot
from keyguard.credits import USAGE_EXCEEDED, CreditLeases
from keyguard.domain.keys import is_well_formed
from keyguard.domain.network import parse_address, parse_client
from keyguard.domain.routes import AMBIGUOUS, Route, RouteMap, UnknownRoutes
from keyguard.domain.scopes import Level
from keyguard.limits import WindowLimiter
from keyguard.metering import RATE_LIMITED, Meter, Window
from keyguard.usage import Outcome, UsageRecorder
from keyguard.vault import Vault


class Decision(NamedTuple):
    """The answer for one request.

    ``status`` is 200 when allowed, else 401 (no usable key), 403 (a usable key
    that may not do this), or 429: the client address failed to authenticate
    too often, or the key is over its rate limit, and must wait ``retry_after``
    seconds, or it has no credits left. ``ratelimit`` is the key's window when
    it has a rate limit, for the ``RateLimit`` headers. ``scope`` names what the
    request needed: ``"messages:write"``, or ``"full"`` for a route (or an
    unknown path) that needs a full-access key; ``None`` when the key itself was
    refused.
    """

    allowed: bool
    status: int
    message: str
    account_id: int | None = None
    key_id: int | None = None
    scope: str | None = None
    retry_after: int | None = None  # for 429: seconds until the client may try again
    ratelimit: Window | None = None


UNAUTHORIZED = Decision(False, 401, "Unauthorized")
# No decision yet: the key must first be read from the store (a bounded snapshot's
# miss; see Decider.decide). Never sent to a client.
UNCACHED = Decision(False, 0, "Not decided: the key is to be read from the store first")


class _Unsure(Exception):  # noqa: N818 (a signal, not an error)
    """A bounded snapshot holds none of these digests, and its filter says one may
    be a key's."""

    def __init__(self, digests: list[bytes]) -> None:
        super().__init__()
        self.digests = digests


# Keys brought in by `keyguard import` keep the shape another system gave them; a
# longer token than this is no key of any system worth a digest.
MAX_IMPORTED_LENGTH = 512
SAMPLE_EVERY = 64
_ALLOWED_LIMIT = 65_536
# Upstreams may route such a path differently from how keyguard would judge it.
_AMBIGUOUS_PATH = "Ambiguous path (encoded separator, dot segment, backslash or the like)"
TOO_MANY_FAILURES = "Too many failed authentications from this address; retry in {} seconds"


class Decider:
    """Decisions over a key snapshot and a route map."""

    def __init__(
        self,
        vault: Vault,
        cache: Snapshot,
        routes: RouteMap,
        usage: UsageRecorder,
        observe_latency: Callable[[float], None] | None = None,
        failures: WindowLimiter | None = None,
        clock: Callable[[], float] = time.time,
        meter: Meter | None = None,
        credits: CreditLeases | None = None,
    ) -> None:
        self._vault = vault
        # While the server secret is rotated, a key not yet rewritten is found by
        # its digest under the previous secret; without one, a miss is a miss.
        self._previous = vault.previous
        self._cache = cache
        self._routes = routes
        self._usage = usage
        self._observe_latency = observe_latency
        self._failures = failures
        self._clock = clock  # for key expiry: POSIX seconds
        self.meter = meter if meter is not None else Meter(clock=clock)
        self.credits = credits if credits is not None else CreditLeases(None, clock=clock)
        # Plain counters cost ~50 ns; metrics read them when scraped. Latency is
        # sampled, one decision in SAMPLE_EVERY, to keep the clock off the hot path.
        self.outcomes = {200: 0, 401: 0, 403: 0, 429: 0}
        self._calls = 0
        # Allowed decisions are values: one per key and scope, built once.
        self._allowed: dict[tuple[int, str], Decision] = {}

    @property
    def routes(self) -> RouteMap:
        return self._routes

    def decide(
        self,
        token: str | None,
        ip: str | None,
        method: str,
        path: str,
        failures_of: str | None = None,
        *,
        fetch: bool = True,
    ) -> Decision:
        """The decision for one request; never raises for any input.

        Failed authentications count against ``failures_of`` (default: ``ip``) for the
        failure limit; an IPv6 client is counted by its /64, which one client holds.

        A bounded snapshot may have to read the key from the store first. With
        ``fetch`` it does so here; without, it answers :data:`UNCACHED` instead,
        and an event loop awaits :meth:`decide_after_read`, which reads in a worker
        thread and asks again.
        """
        self._calls = calls = self._calls + 1
        try:
            if calls % SAMPLE_EVERY or self._observe_latency is None:
                decision = self._decide(token, ip, method, path, failures_of or ip)
            else:
                started = time.perf_counter()
                decision = self._decide(token, ip, method, path, failures_of or ip)
                self._observe_latency(time.perf_counter() - started)
        except _Unsure:
            if not fetch:
                return UNCACHED
            self.fetch(token)
            try:
                decision = self._decide(token, ip, method, path, failures_of or ip)
            except _Unsure:  # the read failed or raced a change: no key to decide with
                decision = self._unauthorized(failures_of or ip)
        self.outcomes[decision.status] += 1
        return decision

    async def decide_after_read(
        self,
        token: str | None,
        ip: str | None,
        method: str,
        path: str,
        failures_of: str | None = None,
    ) -> Decision:
        """:meth:`decide`, for a request that got :data:`UNCACHED`: the key is read in a
        worker thread, then decided on the event loop, which never waits on the store.
        A key still not read (the store failed, or the key kept changing) is refused."""
        await anyio.to_thread.run_sync(self.fetch, token)
        decision = self.decide(token, ip, method, path, failures_of, fetch=False)
        if decision is UNCACHED:
            decision = self._unauthorized(failures_of or ip)
            self.outcomes[decision.status] += 1
        return decision

    def fetch(self, token: str | None) -> None:
        """Read into a bounded snapshot the key ``token`` may be, and lease credits
        for it if it has some: the blocking work :meth:`decide` with ``fetch=False``
        leaves to its caller. Safe in any thread."""
        if token is None or not self._cache.bounded:
            return
        digests = self._digests(token)
        self._cache.fetch(digests)
        for digest in digests:
            key = self._cache.get(digest)
            if key is not None and key[1].credits is not None:
                self.credits.prime(key[0])

    def _digests(self, token: str, digest: bytes | None = None) -> list[bytes]:
        """Every digest ``token`` is looked up by: under the server secret (``digest``,
        when known), under the previous one while it is rotated, and as imported by
        SHA-256."""
        digests = [self._vault.digest(token) if digest is None else digest]
        if self._previous is not None:
            digests.append(self._previous.digest(token))
        if self._cache.imported_sha256:
            digests.append(self._vault.imported_digest(token))
        return digests

    def _decide(
        self, token: str | None, ip: str | None, method: str, path: str, failures_of: str | None
    ) -> Decision:
        # The failure limit is consulted only once a key has failed: a valid key is
        # never refused by it, whoever shares its client's address (a NAT, a backend
        # calling /auth/verify). A refused key costs one digest (~0.6 µs) either way.
        cache = self._cache
        if token is None or not (
            is_well_formed(token) or (cache.imported and len(token) <= MAX_IMPORTED_LENGTH)
        ):
            return self._unauthorized(failures_of)
        digest = self._vault.digest(token)
        key = cache.get(digest)
        if key is None:
            key = self._miss(token, digest)
            if key is None:
                return self._unauthorized(failures_of)
        key_id, profile = key
        account_id = profile.account_id
        if (
            not profile.active
            or account_id in self._cache.blocked_accounts
            or (profile.expires is not None and self._clock() >= profile.expires)
        ):
            self._usage.count(key_id, account_id, Outcome.UNAUTHORIZED)
            return self._unauthorized(failures_of)
        if profile.networks is not None:
            address = parse_client(ip) if ip else None
            if address is None or not profile.networks.permits(address):
                shown = str(address) if address is not None else "(unknown)"
                message = f"IP address {shown} is not permitted for this API key"
                self._usage.count(key_id, account_id, Outcome.FORBIDDEN)
                return Decision(False, 403, message, account_id, key_id)
        route = self._routes.match(method, path)
        needed = route.label if route else "full"  # unknown and ambiguous paths need full access
        refusal = self._scope_refusal(profile, route)
        if refusal is not None:
            self._usage.count(key_id, account_id, Outcome.FORBIDDEN)
            return Decision(False, 403, refusal, account_id, key_id, needed)
        window = None
        if profile.ratelimit is not None:
            window = self.meter.admit(key_id, profile.ratelimit)
            if window is None:
                return self._rate_limited(key_id, account_id, needed)
        if profile.credits is not None and not self.credits.spend(key_id, profile):
            if window is not None:
                self.meter.release(window)
            self._usage.count(key_id, account_id, Outcome.NO_CREDITS)
            return Decision(False, 429, USAGE_EXCEEDED, account_id, key_id, needed)
        self._usage.touch(key_id, account_id)
        allowed = self._allowed.get((key_id, needed))
        if allowed is None or allowed.account_id != account_id or allowed.ratelimit is not window:
            if len(self._allowed) >= _ALLOWED_LIMIT:
                self._allowed.clear()
            allowed = Decision(True, 200, "OK", account_id, key_id, needed, None, window)
            self._allowed[key_id, needed] = allowed
        return allowed

    def _miss(self, token: str, digest: bytes) -> Found | None:
        """The key a token not found by its digest is, by its other digests; raises
        :class:`_Unsure` when a bounded snapshot must read the store to know."""
        cache = self._cache
        digests = self._digests(token, digest)
        for other in digests[1:]:
            key = cache.get(other)
            if key is not None:
                return key
        if cache.bounded:
            unsure = [digest for digest in digests if cache.may_hold(digest)]
            if unsure:
                raise _Unsure(unsure)
        return None

    def _unauthorized(self, failures_of: str | None) -> Decision:
        failures = self._failures
        if failures is not None:
            client = failure_unit(failures_of)
            wait = failures.retry_after(client) if failures.blocked else None
            if wait is None:
                wait = failures.hit(client)
            if wait is not None:
                return Decision(False, 429, TOO_MANY_FAILURES.format(wait), retry_after=wait)
        return UNAUTHORIZED

    def _rate_limited(self, key_id: int, account_id: int, needed: str) -> Decision:
        # Not a failed authentication: the key is good, so the failure limit is not charged.
        self._usage.count(key_id, account_id, Outcome.RATE_LIMITED)
        wait, window = self.meter.refusal(key_id)
        return Decision(False, 429, RATE_LIMITED, account_id, key_id, needed, wait, window)

    def _scope_refusal(self, key: Profile, route: Route | None) -> str | None:
        """Why a key of this profile may not take ``route``, or ``None`` if it may."""
        if route is AMBIGUOUS:
            if self._routes.unknown is UnknownRoutes.DENY:
                return f"{_AMBIGUOUS_PATH}: not available to any API key"
            return (
                f"{_AMBIGUOUS_PATH}: API key with full access required"
                if key.scopes_enabled
                else None
            )
        if route is None:
            if self._routes.unknown is UnknownRoutes.DENY:
                return "This route is not available to any API key"
            return "API key with full access required" if key.scopes_enabled else None
        if not key.scopes_enabled:
            return None
        if route.scope is None:
            return "API key with full access required"
        if key.levels.get(route.scope, Level.NONE) < route.level:
            return f"API key scope {route.scope}: {route.level.label} access required"
        return None


def failure_unit(ip: str | None) -> str | None:
    """The unit the failure limit counts: an IPv4 address, or an IPv6 /64.

    Keys and keyguard's own tokens (operator, metrics, verify) count against one
    limit in this unit.
    """
    if ip is None or ":" not in ip:
        return ip
    address = parse_address(ip)
    if address is None or address.version == 4:
        return str(address) if address is not None else ip
    return str(ip_network(f"{address}/64", strict=False))
