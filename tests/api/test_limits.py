"""Abuse limits: each refuses with its own 4xx and a Wavix body, and changes nothing.

The limits here are set small, so that the tests reach them in a few requests.
Proven elsewhere: labels over 255 characters and more than 100 ``permitted_ips``
(422, on create and update, and the values at the limit accepted) in
tests/api/test_validation.py; the default 64 KiB body limit, streamed bodies
included, in tests/api/test_errors.py.
"""

import json
from typing import Any

import httpx2
import pytest
from pydantic import SecretStr
from starlette.testclient import TestClient

from keyguard.config import Settings
from keyguard.domain.network import ClientIPHeader
from keyguard.runtime import Keyguard
from tests.conftest import (
    CLIENT_IP,
    TEST_SECRET,
    ClientFactory,
    Tenant,
    bearer,
    settings_for,
    stored,
)

KEYS = "/v1/api-keys"
LIMIT = 3  # failed authentications per address, and changes per account, per minute
MAX_BODY = 1024
MAX_HEADERS = 1024
PROXY = "10.9.0.1"
ADMIN_TOKEN = "operator-" + "0" * 32
VERIFY_TOKEN = "verify-" + "1" * 32
OTHER_IP = "198.51.100.20"
UNAUTHORIZED = {"success": False, "error": True, "message": "Unauthorized"}
TOO_LARGE = {"success": False, "message": "Request body too large"}
HEADERS_TOO_LARGE = {"success": False, "message": "Request headers too large"}


@pytest.fixture
def client_ip_header() -> ClientIPHeader:
    return ClientIPHeader.X_FORWARDED_FOR


@pytest.fixture
def settings(database_url: str, client_ip_header: ClientIPHeader) -> Settings:
    return settings_for(
        database_url,
        auth_failures_per_minute=LIMIT,
        management_writes_per_minute=LIMIT,
        max_body_bytes=MAX_BODY,
        max_header_bytes=MAX_HEADERS,
        trusted_proxies=[PROXY],
        client_ip_header=client_ip_header,
        admin_token=SecretStr(ADMIN_TOKEN),
    )


def assert_too_many(response: httpx2.Response) -> None:
    """A 429 with Wavix's body and a Retry-After of whole seconds within the minute."""
    assert response.status_code == 429, response.text
    body = response.json()
    assert set(body) == {"success", "message"}
    assert body["success"] is False
    assert body["message"]
    retry_after = response.headers["retry-after"]
    assert retry_after.isdigit(), retry_after
    assert 1 <= int(retry_after) <= 60


def json_of_size(size: int, **fields: Any) -> bytes:
    """A JSON object of ``fields`` padded with spaces to exactly ``size`` bytes."""
    text = json.dumps(fields).encode()
    assert len(text) <= size
    return text[:-1] + b" " * (size - len(text)) + b"}"


# -- request bodies ------------------------------------------------------------------------

BODY_ROUTES = [
    pytest.param("POST", KEYS, {"label": "padded"}, id="create_key"),
    pytest.param("PATCH", KEYS + "/{key_id}", {"label": "padded"}, id="update_key"),
    pytest.param(
        "POST", "/auth/verify", {"key": None, "method": "GET", "path": "/v1"}, id="verify"
    ),
    pytest.param("POST", "/admin/v1/accounts", {"name": "padded"}, id="admin_create_account"),
]


def credentials(path: str, tenant: Tenant) -> dict[str, str]:
    return bearer(ADMIN_TOKEN) if path.startswith("/admin/") else tenant.headers


@pytest.mark.parametrize(("method", "path", "fields"), BODY_ROUTES)
def test_if_body_is_one_byte_over_the_limit_then_413_and_nothing_changes(
    client: TestClient,
    keyguard: Keyguard,
    tenant: Tenant,
    method: str,
    path: str,
    fields: dict[str, Any],
) -> None:
    before = stored(keyguard, tenant.account_id, last_use=False), keyguard.store.list_accounts()

    response = client.request(
        method,
        path.format(key_id=tenant.key_id),
        content=json_of_size(MAX_BODY + 1, **fields),
        headers=credentials(path, tenant) | {"Content-Type": "application/json"},
    )

    assert (response.status_code, response.json()) == (413, TOO_LARGE)
    assert (
        stored(keyguard, tenant.account_id, last_use=False),
        keyguard.store.list_accounts(),
    ) == before


@pytest.mark.parametrize(("method", "path", "fields"), BODY_ROUTES)
def test_if_body_is_exactly_the_limit_then_it_is_read(
    client: TestClient, tenant: Tenant, method: str, path: str, fields: dict[str, Any]
) -> None:
    response = client.request(
        method,
        path.format(key_id=tenant.key_id),
        content=json_of_size(MAX_BODY, **fields),
        headers=credentials(path, tenant) | {"Content-Type": "application/json"},
    )

    assert response.status_code == 200, response.text


# -- request headers -----------------------------------------------------------------------


def padded_to(client: TestClient, method: str, path: str, total: int, **headers: str) -> Any:
    """``headers`` and an X-Padding header that bring the request's header bytes to ``total``.

    Header bytes are what the limit counts: the length of every name and value.
    """
    request = client.build_request(method, path, headers=headers | {"X-Padding": ""})
    size = sum(len(name) + len(value) for name, value in request.headers.raw)
    assert size <= total
    return headers | {"X-Padding": "p" * (total - size)}


HEADER_ROUTES = [
    pytest.param("GET", KEYS, id="list_keys"),
    pytest.param("POST", KEYS, id="create_key"),
    pytest.param("GET", "/auth/forward", id="forward_auth"),
    pytest.param("POST", "/auth/verify", id="verify"),
    pytest.param("GET", "/admin/v1/accounts", id="admin"),
    pytest.param("GET", "/healthz", id="health"),
    pytest.param("GET", "/no/such/route", id="unknown_route"),
]


@pytest.mark.parametrize(("method", "path"), HEADER_ROUTES)
def test_if_headers_are_one_byte_over_the_limit_then_431_and_nothing_changes(
    client: TestClient, keyguard: Keyguard, tenant: Tenant, method: str, path: str
) -> None:
    before = stored(keyguard, tenant.account_id, last_use=False)
    headers = padded_to(
        client,
        method,
        path,
        MAX_HEADERS + 1,
        **credentials(path, tenant),
        **{"X-Original-URI": "/v1/numbers", "Content-Type": "application/json"},
    )

    response = client.request(method, path, headers=headers, content=b'{"label": "x"}')

    assert (response.status_code, response.json()) == (431, HEADERS_TOO_LARGE)
    assert stored(keyguard, tenant.account_id, last_use=False) == before


def test_if_headers_are_exactly_the_limit_then_served(client: TestClient, tenant: Tenant) -> None:
    headers = padded_to(client, "GET", KEYS, MAX_HEADERS, **tenant.headers)

    assert client.get(KEYS, headers=headers).status_code == 200


# -- failed authentications per client address ---------------------------------------------


def fail(client: TestClient, times: int) -> list[int]:
    """Present a key that does not exist ``times`` times; the statuses answered."""
    return [client.get(KEYS, headers=bearer("kg_nope")).status_code for _ in range(times)]


def test_if_an_address_fails_up_to_the_limit_then_its_valid_key_still_works(
    client: TestClient, tenant: Tenant
) -> None:
    assert fail(client, LIMIT) == [401] * LIMIT

    assert client.get(KEYS, headers=tenant.headers).status_code == 200


def test_if_an_address_fails_beyond_the_limit_then_429_with_retry_after(
    client: TestClient,
) -> None:
    fail(client, LIMIT)

    response = client.get(KEYS, headers=bearer("kg_nope"))

    assert_too_many(response)


@pytest.mark.parametrize(
    "surface",
    [
        pytest.param(lambda c, t: c.get(KEYS, headers=t.headers), id="management_api"),
        pytest.param(lambda c, t: c.get(f"{KEYS}?appid={t.token}"), id="appid"),
        pytest.param(
            lambda c, t: c.get("/auth/forward", headers=t.headers | {"X-Original-URI": "/v1"}),
            id="forward_auth",
        ),
    ],
)
def test_if_an_address_is_blocked_then_its_valid_key_still_works(
    client: TestClient, tenant: Tenant, surface: Any
) -> None:
    """The limit makes guessing pointless; it never locks out the address's good keys."""
    fail(client, LIMIT + 1)

    assert surface(client, tenant).status_code == 200
    assert_too_many(client.get(KEYS, headers=bearer("kg_nope")))


def test_if_an_address_is_blocked_then_other_addresses_are_not(
    client: TestClient, client_from: ClientFactory, tenant: Tenant
) -> None:
    fail(client, LIMIT + 1)
    other = client_from(OTHER_IP)

    assert other.get(KEYS, headers=tenant.headers).status_code == 200
    response = other.get(KEYS, headers=bearer("kg_nope"))
    assert (response.status_code, response.json()) == (401, UNAUTHORIZED)


@pytest.mark.parametrize("client_ip_header", list(ClientIPHeader), ids=str)
def test_if_one_client_behind_a_trusted_proxy_is_blocked_then_the_proxys_others_are_not(
    client_from: ClientFactory, tenant: Tenant, client_ip_header: ClientIPHeader
) -> None:
    proxy = client_from(PROXY)

    def forward(client_ip: str, token: str) -> httpx2.Response:
        headers = bearer(token) | {client_ip_header: client_ip, "X-Original-URI": "/v1/numbers"}
        return proxy.get("/auth/forward", headers=headers)

    failures = [forward(CLIENT_IP, "kg_nope").status_code for _ in range(LIMIT + 1)]

    assert failures == [401] * LIMIT + [429]
    assert forward(CLIENT_IP, tenant.token).status_code == 200
    assert forward(OTHER_IP, "kg_nope").status_code == 401


@pytest.mark.parametrize("client_ip_header", list(ClientIPHeader), ids=str)
def test_if_client_behind_a_trusted_proxy_varies_the_other_header_then_it_is_still_blocked(
    client_from: ClientFactory, client_ip_header: ClientIPHeader
) -> None:
    [other] = [header for header in ClientIPHeader if header is not client_ip_header]
    proxy = client_from(PROXY)

    def fail(claimed: str) -> httpx2.Response:
        headers = bearer("kg_nope") | {client_ip_header: CLIENT_IP, other: claimed}
        return proxy.get("/auth/forward", headers=headers | {"X-Original-URI": "/v1/numbers"})

    failures = [fail(f"198.51.100.{n}").status_code for n in range(LIMIT + 1)]

    assert failures == [401] * LIMIT + [429]


def test_if_forward_auth_blocks_an_address_then_429_carries_the_message_for_the_proxy(
    client: TestClient,
) -> None:
    headers = bearer("kg_nope") | {"X-Original-URI": "/v1/numbers"}
    for _ in range(LIMIT):
        client.get("/auth/forward", headers=headers)

    response = client.get("/auth/forward", headers=headers)

    assert_too_many(response)
    assert response.headers["x-keyguard-message"] == response.json()["message"]


def verify(client: TestClient, key: str, ip: str | None = None, **headers: str) -> Any:
    body = {"key": key, "ip": ip, "method": "GET", "path": "/v1/numbers"}
    response = client.post("/auth/verify", json=body, headers=headers)
    assert response.status_code == 200, response.text
    return response.json()


def test_if_an_anonymous_verify_caller_floods_bad_keys_then_good_keys_still_pass(
    client: TestClient, tenant: Tenant
) -> None:
    """One end user of a backend sending junk must not lock the backend's other users out."""
    statuses = [verify(client, "kg_nope", OTHER_IP)["status"] for _ in range(LIMIT + 1)]

    assert statuses == [401] * LIMIT + [429]
    assert verify(client, tenant.token, OTHER_IP)["allowed"] is True
    assert verify(client, "kg_nope", "198.51.100.99")["status"] == 429  # charged to the caller


class TestVerifyCallerWithToken:
    """A backend that proves itself with KEYGUARD_VERIFY_TOKEN reports the client address."""

    @pytest.fixture
    def settings(self, database_url: str) -> Settings:
        return Settings(
            database_url=database_url,
            secret_key=TEST_SECRET,
            auth_failures_per_minute=LIMIT,
            verify_token=SecretStr(VERIFY_TOKEN),
        )

    def test_failures_are_charged_to_the_reported_client(
        self, client: TestClient, tenant: Tenant
    ) -> None:
        backend = bearer(VERIFY_TOKEN)
        statuses = [verify(client, "kg_nope", OTHER_IP, **backend)["status"] for _ in range(5)]

        assert statuses == [401] * LIMIT + [429] * (5 - LIMIT)
        assert verify(client, "kg_nope", "198.51.100.99", **backend)["status"] == 401
        assert verify(client, tenant.token, OTHER_IP, **backend)["allowed"] is True

    def test_wrong_verify_tokens_count_against_the_caller(
        self, client: TestClient, tenant: Tenant
    ) -> None:
        body = {"key": tenant.token, "method": "GET", "path": "/v1/numbers"}
        statuses = [
            client.post("/auth/verify", json=body, headers=bearer("wrong-token")).status_code
            for _ in range(LIMIT + 1)
        ]

        assert statuses == [401] * LIMIT + [429]
        assert_too_many(client.post("/auth/verify", json=body, headers=bearer(VERIFY_TOKEN)))

    def test_two_authorization_headers_are_refused_even_if_both_hold_the_token(
        self, client: TestClient, tenant: Tenant
    ) -> None:
        body = {"key": tenant.token, "method": "GET", "path": "/v1/numbers"}
        twice = [("Authorization", f"Bearer {VERIFY_TOKEN}")] * 2

        response = client.post("/auth/verify", json=body, headers=twice)

        assert (response.status_code, response.json()) == (401, UNAUTHORIZED)
        assert response.headers["www-authenticate"] == "Bearer"


# -- changes per account ---------------------------------------------------------------------

CHANGES_TO_A_KEY = [
    pytest.param("PATCH", "/{key_id}", {"label": "one too many"}, id="update"),
    pytest.param("PATCH", "/{key_id}/deactivate", None, id="deactivate"),
    pytest.param("PATCH", "/{key_id}/activate", None, id="activate"),
    pytest.param("DELETE", "/{key_id}", None, id="delete"),
]
CHANGES = [pytest.param("POST", "", {"label": "one too many"}, id="create"), *CHANGES_TO_A_KEY]


def change_up_to_the_limit(client: TestClient, owner: Tenant) -> int:
    """Make LIMIT changes to a new key of ``owner``'s; that key's id."""
    created = client.post(KEYS, json={"label": "target"}, headers=owner.headers)
    assert created.status_code == 200
    key_id: int = created.json()["id"]
    for number in range(LIMIT - 1):
        url = f"{KEYS}/{key_id}"
        changed = client.patch(url, json={"label": f"change {number}"}, headers=owner.headers)
        assert changed.status_code == 200
    return key_id


@pytest.mark.parametrize(("method", "path", "body"), CHANGES)
def test_if_an_account_changes_keys_beyond_the_limit_then_429_and_nothing_changes(
    client: TestClient,
    keyguard: Keyguard,
    tenant: Tenant,
    method: str,
    path: str,
    body: object,
) -> None:
    key_id = change_up_to_the_limit(client, tenant)
    before = stored(keyguard, tenant.account_id, last_use=False)

    url = KEYS + path.format(key_id=key_id)
    response = client.request(method, url, json=body, headers=tenant.headers)

    assert_too_many(response)
    assert stored(keyguard, tenant.account_id, last_use=False) == before


def test_if_an_account_is_limited_then_another_account_is_not(
    client: TestClient, tenant: Tenant, other_tenant: Tenant
) -> None:
    change_up_to_the_limit(client, tenant)
    assert_too_many(client.post(KEYS, json={"label": "x"}, headers=tenant.headers))

    response = client.post(KEYS, json={"label": "x"}, headers=other_tenant.headers)

    assert response.status_code == 200


@pytest.mark.parametrize(
    "path",
    [
        pytest.param(KEYS, id="list"),
        pytest.param(KEYS + "/{key_id}", id="get"),
        pytest.param("/v1/audit-log", id="audit_log"),
    ],
)
def test_if_an_account_is_limited_then_it_may_still_read(
    client: TestClient, tenant: Tenant, path: str
) -> None:
    key_id = change_up_to_the_limit(client, tenant)
    assert_too_many(client.post(KEYS, json={"label": "x"}, headers=tenant.headers))

    for _ in range(2 * LIMIT):
        assert client.get(path.format(key_id=key_id), headers=tenant.headers).status_code == 200


@pytest.mark.parametrize(("method", "path", "body"), CHANGES_TO_A_KEY)
def test_if_a_change_names_a_key_id_that_cannot_exist_then_404_and_no_write_is_counted(
    client: TestClient, tenant: Tenant, method: str, path: str, body: object
) -> None:
    url = KEYS + path.format(key_id=0)

    statuses = [
        client.request(method, url, json=body, headers=tenant.headers).status_code
        for _ in range(LIMIT + 1)
    ]

    assert statuses == [404] * (LIMIT + 1)
    assert client.post(KEYS, json={"label": "x"}, headers=tenant.headers).status_code == 200


# -- a limit of 0 is no limit ----------------------------------------------------------------

DEFAULT_FAILURES = Settings.model_fields["auth_failures_per_minute"].default
DEFAULT_CHANGES = Settings.model_fields["management_writes_per_minute"].default


class TestWithLimitsOff:
    @pytest.fixture
    def settings(self, database_url: str) -> Settings:
        return Settings(
            database_url=database_url,
            secret_key=TEST_SECRET,
            auth_failures_per_minute=0,
            management_writes_per_minute=0,
        )

    def test_if_failures_limit_is_0_then_no_address_is_ever_blocked(
        self, client: TestClient, tenant: Tenant
    ) -> None:
        failures = DEFAULT_FAILURES + 1

        assert fail(client, failures) == [401] * failures
        assert client.get(KEYS, headers=tenant.headers).status_code == 200

    def test_if_changes_limit_is_0_then_no_account_is_ever_limited(
        self, client: TestClient, tenant: Tenant
    ) -> None:
        url = f"{KEYS}/{tenant.key_id}"

        statuses = {
            client.patch(
                url, json={"label": f"change {number}"}, headers=tenant.headers
            ).status_code
            for number in range(DEFAULT_CHANGES + 1)
        }

        assert statuses == {200}
