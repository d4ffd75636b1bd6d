"""What ``/v1/api-keys`` refuses, with which status and which message (§3).

Every refusal must leave the account exactly as it was: each test compares the
account's list of keys before and after the refused request.
"""

from typing import Any

import pytest
from starlette.testclient import TestClient

from tests.conftest import ClientFactory, Tenant, create_key, list_keys
from tests.wavix import GROUPS

KEYS = "/v1/api-keys"
IP_FORMAT = "Ip has incorrect format"
LABEL_TOO_LONG = "Label is too long (maximum is 255 characters)"
TOO_MANY_IPS = "Too many permitted_ips (maximum is 100)"
NOT_FOUND = {"success": False, "message": "Record not found"}


def invalid(name: str) -> str:
    return f"Missing or invalid parameter {name}"


def addresses(count: int) -> list[str]:
    return [f"10.0.{index // 256}.{index % 256}" for index in range(count)]


@pytest.fixture
def target(client: TestClient, tenant: Tenant) -> dict[str, Any]:
    """A key for PATCH requests to aim at, with nothing at its default."""
    return create_key(
        client,
        tenant,
        restricted=True,
        permitted_ips=["192.0.2.1"],
        scopes_enabled=True,
        numbers={"allow": "read"},
    )


def refused_create(client: TestClient, tenant: Tenant, **request: Any) -> tuple[int, object]:
    """POST a refused body; the account's keys must not change."""
    before = list_keys(client, tenant)
    response = client.post(KEYS, headers=tenant.headers, **request)
    assert list_keys(client, tenant) == before
    return response.status_code, response.json()


def refused_patch(
    client: TestClient, tenant: Tenant, key_id: int, **request: Any
) -> tuple[int, object]:
    """PATCH a refused body; the account's keys must not change."""
    before = list_keys(client, tenant)
    response = client.patch(f"{KEYS}/{key_id}", headers=tenant.headers, **request)
    assert list_keys(client, tenant) == before
    return response.status_code, response.json()


# Fields refused on create and on update alike: (fields, status, message).
INVALID_FIELDS = [
    # permitted_ips entries that are neither addresses nor CIDR ranges
    pytest.param({"permitted_ips": ["256.0.0.1"]}, 422, IP_FORMAT, id="ipv4_out_of_range"),
    pytest.param({"permitted_ips": ["192.0.2"]}, 422, IP_FORMAT, id="ipv4_too_short"),
    pytest.param({"permitted_ips": ["192.0.2.1.5"]}, 422, IP_FORMAT, id="ipv4_too_long"),
    pytest.param({"permitted_ips": ["010.0.0.1"]}, 422, IP_FORMAT, id="ipv4_leading_zero"),
    pytest.param({"permitted_ips": ["example.com"]}, 422, IP_FORMAT, id="hostname"),
    pytest.param({"permitted_ips": [""]}, 422, IP_FORMAT, id="empty_string"),
    pytest.param({"permitted_ips": [" 192.0.2.1"]}, 422, IP_FORMAT, id="leading_space"),
    pytest.param({"permitted_ips": ["192.0.2.*"]}, 422, IP_FORMAT, id="wildcard"),
    pytest.param({"permitted_ips": ["192.0.2.1-192.0.2.9"]}, 422, IP_FORMAT, id="range"),
    pytest.param({"permitted_ips": ["10.0.0.0/33"]}, 422, IP_FORMAT, id="cidr_prefix_too_long"),
    pytest.param({"permitted_ips": ["10.0.0.0/"]}, 422, IP_FORMAT, id="cidr_without_prefix"),
    pytest.param({"permitted_ips": ["10.0.0.1/8"]}, 422, IP_FORMAT, id="cidr_with_host_bits"),
    pytest.param({"permitted_ips": ["2001:db8:::1"]}, 422, IP_FORMAT, id="ipv6_malformed"),
    pytest.param({"permitted_ips": ["2001:db8::1/32"]}, 422, IP_FORMAT, id="ipv6_cidr_host_bits"),
    pytest.param({"permitted_ips": ["192.0.2.1", "nope"]}, 422, IP_FORMAT, id="one_bad_entry"),
    # permitted_ips of the wrong JSON type
    pytest.param({"permitted_ips": "192.0.2.1"}, 400, invalid("permitted_ips"), id="ips_string"),
    pytest.param(
        {"permitted_ips": {"ip": "192.0.2.1"}}, 400, invalid("permitted_ips"), id="ips_object"
    ),
    pytest.param(
        {"permitted_ips": [3232235521]}, 400, invalid("permitted_ips"), id="ips_entry_number"
    ),
    pytest.param(
        {"permitted_ips": [["192.0.2.1"]]}, 400, invalid("permitted_ips"), id="ips_entry_list"
    ),
    pytest.param({"permitted_ips": addresses(101)}, 422, TOO_MANY_IPS, id="ips_101_entries"),
    # label
    pytest.param({"label": ""}, 400, invalid("label"), id="label_empty"),
    pytest.param({"label": "   "}, 400, invalid("label"), id="label_blank"),
    pytest.param({"label": 123}, 400, invalid("label"), id="label_number"),
    pytest.param({"label": True}, 400, invalid("label"), id="label_bool"),
    pytest.param({"label": ["ci"]}, 400, invalid("label"), id="label_list"),
    pytest.param({"label": {"name": "ci"}}, 400, invalid("label"), id="label_object"),
    pytest.param({"label": "a" * 256}, 422, LABEL_TOO_LONG, id="label_256_chars"),
    pytest.param({"label": "é" * 256}, 422, LABEL_TOO_LONG, id="label_256_non_ascii_chars"),
    # flags of the wrong JSON type, under either generation's name
    pytest.param({"active": "true"}, 400, invalid("active"), id="active_string"),
    pytest.param({"is_active": 1}, 400, invalid("is_active"), id="is_active_number"),
    pytest.param({"restricted": "yes"}, 400, invalid("restricted"), id="restricted_string"),
    pytest.param({"is_restriction": 0}, 400, invalid("is_restriction"), id="is_restriction_number"),
    pytest.param({"scopes_enabled": []}, 400, invalid("scopes_enabled"), id="scopes_enabled_list"),
    pytest.param(
        {"is_scopes_enabled": {}}, 400, invalid("is_scopes_enabled"), id="is_scopes_enabled_object"
    ),
    # scope groups
    pytest.param(
        {"numbers": "read"}, 422, "API key scope numbers: must be a hash", id="scope_string"
    ),
    pytest.param(
        {"numbers": ["read"]}, 422, "API key scope numbers: must be a hash", id="scope_list"
    ),
    pytest.param({"numbers": 2}, 422, "API key scope numbers: must be a hash", id="scope_number"),
    pytest.param({"numbers": True}, 422, "API key scope numbers: must be a hash", id="scope_bool"),
    pytest.param(
        {"numbers": {"allow": "read", "deny": "write"}},
        422,
        'API key scope numbers: must have only "allow" key',
        id="scope_extra_key",
    ),
    pytest.param(
        {"numbers": {"level": "read"}},
        422,
        'API key scope numbers: must have only "allow" key',
        id="scope_other_key",
    ),
    pytest.param(
        {"numbers": {"allow": "admin"}},
        422,
        "API key scope numbers: allow must be one of: none, read, write",
        id="allow_unknown_level",
    ),
    pytest.param(
        {"numbers": {"allow": "READ"}},
        422,
        "API key scope numbers: allow must be one of: none, read, write",
        id="allow_upper_case",
    ),
    pytest.param(
        {"numbers": {"allow": 1}},
        422,
        "API key scope numbers: allow must be one of: none, read, write",
        id="allow_number",
    ),
    pytest.param(
        {"numbers": {"allow": ["read"]}},
        422,
        "API key scope numbers: allow must be one of: none, read, write",
        id="allow_list",
    ),
]

SCOPE_REFUSALS = [
    pytest.param("read", "must be a hash", id="not_a_hash"),
    pytest.param({"allow": "read", "extra": "x"}, 'must have only "allow" key', id="extra_key"),
    pytest.param({"allow": "all"}, "allow must be one of: none, read, write", id="bad_allow"),
]

ACCEPTED_ENTRIES = [
    pytest.param("192.0.2.1", id="ipv4"),
    pytest.param("192.0.2.1/32", id="ipv4_single_host_cidr"),
    pytest.param("10.0.0.0/8", id="ipv4_cidr"),
    pytest.param("0.0.0.0/0", id="ipv4_everything"),
    pytest.param("2001:db8::1", id="ipv6"),
    pytest.param("2001:db8::/32", id="ipv6_cidr"),
    pytest.param("::/0", id="ipv6_everything"),
]


# -- fields, on create and on update --------------------------------------------------


@pytest.mark.parametrize(("fields", "status", "message"), INVALID_FIELDS)
def test_if_create_field_is_invalid_then_refused(
    client: TestClient, tenant: Tenant, fields: dict[str, Any], status: int, message: str
) -> None:
    body = {"label": "new key", **fields}

    assert refused_create(client, tenant, json=body) == (
        status,
        {"success": False, "message": message},
    )


@pytest.mark.parametrize(("fields", "status", "message"), INVALID_FIELDS)
def test_if_patch_field_is_invalid_then_refused_and_nothing_changes(
    client: TestClient,
    tenant: Tenant,
    target: dict[str, Any],
    fields: dict[str, Any],
    status: int,
    message: str,
) -> None:
    # A valid change travels with the invalid one: neither may be applied.
    valid = {"active": False} if "label" in fields else {"label": "renamed"}

    assert refused_patch(client, tenant, target["id"], json={**valid, **fields}) == (
        status,
        {"success": False, "message": message},
    )


@pytest.mark.parametrize(("value", "problem"), SCOPE_REFUSALS)
@pytest.mark.parametrize("group", GROUPS)
def test_if_scope_group_is_invalid_then_422_naming_that_group(
    client: TestClient, tenant: Tenant, group: str, value: object, problem: str
) -> None:
    body = {"label": "new key", group: value}

    assert refused_create(client, tenant, json=body) == (
        422,
        {"success": False, "message": f"API key scope {group}: {problem}"},
    )


@pytest.mark.parametrize("entry", ACCEPTED_ENTRIES)
def test_if_permitted_ip_is_an_address_or_cidr_range_then_accepted(
    client: TestClient, tenant: Tenant, target: dict[str, Any], entry: str
) -> None:
    created = create_key(client, tenant, restricted=True, permitted_ips=[entry])
    response = client.patch(
        f"{KEYS}/{target['id']}", json={"permitted_ips": [entry]}, headers=tenant.headers
    )

    assert created["permitted_ips"] == [entry]
    assert response.status_code == 200
    assert response.json()["permitted_ips"] == [entry]


@pytest.mark.parametrize(
    ("entry", "stored"),
    [
        pytest.param("::ffff:192.0.2.1", "192.0.2.1", id="address"),
        pytest.param("::ffff:192.0.2.0/120", "192.0.2.0/24", id="range"),
    ],
)
def test_if_permitted_ip_is_ipv4_mapped_then_stored_as_ipv4_and_matches_that_client(
    client_from: ClientFactory, client: TestClient, tenant: Tenant, entry: str, stored: str
) -> None:
    key = create_key(client, tenant, restricted=True, permitted_ips=[entry])
    path = f"{KEYS}/{key['id']}"

    def status_from(ip: str) -> int:
        return (
            client_from(ip)
            .get(path, headers={"Authorization": f"Bearer {key['value']}"})
            .status_code
        )

    assert key["permitted_ips"] == [stored]
    assert (status_from("192.0.2.1"), status_from("::ffff:192.0.2.1")) == (200, 200)
    assert status_from("198.51.100.1") == 403


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        pytest.param({"label": "a" * 255}, {"label": "a" * 255}, id="label_255_chars"),
        pytest.param({"label": "é" * 255}, {"label": "é" * 255}, id="label_255_non_ascii_chars"),
        pytest.param(
            {"permitted_ips": addresses(100)},
            {"permitted_ips": addresses(100)},
            id="ips_100_entries",
        ),
    ],
)
def test_if_at_the_limit_then_accepted(
    client: TestClient, tenant: Tenant, fields: dict[str, Any], expected: dict[str, Any]
) -> None:
    key = create_key(client, tenant, **fields)

    assert {name: key[name] for name in expected} == expected


# -- create only ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "body",
    [
        pytest.param({}, id="empty_object"),
        pytest.param({"active": True}, id="other_fields_only"),
        pytest.param({"label": None}, id="null"),
    ],
)
def test_if_create_has_no_label_then_400(
    client: TestClient, tenant: Tenant, body: dict[str, Any]
) -> None:
    assert refused_create(client, tenant, json=body) == (
        400,
        {"success": False, "message": invalid("label")},
    )


@pytest.mark.parametrize(
    "fields",
    [
        pytest.param({"restricted": True}, id="restricted"),
        pytest.param({"is_restriction": True}, id="is_restriction"),
        pytest.param({"restricted": True, "permitted_ips": None}, id="permitted_ips_null"),
        pytest.param({"restricted": True, "is_restriction": False}, id="current_name_wins"),
    ],
)
def test_if_created_restricted_without_permitted_ips_then_400(
    client: TestClient, tenant: Tenant, fields: dict[str, Any]
) -> None:
    body = {"label": "new key", **fields}

    assert refused_create(client, tenant, json=body) == (
        400,
        {"success": False, "message": invalid("permitted_ips")},
    )


# -- bodies ----------------------------------------------------------------------------

NOT_OBJECTS = [
    pytest.param(b"[]", id="array"),
    pytest.param(b'[{"label": "x"}]', id="array_of_object"),
    pytest.param(b'"label"', id="string"),
    pytest.param(b"1", id="number"),
    pytest.param(b"true", id="bool"),
    pytest.param(b"null", id="null"),
]
MALFORMED = [
    pytest.param(b"{", id="unclosed"),
    pytest.param(b"{'label': 'x'}", id="single_quotes"),
    pytest.param(b"label=x", id="form_encoded"),
    pytest.param(b'{"label": "x",}', id="trailing_comma"),
    pytest.param(b'{"label": "x"} {}', id="two_documents"),
    pytest.param(b'{"label": "x"', id="truncated"),
]
BODY = {"success": False, "message": invalid("body")}


@pytest.mark.parametrize("content", [*NOT_OBJECTS, *MALFORMED])
def test_if_create_body_is_not_a_json_object_then_400_body(
    client: TestClient, tenant: Tenant, content: bytes
) -> None:
    assert refused_create(client, tenant, content=content) == (400, BODY)


@pytest.mark.parametrize("content", [b"", b" \r\n\t"], ids=["empty", "whitespace"])
def test_if_create_body_is_empty_then_400_body(
    client: TestClient, tenant: Tenant, content: bytes
) -> None:
    assert refused_create(client, tenant, content=content) == (400, BODY)


@pytest.mark.parametrize("content", [*NOT_OBJECTS, *MALFORMED])
def test_if_patch_body_is_not_a_json_object_then_400_body(
    client: TestClient, tenant: Tenant, target: dict[str, Any], content: bytes
) -> None:
    assert refused_patch(client, tenant, target["id"], content=content) == (400, BODY)


# -- the {id} in the path -----------------------------------------------------------------

OPERATIONS = [
    pytest.param("GET", "", id="get"),
    pytest.param("PATCH", "", id="update"),
    pytest.param("DELETE", "", id="delete"),
    pytest.param("PATCH", "/activate", id="activate"),
    pytest.param("PATCH", "/deactivate", id="deactivate"),
]


@pytest.mark.parametrize(
    "key_id",
    [
        pytest.param("abc", id="word"),
        pytest.param("1.5", id="decimal"),
        pytest.param("1e3", id="exponent"),
        pytest.param("-1", id="negative"),
        pytest.param("0", id="zero"),
        pytest.param("987654321", id="unknown"),
        pytest.param(str(2**63 - 1), id="largest_int64"),
        pytest.param(str(2**63), id="past_int64"),
        pytest.param(str(10**30), id="huge"),
    ],
)
@pytest.mark.parametrize(("method", "suffix"), OPERATIONS)
def test_if_id_is_not_a_key_then_404_record_not_found(
    client: TestClient, tenant: Tenant, method: str, suffix: str, key_id: str
) -> None:
    before = list_keys(client, tenant)

    response = client.request(
        method, f"{KEYS}/{key_id}{suffix}", json={"label": "x"}, headers=tenant.headers
    )

    assert (response.status_code, response.json()) == (404, NOT_FOUND)
    assert list_keys(client, tenant) == before


def test_if_label_filter_is_longer_than_a_label_then_400(
    client: TestClient, tenant: Tenant
) -> None:
    response = client.get(KEYS, params={"label": "a" * 256}, headers=tenant.headers)

    assert (response.status_code, response.json()) == (
        400,
        {"success": False, "message": invalid("label")},
    )


@pytest.mark.parametrize(
    "query",
    [
        pytest.param("label=a%00b", id="nul"),
        pytest.param("label=%00", id="only_nul"),
        pytest.param("label=a%01b", id="control_character"),
        pytest.param("label=a%09b", id="tab"),
        pytest.param("label=a%7Fb", id="delete"),
        pytest.param("label=a%C2%85b", id="c1_control_character"),
    ],
)
def test_if_label_filter_has_a_character_no_label_has_then_400(
    client: TestClient, tenant: Tenant, query: str
) -> None:
    # A label never holds control characters, and PostgreSQL cannot compare NUL.
    response = client.get(f"{KEYS}?{query}", headers=tenant.headers)

    assert (response.status_code, response.json()) == (
        400,
        {"success": False, "message": invalid("label")},
    )
