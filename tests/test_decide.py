"""The decision function, over a real snapshot of a real store."""

import hashlib
import time
from datetime import UTC, datetime

import pytest

from keyguard.cache import KeyCache
from keyguard.decide import UNAUTHORIZED, Decider, Decision
from keyguard.domain.keys import generate
from keyguard.domain.routes import Route, RouteMap, UnknownRoutes
from keyguard.domain.scopes import ScopeGroups
from keyguard.importing import Importer
from keyguard.limits import WindowLimiter
from keyguard.runtime import MANAGEMENT_ROUTES, wavix_route_map
from keyguard.service import KeyService
from keyguard.storage import Store, open_store
from keyguard.usage import UsageRecorder
from keyguard.vault import Vault

IP = "198.51.100.7"


class World:
    """A memory store, its snapshot and a decider over Wavix's routes."""

    def __init__(self, routes: RouteMap | None = None) -> None:
        self.store: Store = open_store("memory://")
        vault = Vault(b"k" * 32)
        self.cache = KeyCache(self.store)
        self.usage = UsageRecorder(self.store, clock=lambda: 1_700_000_000.0)
        route_map = routes or wavix_route_map().with_routes(MANAGEMENT_ROUTES)
        self.now = time.time()  # the decider's clock, which tests move
        self.decider = Decider(vault, self.cache, route_map, self.usage, clock=lambda: self.now)
        self.service = KeyService(
            self.store, vault, self.cache, self.usage, groups=route_map.groups
        )
        self.account, view = self.service.create_account("acme")
        self.root = view.value

    def key(self, **body: object) -> str:
        return self.service.create_key(self.account.id, {"label": "k", **body}).value

    def decide(self, token: str | None, method: str = "GET", path: str = "/v1/numbers",
               ip: str | None = IP) -> Decision:  # fmt: skip
        return self.decider.decide(token, ip, method, path)


@pytest.fixture
def world() -> World:
    return World()


def test_full_access_key_is_allowed_with_identity(world: World) -> None:
    decision = world.decide(world.root, "POST", "/v3/messages")
    assert decision == Decision(True, 200, "OK", world.account.id, 1, "messages:write")


@pytest.mark.parametrize(
    "token",
    [None, "", "kg_short", generate("kg"), "x" * 10_000, "ключ"],
    ids=["missing", "empty", "malformed", "unknown_valid_checksum", "huge", "non_ascii"],
)
def test_unusable_token_is_401(world: World, token: str | None) -> None:
    assert world.decide(token) is UNAUTHORIZED


def test_inactive_key_is_401_and_reactivated_key_works(world: World) -> None:
    token = world.key(active=False)
    assert world.decide(token) is UNAUTHORIZED
    key_id = world.service.list_keys(world.account.id, "k")[0].key.id
    world.service.set_active(world.account.id, key_id, True)
    assert world.decide(token).allowed


EXPIRY = "2099-01-31T12:00:00Z"
EXPIRY_SECOND = datetime(2099, 1, 31, 12, tzinfo=UTC).timestamp()


def test_key_works_until_the_second_it_expires_on_the_deciders_clock(world: World) -> None:
    token = world.key(expires_at=EXPIRY)

    world.now = EXPIRY_SECOND - 0.001
    assert world.decide(token).allowed
    world.now = EXPIRY_SECOND
    assert world.decide(token) is UNAUTHORIZED
    world.now = EXPIRY_SECOND + 86_400
    assert world.decide(token) is UNAUTHORIZED


def test_expired_key_with_another_scope_is_401_not_403(world: World) -> None:
    token = world.key(expires_at=EXPIRY, scopes_enabled=True, numbers={"allow": "read"})
    world.now = EXPIRY_SECOND

    assert world.decide(token, "POST", "/v3/messages") is UNAUTHORIZED


def test_key_without_expiry_never_expires(world: World) -> None:
    world.now = EXPIRY_SECOND * 10
    assert world.decide(world.root).allowed


def test_deleted_key_is_401_at_once(world: World) -> None:
    token = world.key()
    key_id = world.service.list_keys(world.account.id, "k")[0].key.id
    world.service.delete_key(world.account.id, key_id)
    assert world.decide(token) is UNAUTHORIZED


def test_restricted_key_from_permitted_address_then_allowed(world: World) -> None:
    token = world.key(restricted=True, permitted_ips=["198.51.100.0/24"])
    assert world.decide(token).allowed
    assert world.decide(token, ip="::ffff:198.51.100.7").allowed


@pytest.mark.parametrize("ip", ["203.0.113.1", None, "garbage", "fe80::1%eth0"])
def test_restricted_key_from_other_address_then_403(world: World, ip: str | None) -> None:
    token = world.key(restricted=True, permitted_ips=["198.51.100.0/24"])
    decision = world.decide(token, ip=ip)
    assert (decision.allowed, decision.status) == (False, 403)
    shown = ip if ip == "203.0.113.1" else "(unknown)"
    assert decision.message == f"IP address {shown} is not permitted for this API key"


def test_restricted_key_with_empty_list_is_refused_everywhere(world: World) -> None:
    token = world.key(restricted=True, permitted_ips=[])
    assert world.decide(token).status == 403


def test_unrestricted_key_ignores_its_list(world: World) -> None:
    token = world.key(restricted=False, permitted_ips=["10.0.0.1"])
    assert world.decide(token).allowed


@pytest.mark.parametrize(
    ("grant", "method", "path", "allowed"),
    [
        ("read", "GET", "/v3/messages", True),
        ("read", "HEAD", "/v3/messages", True),
        ("read", "POST", "/v3/messages", False),
        ("write", "POST", "/v3/messages", True),
        ("write", "DELETE", "/v3/messages/sender-ids/5", True),
        ("none", "GET", "/v3/messages", False),
    ],
)
def test_scoped_key_needs_the_route_level(
    world: World, grant: str, method: str, path: str, allowed: bool
) -> None:
    token = world.key(scopes_enabled=True, messages={"allow": grant})
    decision = world.decide(token, method, path)
    assert decision.allowed is allowed
    if not allowed:
        level = "write" if method == "POST" or grant == "read" else "read"
        assert decision.message == f"API key scope messages: {level} access required"


def test_cdr_search_needs_only_calls_read(world: World) -> None:
    token = world.key(scopes_enabled=True, calls={"allow": "read"})
    assert world.decide(token, "POST", "/v1/cdrs").allowed
    assert world.decide(token, "POST", "/v1/cdr").allowed
    assert not world.decide(token, "POST", "/v1/calls").allowed


def test_scoped_key_with_every_group_write_may_not_manage_keys(world: World) -> None:
    token = world.key(scopes_enabled=True, **{g: {"allow": "write"} for g in ScopeGroups()})
    decision = world.decide(token, "GET", "/v1/api-keys")
    assert (decision.status, decision.message) == (403, "API key with full access required")


def test_unknown_route_allows_full_access_and_refuses_scoped(world: World) -> None:
    scoped = world.key(scopes_enabled=True, numbers={"allow": "write"})
    assert world.decide(world.root, "GET", "/v1/not-a-route").allowed
    assert world.decide(scoped, "GET", "/v1/not-a-route").status == 403


def test_unknown_routes_can_be_denied_for_everyone() -> None:
    strict = World(RouteMap.build([Route("GET", "/a", None)], ScopeGroups(), UnknownRoutes.DENY))
    assert strict.decide(strict.root, "GET", "/a").allowed
    assert strict.decide(strict.root, "GET", "/b").status == 403


def test_path_tricks_do_not_reach_a_weaker_route(world: World) -> None:
    token = world.key(scopes_enabled=True, numbers={"allow": "read"})
    assert world.decide(token, "GET", "/v1/numbers").allowed
    for path in ("/v1/numbers/../api-keys", "/v1/numbers/%2e%2e/api-keys",
                 "/v1/numbers/..%2Fapi-keys"):  # fmt: skip
        assert world.decide(token, "GET", path).status == 403, path


@pytest.mark.parametrize("path", ["/v1/numbers/..%2Fapi-keys", "/v1//numbers", "/V1/numbers"])
def test_ambiguous_path_is_refused_for_scoped_keys_and_allowed_for_full_access(
    world: World, path: str
) -> None:
    scoped = world.key(scopes_enabled=True, numbers={"allow": "write"})
    refused = world.decide(scoped, "GET", path)
    assert (refused.status, refused.scope) == (403, "full")
    assert refused.message.startswith("Ambiguous path")
    assert world.decide(world.root, "GET", path) == Decision(
        True, 200, "OK", world.account.id, 1, "full"
    )


def test_ambiguous_path_is_refused_for_everyone_when_unknown_routes_are_denied() -> None:
    strict = World(RouteMap.build([Route("GET", "/a", None)], ScopeGroups(), UnknownRoutes.DENY))
    decision = strict.decide(strict.root, "GET", "/%61")
    assert (decision.status, decision.message) == (
        403,
        "Ambiguous path (encoded separator, dot segment, backslash or the like): "
        "not available to any API key",
    )


def test_blocked_address_keeps_its_valid_keys_and_is_refused_for_bad_ones() -> None:
    world = World()
    failures = WindowLimiter(limit=2, clock=lambda: 100.0)
    world.decider = Decider(
        Vault(b"k" * 32), world.cache, world.decider.routes, world.usage, failures=failures
    )
    assert [world.decide("kg_nope").status for _ in range(3)] == [401, 401, 429]

    assert world.decide(world.root).allowed
    assert world.decide(generate("kg")).status == 429
    assert world.decide("kg_nope", ip="198.51.100.8").status == 401


def test_failures_from_one_ipv6_64_are_counted_together() -> None:
    world = World()
    failures = WindowLimiter(limit=2, clock=lambda: 100.0)
    world.decider = Decider(
        Vault(b"k" * 32), world.cache, world.decider.routes, world.usage, failures=failures
    )
    same_64 = ["2001:db8:1:2::1", "2001:db8:1:2:ffff::9"]
    assert [world.decide("kg_nope", ip=ip).status for ip in same_64] == [401, 401]
    assert world.decide("kg_nope", ip="2001:db8:1:2:abcd::1").status == 429
    assert world.decide("kg_nope", ip="2001:db8:1:3::1").status == 401
    assert world.decide("kg_nope", ip="198.51.100.9").status == 401


def test_allowed_decision_notes_use_and_refusal_does_not(world: World) -> None:
    token = world.key(scopes_enabled=True)
    key_id = world.service.list_keys(world.account.id, "k")[0].key.id
    world.decide(token)
    assert world.usage.latest(key_id) is None
    world.decide(token, "GET", "/v1/not-a-route")
    assert world.usage.latest(key_id) is None
    world.decide(world.root)
    assert world.usage.latest(1) is not None


def test_change_by_another_process_is_seen_after_refresh(world: World) -> None:
    other = KeyService(
        world.store, Vault(b"k" * 32), KeyCache(world.store), world.usage,
        groups=ScopeGroups(),
    )  # fmt: skip
    view = other.create_key(world.account.id, {"label": "elsewhere"})
    assert world.decide(view.value) is UNAUTHORIZED
    world.cache.refresh()
    assert world.decide(view.value).allowed


# -- imported keys ------------------------------------------------------------------


class CountingVault(Vault):
    """The real vault, counting the digests a decision computes."""

    digests = 0

    def digest(self, token: str) -> bytes:
        self.digests += 1
        return super().digest(token)

    def imported_digest(self, token: str) -> bytes:
        self.digests += 1
        return super().imported_digest(token)


class ImportWorld(World):
    def __init__(self) -> None:
        super().__init__()
        self.vault = CountingVault(b"k" * 32)
        self.decider = Decider(self.vault, self.cache, wavix_route_map(), self.usage)
        self.cache.refresh()

    def bring(self, *records: dict[str, object]) -> None:
        """Import ``records`` as ``keyguard import`` does, and refresh the snapshot."""
        importer = Importer(self.store, self.vault, ScopeGroups(), self.account.id)
        tally = importer.run(iter(enumerate(records, 1)))
        assert tally.imported == len(records)
        self.cache.refresh()

    def cost(self, token: str) -> tuple[int, int]:
        """The decision's status, and how many digests it took."""
        before = self.vault.digests
        status = self.decide(token).status
        return status, self.vault.digests - before


FOREIGN = "wvx_live_0123456789abcdef"


def test_without_imported_keys_a_token_of_another_shape_costs_no_digest() -> None:
    world = ImportWorld()

    assert world.cost(FOREIGN) == (401, 0)
    assert world.cost(generate("kg")) == (401, 1)
    assert world.cost(world.root) == (200, 1)


def test_a_key_imported_by_value_works_in_its_own_shape_and_a_miss_costs_one_digest() -> None:
    world = ImportWorld()
    world.bring({"value": FOREIGN})

    assert world.cost(FOREIGN) == (200, 1)
    assert world.cost(FOREIGN + "0") == (401, 1)
    assert world.cost("x" * 10_000) == (401, 0)  # no key of any system is that long
    assert world.cost(world.root) == (200, 1)


def test_with_keys_imported_by_sha256_only_a_miss_pays_a_second_digest() -> None:
    world = ImportWorld()
    unkey = "uk_3ZbXk9JpWq2mTn4RvL8sYc"
    world.bring({"sha256": hashlib.sha256(unkey.encode()).hexdigest()})

    assert world.cost(world.root) == (200, 1)
    assert world.cost(unkey) == (200, 2)
    assert world.cost(generate("kg")) == (401, 2)
    assert world.cost(hashlib.sha256(unkey.encode()).hexdigest()) == (401, 2)
