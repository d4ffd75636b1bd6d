"""``/v1/api-keys``: list, create, get, update, delete, activate and deactivate.

Each test states one row of the wire contract (``wavix-api-keys.md`` §1 to §3) and
checks it through HTTP only, with exact statuses and bodies.
"""

import re
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from starlette.testclient import TestClient

from keyguard.api import create_app
from keyguard.config import SecretDisplay, Settings
from keyguard.runtime import Keyguard
from tests.conftest import (
    CLIENT_IP,
    ClientFactory,
    Tenant,
    bearer,
    create_key,
    list_keys,
    make_tenant,
)
from tests.wavix import GROUPS

KEYS = "/v1/api-keys"
FIELD_ORDER = (
    "id",
    "label",
    "value",
    "is_active",
    "active",
    "is_restriction",
    "restricted",
    "permitted_ips",
    "is_scopes_enabled",
    "scopes_enabled",
    "last_used_at",
    *GROUPS,
    "created_at",
    "expires_at",
    "rolled_from",
    "leaked_at",
    "ratelimit",
    "remaining",
    "refill",
    "imported",
)
# current name -> seed-era name
FLAG_NAMES = {
    "active": "is_active",
    "restricted": "is_restriction",
    "scopes_enabled": "is_scopes_enabled",
}
TIMESTAMP = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}Z")
SUCCESS = {"success": True}
NOT_FOUND = {"success": False, "message": "Record not found"}
UNAUTHORIZED = {"success": False, "error": True, "message": "Unauthorized"}

# A key with every kind of field set away from its default.
RICH = {
    "label": "Production",
    "restricted": True,
    "permitted_ips": ["192.0.2.1", "198.51.100.0/24"],
    "scopes_enabled": True,
    "numbers": {"allow": "read"},
    "calls": {"allow": "write"},
}


def get_key(client: TestClient, tenant: Tenant, key_id: int) -> dict[str, Any]:
    response = client.get(f"{KEYS}/{key_id}", headers=tenant.headers)
    assert response.status_code == 200, response.text
    key: dict[str, Any] = response.json()
    return key


def patch_key(client: TestClient, tenant: Tenant, key_id: int, body: object) -> dict[str, Any]:
    response = client.patch(f"{KEYS}/{key_id}", json=body, headers=tenant.headers)
    assert response.status_code == 200, response.text
    key: dict[str, Any] = response.json()
    return key


def answers(client: TestClient, token: str) -> int:
    """The status of a request made with ``token``: 200 while the key works."""
    return client.get(KEYS, headers=bearer(token)).status_code


def parse_timestamp(text: str) -> datetime:
    assert TIMESTAMP.fullmatch(text), text
    return datetime.strptime(text, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)


def defaults(label: str) -> dict[str, Any]:
    """Every field of a new key that the caller did not choose, as Wavix defaults it."""
    return {
        "label": label,
        "is_active": True,
        "active": True,
        "is_restriction": False,
        "restricted": False,
        "permitted_ips": [],
        "is_scopes_enabled": False,
        "scopes_enabled": False,
        "last_used_at": None,
        **{group: {"allow": "none"} for group in GROUPS},
        "expires_at": None,
        "rolled_from": None,
        "leaked_at": None,
        "ratelimit": None,
        "remaining": None,
        "refill": None,
        "imported": None,
    }


def chosen(key: dict[str, Any]) -> dict[str, Any]:
    """A key object without what the service assigns: id, secret and creation time."""
    return {name: value for name, value in key.items() if name not in ("id", "value", "created_at")}


# -- list -------------------------------------------------------------------------


def test_list_is_a_bare_array_of_the_callers_keys(client: TestClient, tenant: Tenant) -> None:
    first = create_key(client, tenant, label="first")
    second = create_key(client, tenant, label="second")

    response = client.get(KEYS, headers=tenant.headers)

    assert response.status_code == 200
    assert isinstance(response.json(), list)
    assert sorted(key["id"] for key in response.json()) == sorted(
        [tenant.key_id, first["id"], second["id"]]
    )


def test_list_shows_each_key_as_get_does(client: TestClient, tenant: Tenant) -> None:
    created = [create_key(client, tenant, **RICH), create_key(client, tenant)]

    listed = {key["id"]: key for key in list_keys(client, tenant)}

    for key in created:
        assert listed[key["id"]] == get_key(client, tenant, key["id"]) == key


@pytest.mark.parametrize(
    ("label", "expected"),
    [
        pytest.param("prod", {"Production billing", "PROD backup", "reprod"}, id="lower"),
        pytest.param("PROD", {"Production billing", "PROD backup", "reprod"}, id="upper"),
        pytest.param("pRoD", {"Production billing", "PROD backup", "reprod"}, id="mixed"),
        pytest.param("BILLING", {"Production billing"}, id="word_at_end"),
        pytest.param("ion bi", {"Production billing"}, id="across_a_space"),
        pytest.param("staging", {"Staging"}, id="whole_label"),
        pytest.param("CAFÉ", {"café au lait"}, id="non_ascii_letters"),
        pytest.param("nothing-like-this", set(), id="no_match"),
    ],
)
def test_if_label_filter_then_case_insensitive_substring(
    client: TestClient, tenant: Tenant, label: str, expected: set[str]
) -> None:
    for name in ("Production billing", "PROD backup", "reprod", "Staging", "café au lait"):
        create_key(client, tenant, label=name)

    assert {key["label"] for key in list_keys(client, tenant, label)} == expected


@pytest.mark.parametrize(
    ("label", "expected"),
    [
        pytest.param("%", {"100% done"}, id="percent"),
        pytest.param("0%", {"100% done"}, id="percent_after_text"),
        pytest.param("_", {"a_b"}, id="underscore"),
        pytest.param("a_b", {"a_b"}, id="underscore_between"),
        pytest.param("\\", {"back\\slash"}, id="backslash"),
    ],
)
def test_if_label_filter_has_wildcard_characters_then_they_match_literally(
    client: TestClient, tenant: Tenant, label: str, expected: set[str]
) -> None:
    for name in ("100% done", "1000 done", "a_b", "axb", "back\\slash", "backslash"):
        create_key(client, tenant, label=name)

    assert {key["label"] for key in list_keys(client, tenant, label)} == expected


def test_if_label_filter_is_empty_then_every_key(client: TestClient, tenant: Tenant) -> None:
    create_key(client, tenant, label="one")

    assert list_keys(client, tenant, "") == list_keys(client, tenant)


# -- create -----------------------------------------------------------------------


def test_create_answers_200_with_wavix_defaults(client: TestClient, tenant: Tenant) -> None:
    response = client.post(KEYS, json={"label": "ci"}, headers=tenant.headers)

    assert response.status_code == 200
    key = response.json()
    assert chosen(key) == defaults("ci")
    assert isinstance(key["id"], int)
    assert key["id"] != tenant.key_id


def test_created_key_authenticates_with_its_value(client: TestClient, tenant: Tenant) -> None:
    key = create_key(client, tenant)

    assert answers(client, key["value"]) == 200


def test_create_sets_every_field(client: TestClient, tenant: Tenant) -> None:
    levels = ("read", "write", "none")
    scopes = {group: {"allow": levels[index % 3]} for index, group in enumerate(GROUPS)}
    body = {
        "label": "Everything",
        "active": False,
        "restricted": True,
        "permitted_ips": ["192.0.2.1", "10.0.0.0/8", "2001:db8::1", "2001:db8::/32"],
        "scopes_enabled": True,
        **scopes,
    }

    key = create_key(client, tenant, **body)

    assert chosen(key) == {
        **defaults("Everything"),
        "is_active": False,
        "active": False,
        "is_restriction": True,
        "restricted": True,
        "permitted_ips": ["192.0.2.1", "10.0.0.0/8", "2001:db8::1", "2001:db8::/32"],
        "is_scopes_enabled": True,
        "scopes_enabled": True,
        **scopes,
    }
    assert get_key(client, tenant, key["id"]) == key


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        pytest.param({"is_active": False}, {"active": False}, id="is_active"),
        pytest.param(
            {"is_restriction": True, "permitted_ips": ["192.0.2.1"]},
            {"restricted": True, "permitted_ips": ["192.0.2.1"]},
            id="is_restriction",
        ),
        pytest.param({"is_scopes_enabled": True}, {"scopes_enabled": True}, id="is_scopes_enabled"),
    ],
)
def test_if_created_with_seed_era_names_then_accepted(
    client: TestClient, tenant: Tenant, fields: dict[str, Any], expected: dict[str, Any]
) -> None:
    key = create_key(client, tenant, label="seed", **fields)

    for name, value in expected.items():
        assert key[name] == value
        if name in FLAG_NAMES:
            assert key[FLAG_NAMES[name]] == value


@pytest.mark.parametrize("current", list(FLAG_NAMES))
@pytest.mark.parametrize("value", [True, False], ids=["current_true", "current_false"])
def test_if_created_with_both_generations_then_current_name_wins(
    client: TestClient, tenant: Tenant, current: str, value: bool
) -> None:
    body = {current: value, FLAG_NAMES[current]: not value, "permitted_ips": ["192.0.2.1"]}

    key = create_key(client, tenant, **body)

    assert key[current] is value
    assert key[FLAG_NAMES[current]] is value


def test_if_create_body_has_unknown_fields_then_they_are_ignored(
    client: TestClient, tenant: Tenant
) -> None:
    key = create_key(
        client,
        tenant,
        label="mine",
        colour="blue",
        id=987654321,
        value="kg_chosen_by_the_client",
        created_at="2000-01-01T00:00:00Z",
        last_used_at="2000-01-01T00:00:00Z",
    )

    assert chosen(key) == defaults("mine")
    assert key["id"] != 987654321
    assert key["value"] != "kg_chosen_by_the_client"
    assert key["created_at"] != "2000-01-01T00:00:00Z"


def test_if_created_restricted_with_an_empty_list_then_accepted(
    client: TestClient, tenant: Tenant
) -> None:
    key = create_key(client, tenant, restricted=True, permitted_ips=[])

    assert (key["restricted"], key["is_restriction"], key["permitted_ips"]) == (True, True, [])


def test_created_at_is_now_in_utc_seconds(client: TestClient, tenant: Tenant) -> None:
    before = datetime.now(UTC).replace(microsecond=0)
    key = create_key(client, tenant)
    after = datetime.now(UTC)

    assert before <= parse_timestamp(key["created_at"]) <= after


# -- the key object, however it is obtained ----------------------------------------

Reader = Callable[[TestClient, Tenant, dict[str, Any]], dict[str, Any]]
READERS: dict[str, Reader] = {
    "create": lambda _client, _tenant, key: key,
    "get": lambda client, tenant, key: get_key(client, tenant, key["id"]),
    "list": lambda client, tenant, key: next(
        listed for listed in list_keys(client, tenant) if listed["id"] == key["id"]
    ),
    "patch": lambda client, tenant, key: patch_key(client, tenant, key["id"], {}),
}


@pytest.mark.parametrize("reader", list(READERS))
def test_key_object_fields_are_in_wavix_order(
    client: TestClient, tenant: Tenant, reader: str
) -> None:
    key = READERS[reader](client, tenant, create_key(client, tenant, **RICH))

    assert tuple(key) == FIELD_ORDER


@pytest.mark.parametrize("reader", list(READERS))
@pytest.mark.parametrize(
    "flags",
    [
        pytest.param({"active": True, "restricted": False, "scopes_enabled": False}, id="defaults"),
        pytest.param({"active": False, "restricted": True, "scopes_enabled": True}, id="inverted"),
        pytest.param({"active": True, "restricted": True, "scopes_enabled": False}, id="mixed"),
    ],
)
def test_key_object_carries_both_flag_names_with_equal_values(
    client: TestClient, tenant: Tenant, reader: str, flags: dict[str, bool]
) -> None:
    created = create_key(client, tenant, permitted_ips=["192.0.2.1"], **flags)

    key = READERS[reader](client, tenant, created)

    for current, legacy in FLAG_NAMES.items():
        assert (key[current], key[legacy]) == (flags[current], flags[current])


@pytest.mark.parametrize("reader", list(READERS))
def test_key_object_scope_groups_are_always_objects(
    client: TestClient, tenant: Tenant, reader: str
) -> None:
    created = create_key(client, tenant, scopes_enabled=True, messages={"allow": "write"})

    key = READERS[reader](client, tenant, created)

    levels = {group: "write" if group == "messages" else "none" for group in GROUPS}
    assert {group: key[group] for group in GROUPS} == {
        group: {"allow": level} for group, level in levels.items()
    }


@pytest.mark.parametrize("reader", list(READERS))
def test_key_object_timestamps_are_utc_seconds_with_z(
    client: TestClient, tenant: Tenant, reader: str
) -> None:
    created = create_key(client, tenant)
    assert answers(client, created["value"]) == 200

    key = READERS[reader](client, tenant, created)

    assert TIMESTAMP.fullmatch(key["created_at"])
    if reader != "create":
        assert TIMESTAMP.fullmatch(key["last_used_at"])


# -- get one ----------------------------------------------------------------------


def test_get_one_answers_the_key_object(client: TestClient, tenant: Tenant) -> None:
    created = create_key(client, tenant, **RICH)

    response = client.get(f"{KEYS}/{created['id']}", headers=tenant.headers)

    assert response.status_code == 200
    assert response.json() == created


# -- update -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "changed"),
    [
        pytest.param({"label": "Renamed"}, {"label": "Renamed"}, id="label"),
        pytest.param({"active": False}, {"active": False, "is_active": False}, id="active"),
        pytest.param({"is_active": False}, {"active": False, "is_active": False}, id="is_active"),
        pytest.param(
            {"restricted": False}, {"restricted": False, "is_restriction": False}, id="restricted"
        ),
        pytest.param(
            {"is_restriction": False},
            {"restricted": False, "is_restriction": False},
            id="is_restriction",
        ),
        pytest.param(
            {"permitted_ips": ["203.0.113.0/24", "2001:db8::/32"]},
            {"permitted_ips": ["203.0.113.0/24", "2001:db8::/32"]},
            id="permitted_ips",
        ),
        pytest.param({"permitted_ips": []}, {"permitted_ips": []}, id="permitted_ips_emptied"),
        pytest.param(
            {"scopes_enabled": False},
            {"scopes_enabled": False, "is_scopes_enabled": False},
            id="scopes_enabled",
        ),
        pytest.param(
            {"is_scopes_enabled": False},
            {"scopes_enabled": False, "is_scopes_enabled": False},
            id="is_scopes_enabled",
        ),
        pytest.param(
            {"messages": {"allow": "write"}}, {"messages": {"allow": "write"}}, id="group_granted"
        ),
        pytest.param(
            {"calls": {"allow": "read"}}, {"calls": {"allow": "read"}}, id="group_lowered"
        ),
        pytest.param(
            {"numbers": {"allow": "none"}}, {"numbers": {"allow": "none"}}, id="group_revoked"
        ),
        pytest.param(
            {"label": "Two", "subaccounts": {"allow": "read"}},
            {"label": "Two", "subaccounts": {"allow": "read"}},
            id="two_fields",
        ),
    ],
)
def test_if_patched_then_only_given_fields_change(
    client: TestClient, tenant: Tenant, body: dict[str, Any], changed: dict[str, Any]
) -> None:
    before = create_key(client, tenant, **RICH)

    response = client.patch(f"{KEYS}/{before['id']}", json=body, headers=tenant.headers)

    assert response.status_code == 200
    assert response.json() == {**before, **changed}
    assert get_key(client, tenant, before["id"]) == {**before, **changed}


def test_if_patch_fields_are_null_then_they_are_not_given(
    client: TestClient, tenant: Tenant
) -> None:
    before = create_key(client, tenant, **RICH)
    nulls = dict.fromkeys(["label", "permitted_ips", *FLAG_NAMES, *FLAG_NAMES.values(), *GROUPS])

    assert patch_key(client, tenant, before["id"], nulls) == before


def test_if_patch_current_name_is_null_then_seed_era_name_applies(
    client: TestClient, tenant: Tenant
) -> None:
    before = create_key(client, tenant)

    after = patch_key(client, tenant, before["id"], {"active": None, "is_active": False})

    assert (after["active"], after["is_active"]) == (False, False)


@pytest.mark.parametrize("current", list(FLAG_NAMES))
@pytest.mark.parametrize("value", [True, False], ids=["current_true", "current_false"])
def test_if_patched_with_both_generations_then_current_name_wins(
    client: TestClient, tenant: Tenant, current: str, value: bool
) -> None:
    before = create_key(client, tenant, permitted_ips=["192.0.2.1"], **{current: not value})

    after = patch_key(
        client, tenant, before["id"], {current: value, FLAG_NAMES[current]: not value}
    )

    assert (after[current], after[FLAG_NAMES[current]]) == (value, value)


@pytest.mark.parametrize(
    "content", [b"", b"{}", b"  \n"], ids=["no_body", "empty_object", "whitespace"]
)
def test_if_patch_body_is_empty_then_200_and_nothing_changes(
    client: TestClient, tenant: Tenant, content: bytes
) -> None:
    before = create_key(client, tenant, **RICH)

    response = client.patch(f"{KEYS}/{before['id']}", content=content, headers=tenant.headers)

    assert response.status_code == 200
    assert response.json() == before
    assert list_keys(client, tenant)[-1] == before


@pytest.mark.parametrize(
    ("field", "value"),
    [
        pytest.param("colour", "blue", id="unknown"),
        pytest.param("id", 1, id="id"),
        pytest.param("value", "kg_x", id="value"),
        pytest.param("created_at", "2000-01-01T00:00:00Z", id="created_at"),
        pytest.param("last_used_at", None, id="last_used_at"),
        pytest.param("Label", "x", id="wrong_case"),
    ],
)
def test_if_patch_has_unknown_field_then_400_and_nothing_changes(
    client: TestClient, tenant: Tenant, field: str, value: object
) -> None:
    key = create_key(client, tenant, **RICH)
    before = list_keys(client, tenant)

    response = client.patch(
        f"{KEYS}/{key['id']}", json={"label": "Renamed", field: value}, headers=tenant.headers
    )

    assert response.status_code == 400
    assert response.json() == {"success": False, "message": f"Missing or invalid parameter {field}"}
    assert list_keys(client, tenant) == before


def test_if_patched_restricted_without_permitted_ips_then_nobody_may_use_it(
    client: TestClient, tenant: Tenant
) -> None:
    key = create_key(client, tenant)

    after = patch_key(client, tenant, key["id"], {"restricted": True})

    assert (after["restricted"], after["permitted_ips"]) == (True, [])
    assert answers(client, key["value"]) == 403


# -- delete -----------------------------------------------------------------------


def test_delete_answers_success_true(client: TestClient, tenant: Tenant) -> None:
    key = create_key(client, tenant)

    response = client.delete(f"{KEYS}/{key['id']}", headers=tenant.headers)

    assert response.status_code == 200
    assert response.json() == SUCCESS


def test_if_deleted_then_gone_from_list_and_get(client: TestClient, tenant: Tenant) -> None:
    key = create_key(client, tenant)
    client.delete(f"{KEYS}/{key['id']}", headers=tenant.headers)

    assert [listed["id"] for listed in list_keys(client, tenant)] == [tenant.key_id]
    response = client.get(f"{KEYS}/{key['id']}", headers=tenant.headers)
    assert (response.status_code, response.json()) == (404, NOT_FOUND)


def test_if_deleted_then_key_stops_authenticating_at_once(
    client: TestClient, tenant: Tenant
) -> None:
    key = create_key(client, tenant)
    assert answers(client, key["value"]) == 200

    client.delete(f"{KEYS}/{key['id']}", headers=tenant.headers)

    response = client.get(KEYS, headers=bearer(key["value"]))
    assert (response.status_code, response.json()) == (401, UNAUTHORIZED)


def test_if_deleted_twice_then_404(client: TestClient, tenant: Tenant) -> None:
    key = create_key(client, tenant)
    client.delete(f"{KEYS}/{key['id']}", headers=tenant.headers)

    response = client.delete(f"{KEYS}/{key['id']}", headers=tenant.headers)

    assert (response.status_code, response.json()) == (404, NOT_FOUND)


@pytest.mark.parametrize(
    ("method", "suffix", "body"),
    [
        pytest.param("PATCH", "", {"label": "back"}, id="update"),
        pytest.param("PATCH", "/activate", None, id="activate"),
        pytest.param("PATCH", "/deactivate", None, id="deactivate"),
    ],
)
def test_if_deleted_then_it_cannot_be_changed_or_revived(
    client: TestClient, tenant: Tenant, method: str, suffix: str, body: object
) -> None:
    key = create_key(client, tenant)
    client.delete(f"{KEYS}/{key['id']}", headers=tenant.headers)

    response = client.request(
        method, f"{KEYS}/{key['id']}{suffix}", json=body, headers=tenant.headers
    )

    assert (response.status_code, response.json()) == (404, NOT_FOUND)
    assert answers(client, key["value"]) == 401


# -- activate and deactivate (older generation) ----------------------------------------


def test_deactivate_answers_success_and_key_stops_authenticating(
    client: TestClient, tenant: Tenant
) -> None:
    key = create_key(client, tenant)

    response = client.patch(f"{KEYS}/{key['id']}/deactivate", headers=tenant.headers)

    assert (response.status_code, response.json()) == (200, SUCCESS)
    after = get_key(client, tenant, key["id"])
    assert (after["active"], after["is_active"]) == (False, False)
    assert answers(client, key["value"]) == 401


def test_activate_answers_success_and_key_authenticates_again(
    client: TestClient, tenant: Tenant
) -> None:
    key = create_key(client, tenant, active=False)
    assert answers(client, key["value"]) == 401

    response = client.patch(f"{KEYS}/{key['id']}/activate", headers=tenant.headers)

    assert (response.status_code, response.json()) == (200, SUCCESS)
    after = get_key(client, tenant, key["id"])
    assert (after["active"], after["is_active"]) == (True, True)
    assert answers(client, key["value"]) == 200


@pytest.mark.parametrize(
    ("action", "active"),
    [("activate", True), ("deactivate", False)],
    ids=["activate", "deactivate"],
)
def test_activate_and_deactivate_change_nothing_else_and_repeat_safely(
    client: TestClient, tenant: Tenant, action: str, active: bool
) -> None:
    key = create_key(client, tenant, **RICH)

    for _ in range(2):
        response = client.patch(f"{KEYS}/{key['id']}/{action}", headers=tenant.headers)
        assert (response.status_code, response.json()) == (200, SUCCESS)

    assert get_key(client, tenant, key["id"]) == {**key, "active": active, "is_active": active}


@pytest.mark.parametrize(
    "body", [{"active": False}, {"is_active": False}], ids=["active", "is_active"]
)
def test_if_patched_inactive_then_key_stops_authenticating(
    client: TestClient, tenant: Tenant, body: dict[str, Any]
) -> None:
    key = create_key(client, tenant)

    patch_key(client, tenant, key["id"], body)

    assert answers(client, key["value"]) == 401


# -- last_used_at -----------------------------------------------------------------


def test_last_used_at_is_null_until_the_key_is_used(client: TestClient, tenant: Tenant) -> None:
    key = create_key(client, tenant)

    assert key["last_used_at"] is None
    assert get_key(client, tenant, key["id"])["last_used_at"] is None
    assert list_keys(client, tenant)[-1]["last_used_at"] is None


def test_if_key_is_used_then_last_used_at_is_about_now(client: TestClient, tenant: Tenant) -> None:
    key = create_key(client, tenant)
    before = datetime.now(UTC).replace(microsecond=0)

    assert answers(client, key["value"]) == 200

    used = parse_timestamp(get_key(client, tenant, key["id"])["last_used_at"])
    assert before <= used <= datetime.now(UTC)


def test_if_key_is_used_again_later_then_last_used_at_advances(
    client: TestClient, tenant: Tenant
) -> None:
    key = create_key(client, tenant)
    answers(client, key["value"])
    first = parse_timestamp(get_key(client, tenant, key["id"])["last_used_at"])

    time.sleep(1.1)  # timestamps have second precision
    answers(client, key["value"])

    second = parse_timestamp(get_key(client, tenant, key["id"])["last_used_at"])
    assert first < second <= datetime.now(UTC) + timedelta(seconds=1)


@pytest.mark.parametrize(
    ("fields", "ip", "status"),
    [
        pytest.param(
            {"restricted": True, "permitted_ips": ["192.0.2.1"]},
            "198.51.100.7",
            403,
            id="ip_refused",
        ),
        pytest.param({"scopes_enabled": True}, "203.0.113.10", 403, id="scope_refused"),
        pytest.param({"active": False}, "203.0.113.10", 401, id="inactive"),
    ],
)
def test_if_key_is_refused_then_last_used_at_stays_null(
    client: TestClient,
    client_from: ClientFactory,
    tenant: Tenant,
    fields: dict[str, Any],
    ip: str,
    status: int,
) -> None:
    key = create_key(client, tenant, **fields)

    assert answers(client_from(ip), key["value"]) == status

    assert get_key(client, tenant, key["id"])["last_used_at"] is None


# -- the secret value (section 6) -----------------------------------------------------------


def test_by_default_every_answer_shows_the_full_value(client: TestClient, tenant: Tenant) -> None:
    created = create_key(client, tenant)

    shown = [reader(client, tenant, created)["value"] for reader in READERS.values()]

    assert shown == [created["value"]] * len(READERS)


@pytest.fixture
def masked(settings: Settings) -> Iterator[tuple[TestClient, Tenant]]:
    """A keyguard whose secret display is ``masked``, and an account on it."""
    runtime = Keyguard(settings.model_copy(update={"secret_display": SecretDisplay.MASKED}))
    runtime.store.migrate()
    owner = make_tenant(runtime, "masked")
    with TestClient(create_app(keyguard=runtime), client=(CLIENT_IP, 50000)) as client:
        yield client, owner


@pytest.mark.parametrize("reader", [name for name in READERS if name != "create"])
def test_if_display_is_masked_then_only_create_shows_the_value(
    masked: tuple[TestClient, Tenant], reader: str
) -> None:
    client, tenant = masked
    created = create_key(client, tenant)
    secret = created["value"]
    assert answers(client, secret) == 200

    shown = READERS[reader](client, tenant, created)["value"]

    prefix, _, tail = secret.rpartition("_")
    assert shown != secret
    assert shown.startswith(f"{prefix}_")
    assert shown.endswith(tail[-4:])
    assert tail[:-4] not in shown
