"""A real keyguard server, driven by Wavix's official Python client only.

Every answer must parse into the client's own models, so a field the client
requires, or a type it insists on, cannot drift without a failure here.
"""

import time
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from wavix.errors import ForbiddenError, NotFoundError, UnauthorizedError

from tests.server import KeyguardServer, Servers
from tests.wavix import GROUPS
from wavix import (
    ApiKey,
    ApiKeyCallsScopePermission,
    ApiKeyScopePermission,
    SuccessResponse,
    Wavix,
)

pytestmark = pytest.mark.slow


ClientFor = Callable[[str], Wavix]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KeyguardServer]:
    """One server for the module.

    Usage is flushed to the database only once a minute, so ``last_used_at``
    in an answer must come from what the server noted in memory, to the second.
    """
    settings = {"KEYGUARD_USAGE_FLUSH_INTERVAL": "60"}
    with Servers(tmp_path_factory.mktemp("conformance")) as servers:
        yield servers(settings=settings).start()


@pytest.fixture(scope="module")
def admin_token(server: KeyguardServer) -> str:
    """The first key of an account made with the CLI while the server runs."""
    token: str = server.create_account("acme")["api_key"]["value"]
    # Another process wrote the key; the server reads it on its next refresh.
    deadline = time.monotonic() + 1.0
    with httpx.Client(base_url=server.base_url, timeout=10) as http:
        while http.get("/v1/api-keys", headers={"Authorization": f"Bearer {token}"}).is_error:
            assert time.monotonic() < deadline, "a key made by the CLI was refused for 1 s"
            time.sleep(0.02)
    return token


@pytest.fixture
def http() -> Iterator[httpx.Client]:
    with httpx.Client(timeout=10) as client:
        yield client


@pytest.fixture
def client_for(server: KeyguardServer, http: httpx.Client) -> ClientFor:
    """The official client holding a given key; it must not retry and so hide an answer."""

    def connect(token: str) -> Wavix:
        return Wavix(token=token, base_url=server.base_url, httpx_client=http, max_retries=0)

    return connect


@pytest.fixture
def admin(admin_token: str, client_for: ClientFor) -> Wavix:
    return client_for(admin_token)


@pytest.fixture
def tag() -> str:
    """Starts the labels of one test's keys, so that tests sharing the account stay apart."""
    return uuid.uuid4().hex[:8]


# keyguard's fields beyond Wavix's, as a key that never expires, was not rolled,
# did not leak and has no rate limit has them; the official client keeps them as extras.
NO_LIFECYCLE = {
    "expires_at": None,
    "rolled_from": None,
    "leaked_at": None,
    "ratelimit": None,
    "remaining": None,
    "refill": None,
    "imported": None,
}


def levels(key: ApiKey) -> dict[str, str]:
    """Every scope group's level; each of the 13 must be present as an object."""
    found: dict[str, str] = {}
    for group in GROUPS:
        permission = getattr(key, group)
        assert permission is not None, f"scope group {group} is missing"
        found[group] = permission.allow
    return found


def granted(key: ApiKey) -> dict[str, str]:
    return {group: level for group, level in levels(key).items() if level != "none"}


def by_id(keys: list[ApiKey], key_id: int) -> ApiKey:
    [found] = [key for key in keys if key.id == key_id]
    return found


def test_create_answers_a_key_the_client_parses_with_scopes_and_permitted_ips(
    admin: Wavix, tag: str
) -> None:
    created: ApiKey = admin.api_keys.create(
        label=f"{tag} Messaging bot",
        restricted=True,
        permitted_ips=["192.0.2.10", "198.51.100.7"],
        scopes_enabled=True,
        messages=ApiKeyScopePermission(allow="write"),
        calls=ApiKeyCallsScopePermission(allow="read"),
    )

    assert isinstance(created, ApiKey)
    assert created.label == f"{tag} Messaging bot"
    assert created.value
    assert created.active is True
    assert created.restricted is True
    assert created.permitted_ips == ["192.0.2.10", "198.51.100.7"]
    assert created.scopes_enabled is True
    assert granted(created) == {"messages": "write", "calls": "read"}
    assert created.last_used_at is None
    assert created.created_at.utcoffset() == timedelta(0)
    assert created.created_at.microsecond == 0
    assert abs(datetime.now(UTC) - created.created_at) < timedelta(minutes=1)
    # The seed-era names ride along with the same values, then keyguard's own fields.
    assert created.model_extra == {
        "is_active": True,
        "is_restriction": True,
        "is_scopes_enabled": True,
        **NO_LIFECYCLE,
    }


def test_create_defaults_to_an_active_unrestricted_full_access_key(admin: Wavix, tag: str) -> None:
    created: ApiKey = admin.api_keys.create(label=f"{tag} Defaults")

    assert (created.active, created.restricted, created.scopes_enabled) == (True, False, False)
    assert created.permitted_ips == []
    assert granted(created) == {}


def test_list_filters_by_label_as_a_case_insensitive_substring(admin: Wavix, tag: str) -> None:
    created: list[ApiKey] = [
        admin.api_keys.create(label=f"{tag} {label}")
        for label in ("Billing production", "billing staging", "Support desk")
    ]

    found: list[ApiKey] = admin.api_keys.list(label=f"{tag.upper()} BILLING")
    everything: list[ApiKey] = admin.api_keys.list()

    assert all(isinstance(key, ApiKey) for key in found)
    assert sorted(key.label for key in found) == [
        f"{tag} Billing production",
        f"{tag} billing staging",
    ]
    assert {key.id for key in created} <= {key.id for key in everything}
    assert admin.api_keys.list(label=f"{tag} no such label") == []


def test_update_changes_only_the_given_fields(admin: Wavix, tag: str) -> None:
    key: ApiKey = admin.api_keys.create(
        label=f"{tag} Reporting",
        restricted=True,
        permitted_ips=["192.0.2.10"],
        scopes_enabled=True,
        billing=ApiKeyScopePermission(allow="read"),
    )

    renamed: ApiKey = admin.api_keys.update(
        key.id, label=f"{tag} Reporting EU", permitted_ips=["192.0.2.10", "192.0.2.11"]
    )
    paused: ApiKey = admin.api_keys.update(
        key.id, active=False, numbers=ApiKeyScopePermission(allow="read")
    )

    assert isinstance(renamed, ApiKey)
    assert (renamed.id, renamed.value, renamed.label) == (key.id, key.value, f"{tag} Reporting EU")
    assert renamed.permitted_ips == ["192.0.2.10", "192.0.2.11"]
    assert (renamed.active, renamed.restricted, renamed.scopes_enabled) == (True, True, True)
    assert granted(renamed) == {"billing": "read"}
    assert (paused.active, paused.label, paused.permitted_ips) == (
        False,
        f"{tag} Reporting EU",
        ["192.0.2.10", "192.0.2.11"],
    )
    assert granted(paused) == {"billing": "read", "numbers": "read"}
    assert paused.model_extra == {
        "is_active": False,
        "is_restriction": True,
        "is_scopes_enabled": True,
        **NO_LIFECYCLE,
    }
    assert by_id(admin.api_keys.list(), key.id) == paused


def test_a_key_with_a_rate_limit_is_parsed_and_keeps_it_through_updates(
    admin: Wavix, tag: str
) -> None:
    limit = {"limit": 100, "duration": 60}
    extra: Any = {"additional_body_parameters": {"ratelimit": limit}}
    created: ApiKey = admin.api_keys.create(label=f"{tag} Metered", request_options=extra)

    renamed: ApiKey = admin.api_keys.update(created.id, label=f"{tag} Metered EU")

    assert isinstance(created, ApiKey)
    assert created.model_extra == {
        "is_active": True,
        "is_restriction": False,
        "is_scopes_enabled": False,
        **NO_LIFECYCLE,
        "ratelimit": limit,
    }
    assert renamed.label == f"{tag} Metered EU"
    assert renamed.model_extra is not None
    assert renamed.model_extra["ratelimit"] == limit
    assert by_id(admin.api_keys.list(), created.id) == renamed


def test_a_key_with_credits_is_parsed_and_keeps_them_through_updates(
    admin: Wavix, tag: str
) -> None:
    refill = {"amount": 1000, "interval": "daily"}
    extra: Any = {"additional_body_parameters": {"remaining": 500, "refill": refill}}
    created: ApiKey = admin.api_keys.create(label=f"{tag} Credited", request_options=extra)

    renamed: ApiKey = admin.api_keys.update(created.id, label=f"{tag} Credited EU")

    assert isinstance(created, ApiKey)
    assert created.model_extra == {
        "is_active": True,
        "is_restriction": False,
        "is_scopes_enabled": False,
        **NO_LIFECYCLE,
        "remaining": 500,
        "refill": refill,
    }
    assert renamed.label == f"{tag} Credited EU"
    assert renamed.model_extra is not None
    assert renamed.model_extra["refill"] == refill
    # Each serving process may hold one credit of the key in a lease.
    assert 500 - 8 <= renamed.model_extra["remaining"] <= 500


def test_delete_answers_success_and_the_key_is_gone_from_list(admin: Wavix) -> None:
    key: ApiKey = admin.api_keys.create(label="Temporary")

    answer: SuccessResponse = admin.api_keys.delete(key.id)

    assert isinstance(answer, SuccessResponse)
    assert answer.success is True
    assert key.id not in [listed.id for listed in admin.api_keys.list()]
    with pytest.raises(NotFoundError) as second:
        admin.api_keys.delete(key.id)
    assert second.value.body == {"success": False, "message": "Record not found"}


def test_created_key_authenticates_until_deleted(admin: Wavix, client_for: ClientFor) -> None:
    key: ApiKey = admin.api_keys.create(label="Second client")
    holder = client_for(key.value)

    seen: list[ApiKey] = holder.api_keys.list()
    admin.api_keys.delete(key.id)

    assert key.id in [listed.id for listed in seen]
    with pytest.raises(UnauthorizedError) as refused:
        holder.api_keys.list()
    assert (refused.value.body.success, refused.value.body.error) == (False, True)
    assert refused.value.body.message == "Unauthorized"


def test_scoped_key_authenticates_but_may_not_manage_keys(
    admin: Wavix, client_for: ClientFor
) -> None:
    key: ApiKey = admin.api_keys.create(
        label="Scoped", scopes_enabled=True, messages=ApiKeyScopePermission(allow="write")
    )
    holder = client_for(key.value)

    with pytest.raises(ForbiddenError) as forbidden:
        holder.api_keys.list()
    admin.api_keys.delete(key.id)

    assert forbidden.value.body["success"] is False
    with pytest.raises(UnauthorizedError):
        holder.api_keys.list()


def test_restricted_key_answers_only_from_permitted_ips(
    admin: Wavix, client_for: ClientFor
) -> None:
    key: ApiKey = admin.api_keys.create(
        label="Office only", restricted=True, permitted_ips=["192.0.2.10"]
    )
    holder = client_for(key.value)

    with pytest.raises(ForbiddenError) as forbidden:
        holder.api_keys.list()
    admin.api_keys.update(key.id, permitted_ips=["192.0.2.10", "127.0.0.1"])

    assert forbidden.value.body == {
        "success": False,
        "message": "IP address 127.0.0.1 is not permitted for this API key",
    }
    assert key.id in [listed.id for listed in holder.api_keys.list()]


def test_last_used_at_is_the_time_of_the_request_to_the_second(
    admin: Wavix, client_for: ClientFor
) -> None:
    key: ApiKey = admin.api_keys.create(label="Used once")
    before = datetime.now(UTC).replace(microsecond=0)

    client_for(key.value).api_keys.list()
    after = datetime.now(UTC)
    used = by_id(admin.api_keys.list(), key.id)

    assert key.last_used_at is None
    assert used.last_used_at is not None
    assert before <= used.last_used_at <= after, "not the time of the request, to the second"
