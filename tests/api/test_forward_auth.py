"""``/auth/forward``: the answer a proxy gets for every request it guards."""

import json

import pytest
from starlette.testclient import TestClient

from keyguard.config import Settings
from keyguard.domain.keys import generate
from keyguard.domain.network import ClientIPHeader
from keyguard.runtime import Keyguard
from tests.conftest import TEST_SECRET, ClientFactory, Tenant

PROXY = "127.0.0.1"
UNAUTHORIZED = {"success": False, "error": True, "message": "Unauthorized"}


@pytest.fixture
def client_ip_header() -> ClientIPHeader:
    return ClientIPHeader.X_FORWARDED_FOR


@pytest.fixture
def settings(database_url: str, client_ip_header: ClientIPHeader) -> Settings:
    return Settings(
        database_url=database_url,
        secret_key=TEST_SECRET,
        trusted_proxies=[PROXY],
        client_ip_header=client_ip_header,
    )


@pytest.fixture
def proxy(client_from: ClientFactory) -> TestClient:
    """A client connecting from the trusted proxy's address, as nginx would."""
    return client_from(PROXY)


def _key(keyguard: Keyguard, tenant: Tenant, **body: object) -> str:
    return keyguard.service.create_key(tenant.account_id, {"label": "k", **body}).value


def _forward(
    client: TestClient,
    token: str | None,
    uri: str,
    method: str = "GET",
    **headers: str,
) -> tuple[int, dict[str, str], bytes]:
    sent = {"X-Original-URI": uri, "X-Original-Method": method, **headers}
    if token is not None:
        sent["Authorization"] = f"Bearer {token}"
    response = client.get("/auth/forward", headers=sent)
    return response.status_code, dict(response.headers), response.content


def test_allowed_request_answers_200_with_identity(proxy: TestClient, tenant: Tenant) -> None:
    status, headers, body = _forward(proxy, tenant.token, "/v3/messages", "POST")
    assert (status, body) == (200, b"")
    assert headers["x-keyguard-account-id"] == str(tenant.account_id)
    assert headers["x-keyguard-key-id"] == str(tenant.key_id)
    assert headers["x-keyguard-scope"] == "messages:write"


@pytest.mark.parametrize(
    "token",
    [None, "", generate("kg"), generate("kg")[:-1] + "0", "k" * 10_000, "kg_ключ"],
    ids=["missing", "empty", "unknown", "wrong_checksum", "huge", "non_ascii"],
)
def test_unusable_key_is_401_with_wavix_body(proxy: TestClient, token: str | None) -> None:
    headers = {b"X-Original-URI": b"/v3/messages"}
    if token is not None:
        headers[b"Authorization"] = f"Bearer {token}".encode()
    response = proxy.get("/auth/forward", headers=headers)
    assert response.status_code == 401
    assert response.json() == UNAUTHORIZED


def test_two_authorization_headers_are_401(proxy: TestClient, tenant: Tenant) -> None:
    response = proxy.get(
        "/auth/forward",
        headers=[
            ("Authorization", f"Bearer {tenant.token}"),
            ("Authorization", f"Bearer {tenant.token}"),
            ("X-Original-URI", "/v1/numbers"),
        ],
    )
    assert (response.status_code, response.json()) == (401, UNAUTHORIZED)
    assert response.headers["x-keyguard-message"] == "Unauthorized"


def test_missing_scope_is_403(proxy: TestClient, keyguard: Keyguard, tenant: Tenant) -> None:
    token = _key(keyguard, tenant, scopes_enabled=True, messages={"allow": "read"})
    assert _forward(proxy, token, "/v3/messages", "GET")[0] == 200
    status, _, body = _forward(proxy, token, "/v3/messages", "POST")
    assert status == 403
    assert body == b'{"success":false,"message":"API key scope messages: write access required"}'


def test_head_counts_as_get(proxy: TestClient, keyguard: Keyguard, tenant: Tenant) -> None:
    token = _key(keyguard, tenant, scopes_enabled=True, billing={"allow": "read"})
    assert _forward(proxy, token, "/v1/billing/invoices", "HEAD")[0] == 200


@pytest.mark.parametrize("client_ip_header", list(ClientIPHeader), ids=str)
def test_client_ip_comes_from_the_trusted_proxy(
    proxy: TestClient, keyguard: Keyguard, tenant: Tenant, client_ip_header: ClientIPHeader
) -> None:
    token = _key(keyguard, tenant, restricted=True, permitted_ips=["198.51.100.0/24"])
    allowed = _forward(proxy, token, "/v1/numbers", **{client_ip_header: "198.51.100.20"})
    refused = _forward(proxy, token, "/v1/numbers", **{client_ip_header: "192.0.2.1"})
    assert allowed[0] == 200
    assert refused[0] == 403
    assert refused[2] == (
        b'{"success":false,"message":"IP address 192.0.2.1 is not permitted for this API key"}'
    )


@pytest.mark.parametrize(
    "spoof",
    [{"X-Real-IP": "198.51.100.20"}, {"X-Forwarded-For": "198.51.100.20"}],
    ids=["x_real_ip", "x_forwarded_for"],
)
def test_proxy_headers_from_an_untrusted_peer_are_ignored(
    client_from: ClientFactory, keyguard: Keyguard, tenant: Tenant, spoof: dict[str, str]
) -> None:
    token = _key(keyguard, tenant, restricted=True, permitted_ips=["198.51.100.0/24"])
    stranger = client_from("192.0.2.50")
    status, _, body = _forward(stranger, token, "/v1/numbers", **spoof)
    assert status == 403
    assert b"IP address 192.0.2.50 is not permitted" in body


def test_x_real_ip_beside_x_forwarded_for_is_not_believed_by_default(
    proxy: TestClient, keyguard: Keyguard, tenant: Tenant
) -> None:
    token = _key(keyguard, tenant, restricted=True, permitted_ips=["198.51.100.0/24"])
    passed_on = {"X-Forwarded-For": "192.0.2.7", "X-Real-IP": "198.51.100.20"}
    status, _, body = _forward(proxy, token, "/v1/numbers", **passed_on)
    assert status == 403
    assert b"IP address 192.0.2.7 is not permitted" in body


def test_forged_left_most_forwarded_address_is_not_believed(
    proxy: TestClient, keyguard: Keyguard, tenant: Tenant
) -> None:
    token = _key(keyguard, tenant, restricted=True, permitted_ips=["198.51.100.0/24"])
    forged = {"X-Forwarded-For": "198.51.100.20, 192.0.2.7"}
    assert _forward(proxy, token, "/v1/numbers", **forged)[0] == 403


def test_traefik_headers_are_understood(
    proxy: TestClient, keyguard: Keyguard, tenant: Tenant
) -> None:
    token = _key(keyguard, tenant, scopes_enabled=True, numbers={"allow": "read"})
    headers = {"Authorization": f"Bearer {token}", "X-Forwarded-Uri": "/v1/numbers"}
    get = proxy.get("/auth/forward", headers={**headers, "X-Forwarded-Method": "GET"})
    delete = proxy.get("/auth/forward", headers={**headers, "X-Forwarded-Method": "DELETE"})
    assert (get.status_code, delete.status_code) == (200, 403)


def test_envoy_path_suffix_and_method_are_the_original_request(
    proxy: TestClient, keyguard: Keyguard, tenant: Tenant
) -> None:
    token = _key(keyguard, tenant, scopes_enabled=True, calls={"allow": "read"})
    headers = {"Authorization": f"Bearer {token}"}
    assert proxy.post("/auth/forward/v1/cdrs", headers=headers).status_code == 200
    assert proxy.post("/auth/forward/v1/calls", headers=headers).status_code == 403
    assert proxy.get("/auth/forward/v1/calls?page=2", headers=headers).status_code == 200


def test_appid_in_the_original_uri_is_a_key(proxy: TestClient, tenant: Tenant) -> None:
    assert _forward(proxy, None, f"/v1/numbers?appid={tenant.token}")[0] == 200


def test_header_wins_when_it_disagrees_with_appid(
    proxy: TestClient, keyguard: Keyguard, tenant: Tenant
) -> None:
    scoped = _key(keyguard, tenant, scopes_enabled=True)
    assert _forward(proxy, scoped, f"/v1/numbers?appid={tenant.token}")[0] == 403
    assert _forward(proxy, "not-a-key", f"/v1/numbers?appid={tenant.token}")[0] == 401


@pytest.mark.parametrize(
    "path",
    [
        "/v1/numbers/../api-keys",
        "/v1/numbers/%2e%2e/api-keys",
        "/v1/numbers/..%2Fapi-keys",
        "/v1/numbers/%252e%252e/api-keys",
        "/v1//numbers/x/../../api-keys",
        "/V1/Api-Keys",
    ],
)
def test_no_spelling_of_a_path_reaches_a_scope_it_should_not(
    proxy: TestClient, keyguard: Keyguard, tenant: Tenant, path: str
) -> None:
    token = _key(keyguard, tenant, scopes_enabled=True, numbers={"allow": "write"})
    status, _, body = _forward(proxy, token, path)
    assert status == 403
    assert json.loads(body) == {
        "success": False,
        "message": "Ambiguous path (encoded separator, dot segment, backslash or the like): "
        "API key with full access required",
    }


CONFLICTING = {
    "success": False,
    "message": "Conflicting original-request headers: the request cannot be judged",
}


@pytest.mark.parametrize(
    "headers",
    [
        pytest.param([("X-Original-URI", "/v1/trunks"), ("X-Forwarded-Uri", "/v1/numbers")],
                     id="uri_nginx_style_first"),
        pytest.param([("X-Forwarded-Uri", "/v1/trunks"), ("X-Original-URI", "/v1/numbers")],
                     id="uri_traefik_style_first"),
        pytest.param([("X-Original-URI", "/v1/trunks"), ("X-Original-URI", "/v1/numbers")],
                     id="uri_twice"),
        pytest.param([("X-Original-Method", "DELETE"), ("X-Forwarded-Method", "GET"),
                      ("X-Original-URI", "/v1/numbers/1")], id="method_both_styles"),
    ],
)  # fmt: skip
def test_if_original_request_headers_disagree_then_403(
    proxy: TestClient, keyguard: Keyguard, tenant: Tenant, headers: list[tuple[str, str]]
) -> None:
    """A proxy sets one style; the other may come from the client, in either order."""
    token = _key(keyguard, tenant, scopes_enabled=True, numbers={"allow": "read"})

    response = proxy.get("/auth/forward", headers=[("Authorization", f"Bearer {token}"), *headers])

    assert (response.status_code, response.json()) == (403, CONFLICTING)


def test_if_original_request_headers_agree_then_they_are_judged(
    proxy: TestClient, keyguard: Keyguard, tenant: Tenant
) -> None:
    token = _key(keyguard, tenant, scopes_enabled=True, numbers={"allow": "read"})
    status, headers, _ = _forward(proxy, token, "/v1/numbers", **{"X-Forwarded-Uri": "/v1/numbers"})
    assert (status, headers["x-keyguard-scope"]) == (200, "numbers:read")


def test_if_an_envoy_path_comes_with_an_original_uri_header_then_403(
    proxy: TestClient, keyguard: Keyguard, tenant: Tenant
) -> None:
    token = _key(keyguard, tenant, scopes_enabled=True, numbers={"allow": "read"})
    headers = {"Authorization": f"Bearer {token}", "X-Original-URI": "/v1/numbers"}

    response = proxy.delete("/auth/forward/v1/trunks/1", headers=headers)

    assert (response.status_code, response.json()) == (403, CONFLICTING)


def test_unknown_route_allows_full_access_only(
    proxy: TestClient, keyguard: Keyguard, tenant: Tenant
) -> None:
    scoped = _key(keyguard, tenant, scopes_enabled=True, numbers={"allow": "write"})
    status, headers, _ = _forward(proxy, tenant.token, "/v9/unknown")
    assert (status, headers["x-keyguard-scope"]) == (200, "full")
    assert _forward(proxy, scoped, "/v9/unknown")[0] == 403


@pytest.mark.parametrize("method", ["GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"])
def test_any_method_reaches_forward_auth(proxy: TestClient, tenant: Tenant, method: str) -> None:
    response = proxy.request(
        method,
        "/auth/forward",
        headers={"Authorization": f"Bearer {tenant.token}", "X-Original-URI": "/v1/numbers"},
    )
    assert response.status_code == 200


def test_revocation_in_this_process_is_enforced_by_the_next_request(
    proxy: TestClient, tenant: Tenant
) -> None:
    created = proxy.post("/v1/api-keys", headers=tenant.headers, json={"label": "temp"}).json()
    assert _forward(proxy, created["value"], "/v1/numbers")[0] == 200
    deactivated = proxy.patch(f"/v1/api-keys/{created['id']}/deactivate", headers=tenant.headers)
    assert deactivated.status_code == 200
    assert _forward(proxy, created["value"], "/v1/numbers")[0] == 401


def test_allowed_forward_auth_advances_last_used_at(
    proxy: TestClient, keyguard: Keyguard, tenant: Tenant
) -> None:
    view = keyguard.service.create_key(tenant.account_id, {"label": "used"})
    assert view.last_used_at is None
    assert _forward(proxy, view.value, "/v1/numbers")[0] == 200
    assert keyguard.service.get_key(tenant.account_id, view.key.id).last_used_at is not None


def test_oversized_headers_are_431_before_any_decision(proxy: TestClient) -> None:
    response = proxy.get(
        "/auth/forward",
        headers={"Authorization": "Bearer " + "k" * 20_000, "X-Original-URI": "/v1/numbers"},
    )
    assert response.status_code == 431
    assert response.json() == {"success": False, "message": "Request headers too large"}
