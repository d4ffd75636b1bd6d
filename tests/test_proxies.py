"""A reverse proxy in front of an API, with keyguard deciding every request.

Each test runs through every example proxy: nginx (``auth_request``, with
``examples/nginx/nginx.conf``) and Caddy (``forward_auth``, with
``examples/caddy/Caddyfile``), each its example itself with only its three
addresses moved to free ports (tests/proxied.py). Every request goes through the
proxy; the API behind it echoes what it received and counts the requests that
reached it.
"""

import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest

from keyguard.domain.keys import generate
from tests.conftest import bearer
from tests.proxied import (
    PROXIES,
    EchoAPI,
    Nginx,
    ReverseProxy,
    known_account,
    running_example,
)
from tests.server import KeyguardServer, Servers
from tests.server import create_key as new_key  # this module's create_key is a fixture

pytestmark = pytest.mark.slow

UNAUTHORIZED = {"success": False, "error": True, "message": "Unauthorized"}
OUTSIDE_127_0_0_1 = "10.0.0.0/8"
NOT_FROM_127_0_0_1 = {
    "success": False,
    "message": "IP address 127.0.0.1 is not permitted for this API key",
}
CONFLICTING = "Conflicting original-request headers: the request cannot be judged"
NUMBERS_WRITE_REQUIRED = "API key scope numbers: write access required"
# The style of original-request headers each proxy sets itself (replacing the client's).
OWN_STYLE = {"nginx": "nginx_style", "caddy": "traefik_style"}


@pytest.fixture(scope="module")
def keyguard(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KeyguardServer]:
    with Servers(tmp_path_factory.mktemp("keyguard")) as servers:
        yield servers(settings={"KEYGUARD_TRUSTED_PROXIES": "127.0.0.1"}).start()


@pytest.fixture(scope="module")
def api() -> Iterator[EchoAPI]:
    started = EchoAPI().start()
    try:
        yield started
    finally:
        started.stop()


@pytest.fixture(scope="module", params=list(PROXIES))
def proxy(
    request: pytest.FixtureRequest,
    tmp_path_factory: pytest.TempPathFactory,
    keyguard: KeyguardServer,
    api: EchoAPI,
) -> Iterator[ReverseProxy]:
    kind = PROXIES[request.param]
    with running_example(kind, tmp_path_factory.mktemp(kind.name), keyguard, api.address) as server:
        yield server


@pytest.fixture(scope="module")
def account(keyguard: KeyguardServer) -> dict[str, Any]:
    return known_account(keyguard)


@pytest.fixture(scope="module")
def full_access(account: dict[str, Any]) -> str:
    token: str = account["api_key"]["value"]
    return token


@pytest.fixture(scope="module")
def management(keyguard: KeyguardServer, full_access: str) -> Iterator[httpx.Client]:
    """keyguard's own API, reached directly, as the account's full-access key."""
    with keyguard.client(full_access) as c:
        yield c


@pytest.fixture
def client(proxy: ReverseProxy) -> Iterator[httpx.Client]:
    """A client of the proxy, from 127.0.0.1."""
    with httpx.Client(base_url=proxy.base_url, timeout=10) as c:
        yield c


KeyFactory = Callable[..., dict[str, Any]]


@pytest.fixture
def create_key(management: httpx.Client, proxy: ReverseProxy) -> KeyFactory:
    """``POST /v1/api-keys`` with the given fields; the new key object."""

    def create(**fields: Any) -> dict[str, Any]:
        return new_key(management, **{"label": f"{proxy.name} test", **fields})

    return create


def test_full_access_key_reaches_the_api_with_its_identity(
    client: httpx.Client, account: dict[str, Any], full_access: str
) -> None:
    answer = client.get("/v1/numbers", headers=bearer(full_access))

    assert answer.status_code == 200, answer.text
    assert answer.json() == {
        "method": "GET",
        "path": "/v1/numbers",
        "headers": {
            "x-keyguard-account-id": str(account["account"]["id"]),
            "x-keyguard-key-id": str(account["api_key"]["id"]),
            "x-keyguard-scope": "numbers:read",
            "x-real-ip": "127.0.0.1",
        },
    }


def test_cdr_search_with_a_calls_read_key_reaches_the_api_as_calls_read(
    client: httpx.Client, create_key: KeyFactory
) -> None:
    key = create_key(scopes_enabled=True, calls={"allow": "read"})

    answer = client.post("/v1/cdrs", headers=bearer(key["value"]), json={"from": "2026-01-01"})

    assert answer.status_code == 200, answer.text
    seen = answer.json()
    assert (seen["method"], seen["path"]) == ("POST", "/v1/cdrs")
    assert seen["headers"]["x-keyguard-key-id"] == str(key["id"])
    assert seen["headers"]["x-keyguard-scope"] == "calls:read"


def test_identity_headers_sent_by_the_client_never_reach_the_api(
    client: httpx.Client, account: dict[str, Any], full_access: str
) -> None:
    forged = {
        "X-Keyguard-Account-Id": "999999",
        "X-Keyguard-Key-Id": "999999",
        "X-Keyguard-Scope": "full",
        "X-Real-IP": "10.1.2.3",
    }

    answer = client.get("/v1/numbers", headers={**bearer(full_access), **forged})

    assert answer.status_code == 200, answer.text
    assert answer.json()["headers"] == {
        "x-keyguard-account-id": str(account["account"]["id"]),
        "x-keyguard-key-id": str(account["api_key"]["id"]),
        "x-keyguard-scope": "numbers:read",
        "x-real-ip": "127.0.0.1",
    }


def _deleted_key(management: httpx.Client, create_key: KeyFactory) -> str:
    key = create_key()
    assert management.delete(f"/v1/api-keys/{key['id']}").status_code == 200
    token: str = key["value"]
    return token


UNUSABLE_KEYS: dict[str, Callable[[httpx.Client, KeyFactory], str | None]] = {
    "missing": lambda _management, _create: None,
    "malformed": lambda _management, _create: "not-a-key",
    "unknown": lambda _management, _create: generate("kg"),
    "deleted": _deleted_key,
}


@pytest.mark.parametrize("unusable", list(UNUSABLE_KEYS.values()), ids=list(UNUSABLE_KEYS))
def test_unusable_key_is_401_with_the_wavix_body_and_never_reaches_the_api(
    client: httpx.Client,
    api: EchoAPI,
    management: httpx.Client,
    create_key: KeyFactory,
    unusable: Callable[[httpx.Client, KeyFactory], str | None],
) -> None:
    token = unusable(management, create_key)
    hits = api.hits

    answer = client.get("/v1/numbers", headers=bearer(token) if token is not None else {})

    assert answer.status_code == 401
    assert answer.json() == UNAUTHORIZED
    assert answer.headers["content-type"] == "application/json"
    assert answer.headers.get_list("www-authenticate") == ["Bearer"]
    assert api.hits == hits


@pytest.mark.parametrize("status", [401, 403])
def test_the_apis_own_refusal_reaches_the_client_unchanged(
    client: httpx.Client, full_access: str, status: int
) -> None:
    answer = client.get("/v1/numbers", params={"status": status}, headers=bearer(full_access))

    assert answer.status_code == status
    assert answer.json()["path"] == f"/v1/numbers?status={status}"


def test_key_over_its_rate_limit_is_429_with_retry_after_and_ratelimit_headers(
    client: httpx.Client, api: EchoAPI, create_key: KeyFactory, proxy: ReverseProxy
) -> None:
    token = create_key(ratelimit={"limit": 2, "duration": 3600})["value"]
    allowed = [client.get("/v1/numbers", headers=bearer(token)) for _ in range(2)]
    hits = api.hits

    refused = client.get("/v1/numbers", headers=bearer(token))

    assert [answer.status_code for answer in allowed] == [200, 200]
    if proxy.name == "nginx":  # the example passes on what the key has left
        assert [answer.headers["RateLimit"].split(";")[1] for answer in allowed] == [
            "r=1",
            "r=0",
        ]
        assert allowed[0].headers["RateLimit-Policy"] == '"key";q=2;w=3600'
    assert refused.status_code == 429
    assert refused.json() == {"success": False, "message": "Rate limit exceeded"}
    assert refused.headers["content-type"] == "application/json"
    retry_after = int(refused.headers["Retry-After"])
    assert retry_after >= 1
    assert refused.headers["RateLimit-Policy"] == '"key";q=2;w=3600'
    assert refused.headers["RateLimit"] == f'"key";r=0;t={retry_after}'
    assert api.hits == hits


def test_key_without_a_rate_limit_gets_no_ratelimit_headers(
    client: httpx.Client, full_access: str
) -> None:
    answer = client.get("/v1/numbers", headers=bearer(full_access))

    assert answer.status_code == 200
    assert "RateLimit" not in answer.headers
    assert "RateLimit-Policy" not in answer.headers


def test_scoped_key_writing_where_it_may_only_read_is_403(
    client: httpx.Client, api: EchoAPI, create_key: KeyFactory
) -> None:
    token = create_key(scopes_enabled=True, numbers={"allow": "read"})["value"]
    assert client.get("/v1/numbers", headers=bearer(token)).status_code == 200
    hits = api.hits

    answer = client.patch("/v1/numbers", headers=bearer(token), json={"sms_enabled": True})

    assert answer.status_code == 403
    assert answer.json() == {
        "success": False,
        "message": "API key scope numbers: write access required",
    }
    assert answer.headers["content-type"] == "application/json"
    assert api.hits == hits


# The proxy replaces its own style of these headers; the other style, sent by the
# client, disagrees with them, and a request with disagreeing headers is refused.
CLAIMS = {
    "traefik_style": {"X-Forwarded-Method": "GET", "X-Forwarded-Uri": "/v1/numbers"},
    "nginx_style": {"X-Original-Method": "GET", "X-Original-URI": "/v1/numbers"},
}


@pytest.mark.parametrize("style", list(CLAIMS))
def test_client_sent_original_request_headers_cannot_change_what_is_judged(
    client: httpx.Client, api: EchoAPI, create_key: KeyFactory, proxy: ReverseProxy, style: str
) -> None:
    token = create_key(scopes_enabled=True, numbers={"allow": "read"})["value"]
    hits = api.hits

    answer = client.patch("/v1/numbers", headers={**bearer(token), **CLAIMS[style]}, json={})

    message = NUMBERS_WRITE_REQUIRED if OWN_STYLE[proxy.name] == style else CONFLICTING
    assert (answer.status_code, answer.json()) == (403, {"success": False, "message": message})
    assert api.hits == hits


def test_restricted_key_from_an_address_outside_its_range_is_403(
    client: httpx.Client, api: EchoAPI, create_key: KeyFactory
) -> None:
    token = create_key(restricted=True, permitted_ips=[OUTSIDE_127_0_0_1])["value"]
    hits = api.hits

    answer = client.get("/v1/numbers", headers=bearer(token))

    assert (answer.status_code, answer.json()) == (403, NOT_FROM_127_0_0_1)
    assert api.hits == hits


def test_restricted_key_from_its_permitted_address_reaches_the_api(
    client: httpx.Client, create_key: KeyFactory
) -> None:
    key = create_key(restricted=True, permitted_ips=["127.0.0.1"])

    answer = client.get("/v1/numbers", headers=bearer(key["value"]))

    assert answer.status_code == 200, answer.text
    assert answer.json()["headers"]["x-keyguard-key-id"] == str(key["id"])


# What a client sends to choose its address. Both proxies replace X-Forwarded-For (it
# trusts no proxy in front of it) and pass X-Real-IP on untouched: keyguard must believe
# only the first.
SPOOFS = {
    "x_real_ip": {"X-Real-IP": "10.1.2.3"},
    "x_forwarded_for": {"X-Forwarded-For": "10.1.2.3"},
    "both": {"X-Forwarded-For": "10.4.5.6, 10.1.2.3", "X-Real-IP": "10.1.2.3"},
}


@pytest.mark.parametrize("spoof", list(SPOOFS.values()), ids=list(SPOOFS))
def test_address_headers_sent_by_the_client_do_not_lift_an_ip_restriction(
    client: httpx.Client, api: EchoAPI, create_key: KeyFactory, spoof: dict[str, str]
) -> None:
    permits_the_claims = ["10.1.2.3", "10.4.5.6"]
    token = create_key(restricted=True, permitted_ips=permits_the_claims)["value"]
    hits = api.hits

    answer = client.get("/v1/numbers", headers={**bearer(token), **spoof})

    assert (answer.status_code, answer.json()) == (403, NOT_FROM_127_0_0_1)
    assert api.hits == hits


@pytest.mark.parametrize("spoof", list(SPOOFS.values()), ids=list(SPOOFS))
def test_address_headers_sent_by_the_client_do_not_lock_out_its_own_address(
    client: httpx.Client, create_key: KeyFactory, spoof: dict[str, str]
) -> None:
    key = create_key(restricted=True, permitted_ips=["127.0.0.1"])

    answer = client.get("/v1/numbers", headers={**bearer(key["value"]), **spoof})

    assert answer.status_code == 200, answer.text
    assert answer.json()["headers"]["x-keyguard-key-id"] == str(key["id"])


def test_appid_query_parameter_is_a_key(
    client: httpx.Client, account: dict[str, Any], full_access: str
) -> None:
    answer = client.get("/v1/numbers", params={"appid": full_access})

    assert answer.status_code == 200, answer.text
    assert answer.json()["headers"]["x-keyguard-key-id"] == str(account["api_key"]["id"])


@pytest.mark.parametrize("proxy", ["nginx"], indirect=True)
def test_nginx_access_log_names_the_path_and_key_id_but_never_the_query(
    client: httpx.Client, proxy: ReverseProxy, create_key: KeyFactory
) -> None:
    assert isinstance(proxy, Nginx)
    nginx = proxy
    key = create_key()
    marker = f"/v1/numbers/log-{key['id']}"

    answer = client.get(marker, params={"appid": key["value"]})

    assert answer.status_code == 200, answer.text
    # nginx writes the line after it has answered; wait for it.
    deadline = time.monotonic() + 5
    while marker not in nginx.access_log and time.monotonic() < deadline:
        time.sleep(0.02)
    [line] = [line for line in nginx.access_log.splitlines() if marker in line]
    assert f'"GET {marker}" 200 key={key["id"]} ' in line
    assert key["value"] not in nginx.access_log
    assert "appid" not in line


def test_key_deactivated_through_keyguard_is_refused_by_the_next_request(
    client: httpx.Client, api: EchoAPI, management: httpx.Client, create_key: KeyFactory
) -> None:
    key = create_key()
    assert client.get("/v1/numbers", headers=bearer(key["value"])).status_code == 200

    deactivated = management.patch(f"/v1/api-keys/{key['id']}/deactivate")
    assert deactivated.status_code == 200, deactivated.text
    assert deactivated.json() == {"success": True}
    hits = api.hits
    answer = client.get("/v1/numbers", headers=bearer(key["value"]))

    assert answer.status_code == 401
    assert answer.json() == UNAUTHORIZED
    assert api.hits == hits
