"""Who may use ``/v1/api-keys``: authentication, IP restriction, scopes, accounts (§5).

Refusals carry Wavix's bodies; a refused request changes nothing.
"""

from collections.abc import Iterator
from typing import Any

import pytest
from starlette.testclient import TestClient

from keyguard.api import create_app
from keyguard.config import Settings
from keyguard.domain.keys import ALPHABET, generate
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
UNAUTHORIZED = {"success": False, "error": True, "message": "Unauthorized"}
FULL_ACCESS_REQUIRED = {"success": False, "message": "API key with full access required"}
NOT_FOUND = {"success": False, "message": "Record not found"}


def with_other_last_character(token: str) -> str:
    return token[:-1] + ("A" if token[-1] != "A" else "B")


def with_other_body_character(token: str) -> str:
    """``token`` with one secret character changed, so its checksum no longer fits."""
    index = token.index("_") + 1
    replacement = ALPHABET[(ALPHABET.index(token[index]) + 1) % len(ALPHABET)]
    return token[:index] + replacement + token[index + 1 :]


# Every management operation, as (method, path after /v1/api-keys, body).
ON_ONE_KEY = [
    pytest.param("GET", "/{id}", None, id="get"),
    pytest.param("PATCH", "/{id}", {"label": "changed"}, id="update"),
    pytest.param("DELETE", "/{id}", None, id="delete"),
    pytest.param("PATCH", "/{id}/activate", None, id="activate"),
    pytest.param("PATCH", "/{id}/deactivate", None, id="deactivate"),
]
OPERATIONS = [
    pytest.param("GET", "", None, id="list"),
    pytest.param("POST", "", {"label": "minted"}, id="create"),
    *ON_ONE_KEY,
]


# -- authentication ---------------------------------------------------------------


@pytest.mark.parametrize(("method", "path", "body"), OPERATIONS)
def test_if_no_key_then_401_on_every_operation(
    client: TestClient, tenant: Tenant, method: str, path: str, body: object
) -> None:
    before = list_keys(client, tenant)

    response = client.request(method, KEYS + path.format(id=tenant.key_id), json=body)

    assert (response.status_code, response.json()) == (401, UNAUTHORIZED)
    assert list_keys(client, tenant) == before


def spoilt(token: str) -> dict[str, str]:
    """Near misses of a live ``token``, by name, for ``Authorization`` templates."""
    return {
        "token": token,
        "unknown": generate("kg"),
        "bad_checksum": with_other_last_character(token),
        "bad_secret": with_other_body_character(token),
        "truncated": token[:-1],
        "upper": token.upper(),
    }


@pytest.mark.parametrize(
    "authorization",
    [
        pytest.param("", id="empty_header"),
        pytest.param("Bearer", id="scheme_only"),
        pytest.param("Bearer ", id="scheme_and_space"),
        pytest.param("Basic {token}", id="basic_scheme"),
        pytest.param("Token {token}", id="other_scheme"),
        pytest.param("{token}", id="no_scheme"),
        pytest.param("Bearer {unknown}", id="unknown_key"),
        pytest.param("Bearer not-a-key", id="garbage"),
        pytest.param("Bearer {bad_checksum}", id="bad_checksum"),
        pytest.param("Bearer {bad_secret}", id="bad_secret"),
        pytest.param("Bearer {truncated}", id="truncated"),
        pytest.param("Bearer {token}x", id="extended"),
        pytest.param("Bearer {token} {token}", id="two_tokens"),
        pytest.param("Bearer {upper}", id="upper_cased_token"),
    ],
)
def test_if_key_is_not_a_live_key_then_401(
    client: TestClient, tenant: Tenant, authorization: str
) -> None:
    headers = {"Authorization": authorization.format(**spoilt(tenant.token))}

    response = client.get(KEYS, headers=headers)

    assert (response.status_code, response.json()) == (401, UNAUTHORIZED)


@pytest.mark.parametrize(
    ("method", "suffix", "fields"),
    [
        pytest.param("DELETE", "", None, id="deleted"),
        pytest.param("PATCH", "/deactivate", None, id="deactivated"),
        pytest.param("PATCH", "", {"active": False}, id="patched_inactive"),
        pytest.param("PATCH", "", {"is_active": False}, id="patched_is_active_false"),
    ],
)
def test_if_key_was_deleted_or_made_inactive_then_401(
    client: TestClient, tenant: Tenant, method: str, suffix: str, fields: object
) -> None:
    key = create_key(client, tenant)
    url = f"{KEYS}/{key['id']}{suffix}"
    assert client.request(method, url, json=fields, headers=tenant.headers).status_code == 200

    response = client.get(KEYS, headers=bearer(key["value"]))

    assert (response.status_code, response.json()) == (401, UNAUTHORIZED)


@pytest.mark.parametrize("fields", [{"active": False}, {"is_active": False}], ids=str)
def test_if_key_was_created_inactive_then_401(
    client: TestClient, tenant: Tenant, fields: dict[str, Any]
) -> None:
    key = create_key(client, tenant, **fields)

    response = client.get(KEYS, headers=bearer(key["value"]))

    assert (response.status_code, response.json()) == (401, UNAUTHORIZED)


def test_if_inactive_key_from_permitted_ip_then_still_401(
    client: TestClient, client_from: ClientFactory, tenant: Tenant
) -> None:
    key = create_key(client, tenant, active=False, restricted=True, permitted_ips=["192.0.2.1"])

    response = client_from("192.0.2.1").get(KEYS, headers=bearer(key["value"]))

    assert (response.status_code, response.json()) == (401, UNAUTHORIZED)


@pytest.mark.parametrize("scheme", ["Bearer", "bearer", "BEARER", "bEaReR"])
def test_bearer_scheme_is_case_insensitive(client: TestClient, tenant: Tenant, scheme: str) -> None:
    response = client.get(KEYS, headers={"Authorization": f"{scheme} {tenant.token}"})

    assert response.status_code == 200


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        pytest.param("GET", "", None, id="list"),
        pytest.param("POST", "", {"label": "by appid"}, id="create"),
        pytest.param("GET", "/{id}", None, id="get"),
    ],
)
def test_if_key_in_appid_query_then_authenticated(
    client: TestClient, tenant: Tenant, method: str, path: str, body: object
) -> None:
    url = KEYS + path.format(id=tenant.key_id)

    response = client.request(method, url, params={"appid": tenant.token}, json=body)

    assert response.status_code == 200


def test_if_header_and_appid_name_different_keys_then_header_wins(
    client: TestClient, tenant: Tenant, other_tenant: Tenant
) -> None:
    response = client.get(KEYS, params={"appid": other_tenant.token}, headers=tenant.headers)

    assert response.status_code == 200
    assert [key["id"] for key in response.json()] == [tenant.key_id]


def test_if_header_is_valid_and_appid_is_not_then_200(client: TestClient, tenant: Tenant) -> None:
    response = client.get(KEYS, params={"appid": "not-a-key"}, headers=tenant.headers)

    assert response.status_code == 200


def test_if_header_is_not_valid_and_appid_is_then_401(client: TestClient, tenant: Tenant) -> None:
    response = client.get(KEYS, params={"appid": tenant.token}, headers=bearer("not-a-key"))

    assert (response.status_code, response.json()) == (401, UNAUTHORIZED)


@pytest.mark.parametrize(
    "values",
    [
        pytest.param(("{token}", "{token}"), id="same_key_twice"),
        pytest.param(("{token}", "not-a-key"), id="valid_then_invalid"),
        pytest.param(("not-a-key", "{token}"), id="invalid_then_valid"),
    ],
)
def test_if_two_authorization_headers_then_401(
    client: TestClient, tenant: Tenant, values: tuple[str, str]
) -> None:
    headers = [("Authorization", "Bearer " + value.format(token=tenant.token)) for value in values]

    response = client.get(KEYS, headers=headers)

    assert (response.status_code, response.json()) == (401, UNAUTHORIZED)


# -- scoped keys may not manage keys ----------------------------------------------------


@pytest.mark.parametrize(
    "scopes",
    [
        pytest.param({}, id="no_groups"),
        pytest.param({group: {"allow": "write"} for group in GROUPS}, id="every_group_write"),
    ],
)
@pytest.mark.parametrize(("method", "path", "body"), OPERATIONS)
def test_if_scoped_key_manages_keys_then_403(
    client: TestClient,
    tenant: Tenant,
    scopes: dict[str, Any],
    method: str,
    path: str,
    body: object,
) -> None:
    scoped = create_key(client, tenant, label="scoped", scopes_enabled=True, **scopes)
    before = list_keys(client, tenant)

    url = KEYS + path.format(id=scoped["id"])
    response = client.request(method, url, json=body, headers=bearer(scoped["value"]))

    assert (response.status_code, response.json()) == (403, FULL_ACCESS_REQUIRED)
    assert list_keys(client, tenant) == before


def test_if_scoped_key_in_appid_manages_keys_then_403(client: TestClient, tenant: Tenant) -> None:
    scoped = create_key(client, tenant, is_scopes_enabled=True, numbers={"allow": "write"})

    response = client.get(KEYS, params={"appid": scoped["value"]})

    assert (response.status_code, response.json()) == (403, FULL_ACCESS_REQUIRED)


def test_if_key_scopes_are_switched_off_then_it_manages_keys_again(
    client: TestClient, tenant: Tenant
) -> None:
    scoped = create_key(client, tenant, scopes_enabled=True)
    assert client.get(KEYS, headers=bearer(scoped["value"])).status_code == 403

    client.patch(f"{KEYS}/{scoped['id']}", json={"scopes_enabled": False}, headers=tenant.headers)

    assert client.get(KEYS, headers=bearer(scoped["value"])).status_code == 200


# -- scopes on the Wavix routes keyguard guards ---------------------------------------------
# keyguard guards every /v1/ path but serves only /v1/api-keys, so a request its
# guard lets through ends in the app's own 404; a refusal is the guard's 403.

PASSED_THE_GUARD = (404, {"success": False, "message": "Route not found"})


def scope_refusal(group: str, level: str) -> tuple[int, dict[str, object]]:
    return 403, {"success": False, "message": f"API key scope {group}: {level} access required"}


@pytest.mark.parametrize(
    ("fields", "method", "path", "expected"),
    [
        pytest.param(
            {"numbers": {"allow": "read"}},
            "GET",
            "/v1/numbers",
            PASSED_THE_GUARD,
            id="read_allows_get",
        ),
        pytest.param(
            {"numbers": {"allow": "read"}},
            "PATCH",
            "/v1/numbers/5",
            scope_refusal("numbers", "write"),
            id="read_refuses_patch",
        ),
        pytest.param(
            {"numbers": {"allow": "read"}},
            "DELETE",
            "/v1/numbers",
            scope_refusal("numbers", "write"),
            id="read_refuses_delete",
        ),
        pytest.param(
            {"numbers": {"allow": "write"}},
            "GET",
            "/v1/numbers",
            PASSED_THE_GUARD,
            id="write_includes_read",
        ),
        pytest.param(
            {"numbers": {"allow": "write"}},
            "PATCH",
            "/v1/numbers/5",
            PASSED_THE_GUARD,
            id="write_allows_patch",
        ),
        pytest.param(
            {"numbers": {"allow": "none"}},
            "GET",
            "/v1/numbers",
            scope_refusal("numbers", "read"),
            id="none_refuses_get",
        ),
        pytest.param(
            {"messages": {"allow": "write"}},
            "GET",
            "/v1/numbers",
            scope_refusal("numbers", "read"),
            id="other_group_refused",
        ),
        pytest.param(
            {"calls": {"allow": "read"}},
            "POST",
            "/v1/cdrs",
            PASSED_THE_GUARD,
            id="cdr_search_needs_read",
        ),
        pytest.param(
            {"calls": {"allow": "read"}},
            "POST",
            "/v1/cdr",
            PASSED_THE_GUARD,
            id="older_cdr_search_needs_read",
        ),
        pytest.param(
            {}, "POST", "/v1/cdrs", scope_refusal("calls", "read"), id="cdr_search_without_calls"
        ),
        pytest.param(
            {"calls": {"allow": "read"}},
            "PUT",
            "/v1/cdrs/abc/retranscribe",
            scope_refusal("calls", "write"),
            id="cdr_write_needs_write",
        ),
    ],
)
def test_scoped_key_may_do_what_its_groups_allow(
    client: TestClient,
    tenant: Tenant,
    fields: dict[str, Any],
    method: str,
    path: str,
    expected: tuple[int, dict[str, object]],
) -> None:
    key = create_key(client, tenant, scopes_enabled=True, **fields)

    response = client.request(method, path, headers=bearer(key["value"]))

    assert (response.status_code, response.json()) == expected


def test_scoped_key_read_level_allows_head(client: TestClient, tenant: Tenant) -> None:
    key = create_key(client, tenant, scopes_enabled=True, numbers={"allow": "read"})
    refused = create_key(client, tenant, scopes_enabled=True)

    assert client.head("/v1/numbers", headers=bearer(key["value"])).status_code == 404
    assert client.head("/v1/numbers", headers=bearer(refused["value"])).status_code == 403


@pytest.mark.parametrize(
    "fields",
    [
        pytest.param({"scopes_enabled": False}, id="scopes_disabled"),
        pytest.param(
            {"is_scopes_enabled": False, "numbers": {"allow": "none"}}, id="groups_ignored"
        ),
    ],
)
def test_full_access_key_passes_every_scope(
    client: TestClient, tenant: Tenant, fields: dict[str, Any]
) -> None:
    key = create_key(client, tenant, **fields)

    for method, path in [("GET", "/v1/numbers"), ("PATCH", "/v1/numbers/5"), ("POST", "/v1/cdrs")]:
        response = client.request(method, path, headers=bearer(key["value"]))
        assert (response.status_code, response.json()) == PASSED_THE_GUARD


def test_if_scopes_enabled_under_seed_era_name_then_enforced(
    client: TestClient, tenant: Tenant
) -> None:
    key = create_key(client, tenant, is_scopes_enabled=True)

    response = client.get("/v1/numbers", headers=bearer(key["value"]))

    assert (response.status_code, response.json()) == scope_refusal("numbers", "read")


# -- IP restriction -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("permitted", "ip"),
    [
        pytest.param(["198.51.100.7"], "198.51.100.7", id="ipv4_address"),
        pytest.param(["10.0.0.0/8"], "10.20.30.40", id="ipv4_cidr"),
        pytest.param(["192.0.2.1", "198.51.100.0/24"], "198.51.100.99", id="second_entry"),
        pytest.param(["2001:db8::5"], "2001:db8::5", id="ipv6_address"),
        pytest.param(["2001:db8::/32"], "2001:db8:ffff::1", id="ipv6_cidr"),
        pytest.param(["0.0.0.0/0"], "203.0.113.200", id="every_ipv4"),
    ],
)
def test_if_restricted_key_from_permitted_ip_then_200(
    client: TestClient, client_from: ClientFactory, tenant: Tenant, permitted: list[str], ip: str
) -> None:
    key = create_key(client, tenant, restricted=True, permitted_ips=permitted)

    response = client_from(ip).get(f"{KEYS}/{key['id']}", headers=bearer(key["value"]))

    assert response.status_code == 200
    assert response.json()["id"] == key["id"]


@pytest.mark.parametrize(
    ("fields", "ip"),
    [
        pytest.param(
            {"restricted": True, "permitted_ips": ["198.51.100.7"]}, "198.51.100.8", id="other_ipv4"
        ),
        pytest.param(
            {"restricted": True, "permitted_ips": ["10.0.0.0/8"]}, "11.0.0.1", id="outside_cidr"
        ),
        pytest.param(
            {"restricted": True, "permitted_ips": ["2001:db8::/32"]},
            "2001:db9::1",
            id="outside_ipv6_cidr",
        ),
        pytest.param(
            {"restricted": True, "permitted_ips": ["2001:db8::/32"]},
            "192.0.2.1",
            id="ipv4_against_ipv6",
        ),
        pytest.param(
            {"restricted": True, "permitted_ips": ["192.0.2.0/24"]},
            "2001:db8::1",
            id="ipv6_against_ipv4",
        ),
        pytest.param(
            {"is_restriction": True, "permitted_ips": ["192.0.2.1"]},
            "192.0.2.2",
            id="seed_era_name",
        ),
    ],
)
def test_if_restricted_key_from_other_ip_then_403(
    client: TestClient,
    client_from: ClientFactory,
    tenant: Tenant,
    fields: dict[str, Any],
    ip: str,
) -> None:
    key = create_key(client, tenant, **fields)
    before = list_keys(client, tenant)

    response = client_from(ip).post(KEYS, json={"label": "minted"}, headers=bearer(key["value"]))

    assert (response.status_code, response.json()) == (
        403,
        {"success": False, "message": f"IP address {ip} is not permitted for this API key"},
    )
    assert list_keys(client, tenant) == before


@pytest.mark.parametrize("ip", [CLIENT_IP, "10.0.0.1", "127.0.0.1", "::1", "2001:db8::1"])
def test_if_restricted_with_an_empty_list_then_everyone_is_refused(
    client: TestClient, client_from: ClientFactory, tenant: Tenant, ip: str
) -> None:
    key = create_key(client, tenant, restricted=True, permitted_ips=[])

    response = client_from(ip).get(KEYS, headers=bearer(key["value"]))

    assert (response.status_code, response.json()) == (
        403,
        {"success": False, "message": f"IP address {ip} is not permitted for this API key"},
    )


def test_if_restriction_is_off_then_permitted_ips_are_not_enforced(
    client: TestClient, tenant: Tenant
) -> None:
    key = create_key(client, tenant, restricted=False, permitted_ips=["192.0.2.1"])

    assert client.get(KEYS, headers=bearer(key["value"])).status_code == 200


def test_if_forwarded_for_comes_from_an_untrusted_peer_then_it_is_ignored(
    client: TestClient, tenant: Tenant
) -> None:
    key = create_key(client, tenant, restricted=True, permitted_ips=["192.0.2.1"])
    headers = {**bearer(key["value"]), "X-Forwarded-For": "192.0.2.1"}

    response = client.get(KEYS, headers=headers)

    assert (response.status_code, response.json()) == (
        403,
        {"success": False, "message": f"IP address {CLIENT_IP} is not permitted for this API key"},
    )


def test_if_restriction_is_changed_then_it_applies_at_once(
    client: TestClient, tenant: Tenant
) -> None:
    key = create_key(client, tenant)
    url = f"{KEYS}/{key['id']}"

    client.patch(
        url, json={"restricted": True, "permitted_ips": ["192.0.2.1"]}, headers=tenant.headers
    )
    assert client.get(KEYS, headers=bearer(key["value"])).status_code == 403

    client.patch(url, json={"permitted_ips": [f"{CLIENT_IP}"]}, headers=tenant.headers)
    assert client.get(KEYS, headers=bearer(key["value"])).status_code == 200

    client.patch(url, json={"permitted_ips": []}, headers=tenant.headers)
    assert client.get(KEYS, headers=bearer(key["value"])).status_code == 403

    client.patch(url, json={"is_restriction": False}, headers=tenant.headers)
    assert client.get(KEYS, headers=bearer(key["value"])).status_code == 200


@pytest.fixture
def behind_proxy(settings: Settings) -> Iterator[tuple[ClientFactory, Tenant]]:
    """A keyguard that believes X-Forwarded-For from 10.9.0.0/16, and an account on it."""
    runtime = Keyguard(settings.model_copy(update={"trusted_proxies": ["10.9.0.0/16"]}))
    runtime.store.migrate()
    owner = make_tenant(runtime, "proxied")
    app = create_app(keyguard=runtime)

    def connect(ip: str) -> TestClient:
        return TestClient(app, client=(ip, 50000))

    with connect(CLIENT_IP):  # runs the app's lifespan
        yield connect, owner


@pytest.mark.parametrize(
    ("peer", "forwarded", "judged", "status"),
    [
        pytest.param("10.9.0.1", "192.0.2.1", "192.0.2.1", 200, id="client_behind_proxy"),
        pytest.param(
            "10.9.0.1", "198.51.100.9, 192.0.2.1", "192.0.2.1", 200, id="forged_left_hop_ignored"
        ),
        pytest.param(
            "10.9.0.1",
            "192.0.2.1, 198.51.100.9",
            "198.51.100.9",
            403,
            id="right_most_untrusted_hop",
        ),
        pytest.param(
            "10.9.0.1", "192.0.2.1, 10.9.0.7", "192.0.2.1", 200, id="trusted_hops_skipped"
        ),
        pytest.param("10.9.0.1", None, "10.9.0.1", 403, id="proxy_itself_without_header"),
        pytest.param(CLIENT_IP, "192.0.2.1", CLIENT_IP, 403, id="untrusted_peer_header_ignored"),
    ],
)
def test_forwarded_for_is_read_only_from_a_trusted_proxy(
    behind_proxy: tuple[ClientFactory, Tenant],
    peer: str,
    forwarded: str | None,
    judged: str,
    status: int,
) -> None:
    connect, owner = behind_proxy
    key = create_key(connect(CLIENT_IP), owner, restricted=True, permitted_ips=["192.0.2.1"])
    headers = bearer(key["value"]) | ({} if forwarded is None else {"X-Forwarded-For": forwarded})

    response = connect(peer).get(f"{KEYS}/{key['id']}", headers=headers)

    assert response.status_code == status
    if status == 403:
        message = f"IP address {judged} is not permitted for this API key"
        assert response.json() == {"success": False, "message": message}


# -- accounts are isolated ------------------------------------------------------------------


@pytest.mark.parametrize(("method", "path", "body"), ON_ONE_KEY)
def test_if_key_of_another_account_then_404_and_nothing_changes(
    client: TestClient,
    tenant: Tenant,
    other_tenant: Tenant,
    method: str,
    path: str,
    body: object,
) -> None:
    theirs = create_key(client, other_tenant, label="theirs", **{"numbers": {"allow": "read"}})
    before = list_keys(client, other_tenant)

    url = KEYS + path.format(id=theirs["id"])
    response = client.request(method, url, json=body, headers=tenant.headers)

    assert (response.status_code, response.json()) == (404, NOT_FOUND)
    assert list_keys(client, other_tenant) == before
    assert client.get(KEYS, headers=bearer(theirs["value"])).status_code == 200


@pytest.mark.parametrize(
    ("label", "expected"),
    [
        pytest.param(None, {"acme full access", "mine"}, id="no_filter"),
        pytest.param("", {"acme full access", "mine"}, id="empty_filter"),
        pytest.param("full access", {"acme full access"}, id="label_both_accounts_have"),
        pytest.param("theirs", set(), id="label_only_they_have"),
        pytest.param("globex", set(), id="their_account_name"),
    ],
)
def test_list_never_shows_another_accounts_keys(
    client: TestClient,
    tenant: Tenant,
    other_tenant: Tenant,
    label: str | None,
    expected: set[str],
) -> None:
    create_key(client, tenant, label="mine")
    create_key(client, other_tenant, label="theirs")
    params = {} if label is None else {"label": label}

    response = client.get(KEYS, params=params, headers=tenant.headers)

    assert response.status_code == 200
    assert {key["label"] for key in response.json()} == expected


def test_key_ids_are_unique_across_accounts(
    client: TestClient, tenant: Tenant, other_tenant: Tenant
) -> None:
    ids = [create_key(client, owner)["id"] for owner in (tenant, other_tenant, tenant)]

    assert len({tenant.key_id, other_tenant.key_id, *ids}) == 5
