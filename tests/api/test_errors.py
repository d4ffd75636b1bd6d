"""Every error keyguard sends has a Wavix body, whatever caused it (§4).

No framework default (``{"detail": ...}``, an HTML page, an empty body) may reach
a client: not for unknown routes, wrong methods, hostile requests, nor bugs.
"""

import json
import socket
from collections.abc import Callable, Iterator, Mapping
from typing import NamedTuple

import httpx2
import pytest
from starlette.testclient import TestClient

from keyguard.errors import StorageUnavailable
from keyguard.runtime import Keyguard
from tests.conftest import Tenant, raw_request
from tests.server import HOST, KeyguardServer, Servers

KEYS = "/v1/api-keys"
MAX_BODY = 64 * 1024
UNAUTHORIZED = {"success": False, "error": True, "message": "Unauthorized"}
ROUTE_NOT_FOUND = {"success": False, "message": "Route not found"}
METHOD_NOT_ALLOWED = {"success": False, "message": "Method not allowed"}


def assert_wavix_error(response: httpx2.Response, status: int, message: str | None = None) -> None:
    """``response`` is a ``status`` error with a Wavix body (and, if given, this message)."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json"
    body = response.json()
    if status == 401:
        assert body == UNAUTHORIZED
        return
    assert set(body) == {"success", "message"}
    assert body["success"] is False
    assert isinstance(body["message"], str)
    assert body["message"]
    if message is not None:
        assert body["message"] == message


def chunks(size: int) -> Iterator[bytes]:
    """A streamed body of ``size`` bytes, sent without a Content-Length."""
    for _ in range(size // 1024):
        yield b" " * 1024
    yield b"{}"


def nested(depth: int) -> bytes:
    return b"[" * depth + b"]" * depth


# -- unknown routes and wrong methods -------------------------------------------------


@pytest.mark.parametrize(
    "path",
    [
        "/nope",
        "/v1/nope",
        "/v2/api-keys",
        "/v1/API-KEYS",
        "/v1/api-keys/1/nope",
        "/v1/api-keys/1/activate/now",
    ],
)
def test_if_route_is_unknown_then_404_wavix_body(
    client: TestClient, tenant: Tenant, path: str
) -> None:
    response = client.get(path, headers=tenant.headers)

    assert_wavix_error(response, 404, "Route not found")


def test_if_route_is_unknown_and_outside_v1_then_404_without_a_key(client: TestClient) -> None:
    assert client.get("/nope").json() == ROUTE_NOT_FOUND


def test_if_route_under_v1_is_unknown_and_no_key_then_401(client: TestClient) -> None:
    response = client.get("/v1/nope")

    assert_wavix_error(response, 401)


WRONG_METHODS = [
    pytest.param("PUT", "", id="put_collection"),
    pytest.param("DELETE", "", id="delete_collection"),
    pytest.param("PATCH", "", id="patch_collection"),
    pytest.param("POST", "/{id}", id="post_key"),
    pytest.param("PUT", "/{id}", id="put_key"),
    pytest.param("GET", "/{id}/activate", id="get_activate"),
    pytest.param("POST", "/{id}/deactivate", id="post_deactivate"),
    pytest.param("DELETE", "/{id}/deactivate", id="delete_deactivate"),
    pytest.param("OPTIONS", "", id="options_collection"),
    pytest.param("TRACE", "/{id}", id="trace_key"),
]


@pytest.mark.parametrize(("method", "path"), WRONG_METHODS)
def test_if_method_is_not_allowed_then_405_wavix_body(
    client: TestClient, tenant: Tenant, method: str, path: str
) -> None:
    response = client.request(method, KEYS + path.format(id=tenant.key_id), headers=tenant.headers)

    assert_wavix_error(response, 405)
    assert response.json() == METHOD_NOT_ALLOWED


@pytest.mark.parametrize(
    ("path", "allowed"),
    [
        pytest.param("", {"GET", "HEAD", "POST"}, id="collection"),
        pytest.param("/{id}", {"GET", "HEAD", "PATCH", "DELETE"}, id="key"),
        pytest.param("/{id}/activate", {"PATCH"}, id="activate"),
    ],
)
def test_if_method_is_not_allowed_then_allow_header_lists_every_method(
    client: TestClient, tenant: Tenant, path: str, allowed: set[str]
) -> None:
    """RFC 9110 §15.5.6: a 405 names all the methods the resource supports."""
    response = client.put(KEYS + path.format(id=tenant.key_id), headers=tenant.headers)

    assert response.status_code == 405
    assert allowed_methods(response.headers) == allowed


def allowed_methods(headers: Mapping[str, str]) -> set[str]:
    return {method.strip() for method in headers["allow"].split(",")}


@pytest.mark.parametrize("path", ["/docs", "/openapi.json", "/healthz"])
def test_if_method_is_not_allowed_on_an_operations_route_then_allow_names_get_and_head(
    client: TestClient, path: str
) -> None:
    response = client.put(path)

    assert_wavix_error(response, 405, "Method not allowed")
    assert allowed_methods(response.headers) == {"GET", "HEAD"}


# -- HEAD is GET without a body ----------------------------------------------------------

HEAD_PATHS = [
    pytest.param(KEYS, id="list_keys"),
    pytest.param(KEYS + "?label=acme", id="list_keys_by_label"),
    pytest.param(KEYS + "/{id}", id="get_key"),
    pytest.param(KEYS + "/999999", id="missing_key"),
    pytest.param("/v1/audit-log", id="audit_log"),
    pytest.param("/healthz", id="health"),
    pytest.param("/metrics", id="metrics"),
    pytest.param("/openapi.json", id="openapi"),
    pytest.param("/nope", id="unknown_route"),
]


@pytest.mark.parametrize("path", HEAD_PATHS)
def test_head_answers_with_the_status_and_headers_of_get_and_no_body(
    client: TestClient, tenant: Tenant, path: str
) -> None:
    url = path.format(id=tenant.key_id)
    client.get(url, headers=tenant.headers)  # from now on, last_used_at has its length
    got = client.get(url, headers=tenant.headers)

    head = client.head(url, headers=tenant.headers)

    assert head.status_code == got.status_code
    assert head.headers["content-type"] == got.headers["content-type"]
    if path not in ("/healthz", "/metrics"):  # their figures move between two requests
        assert head.headers["content-length"] == got.headers["content-length"]
    assert head.content == b""


def test_head_without_a_key_answers_401_without_a_body(client: TestClient) -> None:
    response = client.head(KEYS)

    assert response.status_code == 401
    assert response.headers["www-authenticate"] == "Bearer"
    assert response.content == b""


# -- methods that HTTP clients never send but a raw request can ----------------------------


ODD_METHODS = [
    pytest.param("get", id="lowercase_get"),
    pytest.param("head", id="lowercase_head"),
    pytest.param("Get", id="mixed_case_get"),
    pytest.param("FOO", id="unknown"),
    pytest.param("PROPFIND", id="webdav"),
]
ODD_PATHS = [
    pytest.param(KEYS, {"GET", "HEAD", "POST"}, id="keys"),
    pytest.param("/healthz", {"GET", "HEAD"}, id="health"),
    pytest.param("/docs", {"GET", "HEAD"}, id="docs"),
]


@pytest.mark.parametrize("method", ODD_METHODS)
@pytest.mark.parametrize(("path", "allowed"), ODD_PATHS)
def test_if_method_is_lowercase_or_unknown_then_405_wavix_body_and_allow(
    client: TestClient, tenant: Tenant, method: str, path: str, allowed: set[str]
) -> None:
    authorization = (b"authorization", f"Bearer {tenant.token}".encode())

    status, headers, body = raw_request(client, method, path, [authorization])

    assert (status, headers["content-type"]) == (405, "application/json")
    assert json.loads(body) == METHOD_NOT_ALLOWED
    assert allowed_methods(headers) == allowed


# -- hostile requests ----------------------------------------------------------------------

Send = Callable[[TestClient, Tenant], httpx2.Response]
BODY = "Missing or invalid parameter body"
LABEL = "Missing or invalid parameter label"
TOO_LARGE = "Request body too large"


def create_with(content: bytes | Callable[[], Iterator[bytes]]) -> Send:
    """A create sending ``content``, or a fresh stream from it for every run."""
    return lambda client, tenant: client.post(
        KEYS, content=content() if callable(content) else content, headers=tenant.headers
    )


def patch_with(content: bytes) -> Send:
    return lambda client, tenant: client.patch(
        f"{KEYS}/{tenant.key_id}", content=content, headers=tenant.headers
    )


def get_with(path: str, headers: dict[str, str] | None = None) -> Send:
    return lambda client, tenant: client.get(path, headers=headers or tenant.headers)


HOSTILE = [
    pytest.param(create_with(b" " * (MAX_BODY + 1)), 413, TOO_LARGE, id="huge_body"),
    pytest.param(
        create_with(b'{"label": "x", "pad": "' + b"a" * MAX_BODY + b'"}'),
        413,
        TOO_LARGE,
        id="huge_valid_json",
    ),
    pytest.param(create_with(b" " * 10_000_000), 413, TOO_LARGE, id="ten_megabytes"),
    pytest.param(
        create_with(lambda: chunks(MAX_BODY + 1024)), 413, TOO_LARGE, id="huge_chunked_body"
    ),
    pytest.param(patch_with(b" " * (MAX_BODY + 1)), 413, TOO_LARGE, id="huge_patch_body"),
    pytest.param(create_with(nested(30_000)), 400, BODY, id="deeply_nested_body"),
    pytest.param(
        create_with(b'{"label": "x", "numbers": ' + nested(20_000) + b"}"),
        400,
        BODY,
        id="deeply_nested_field",
    ),
    pytest.param(patch_with(nested(30_000)), 400, BODY, id="deeply_nested_patch"),
    pytest.param(create_with(b'{"label": "\xff\xfe"}'), 400, BODY, id="invalid_utf8"),
    pytest.param(create_with('{"label": "café"}'.encode("latin-1")), 400, BODY, id="latin1_body"),
    pytest.param(create_with(b"\x00" * 64), 400, BODY, id="nul_bytes_body"),
    pytest.param(create_with(b'{"label": "a\\u0000b"}'), 400, LABEL, id="nul_in_label"),
    pytest.param(create_with(b'{"label": "\\ud800"}'), 400, LABEL, id="lone_surrogate_in_label"),
    pytest.param(patch_with(b'{"label": "a\\u0000b"}'), 400, LABEL, id="nul_in_patched_label"),
    pytest.param(patch_with(b'{"a\\u0000b": true}'), 400, None, id="nul_in_field_name"),
    pytest.param(
        create_with(b'{"label": "x", "active": ' + b"9" * 5000 + b"}"),
        400,
        None,
        id="huge_integer",
    ),
    pytest.param(create_with(b'{"label": "x", "active": NaN}'), 400, None, id="nan"),
    pytest.param(get_with(f"{KEYS}/%ff"), 404, "Record not found", id="undecodable_id"),
    pytest.param(get_with(f"{KEYS}/%00"), 404, "Record not found", id="nul_id"),
    pytest.param(get_with(f"{KEYS}/{'9' * 5000}"), 404, "Record not found", id="huge_id"),
    pytest.param(
        get_with(KEYS, {"Authorization": "Bearer " + "k" * 10_000}), 401, None, id="long_token"
    ),
    pytest.param(
        get_with(KEYS, {"Authorization": "Bearer " + "k" * 100_000}),
        431,
        "Request headers too large",
        id="huge_token",
    ),
    pytest.param(
        lambda client, _tenant: client.get(KEYS, headers={"Authorization": b"Bearer \xff\xfe"}),
        401,
        None,
        id="non_ascii_authorization",
    ),
    pytest.param(
        lambda client, tenant: client.get(KEYS, params=[("appid", tenant.token)] * 2),
        401,
        None,
        id="appid_twice",
    ),
]


@pytest.mark.parametrize(("send", "status", "message"), HOSTILE)
def test_if_request_is_hostile_then_4xx_wavix_body(
    client: TestClient, tenant: Tenant, send: Send, status: int, message: str | None
) -> None:
    assert_wavix_error(send(client, tenant), status, message)


# -- failures inside keyguard ----------------------------------------------------------------


def test_if_keyguard_has_a_bug_then_500_wavix_body_without_details(
    client: TestClient, tenant: Tenant, keyguard: Keyguard, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(*_args: object) -> None:
        raise RuntimeError("kg_leaked_secret")

    monkeypatch.setattr(keyguard.service, "list_keys", broken)

    response = client.get(KEYS, headers=tenant.headers)

    assert_wavix_error(response, 500)
    assert "kg_leaked_secret" not in response.text


def test_if_database_is_unavailable_then_503_wavix_body(
    client: TestClient, tenant: Tenant, keyguard: Keyguard, monkeypatch: pytest.MonkeyPatch
) -> None:
    def unavailable(*_args: object) -> None:
        raise StorageUnavailable("The database did not answer: sqlite:///secret/path")

    monkeypatch.setattr(keyguard.service, "create_key", unavailable)

    response = client.post(KEYS, json={"label": "x"}, headers=tenant.headers)

    assert_wavix_error(response, 503)
    assert "secret/path" not in response.text


# -- the same over a real server -------------------------------------------------------------

# What uvicorn's HTTP parser answers to a request line it cannot parse (httptools
# refuses every method it does not know, lowercase ones too). Such a request never
# reaches keyguard, so keyguard cannot give it a Wavix body.
PARSER_REFUSAL = (400, b"Invalid HTTP request received.")


class Answer(NamedTuple):
    status: int
    headers: dict[str, str]
    body: bytes


def raw_http(server: KeyguardServer, method: str, path: str, token: str) -> Answer:
    """One request as its bytes, over a new connection that the server closes."""
    request = (
        f"{method} {path} HTTP/1.1\r\nHost: {HOST}\r\nAuthorization: Bearer {token}\r\n"
        "Connection: close\r\n\r\n"
    )
    received = b""
    with socket.create_connection((HOST, server.port), timeout=10) as connection:
        connection.sendall(request.encode())
        while chunk := connection.recv(65536):
            received += chunk
    head, _, body = received.partition(b"\r\n\r\n")
    status_line, *lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in lines:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return Answer(int(status_line.split()[1]), headers, body)


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[KeyguardServer, str]]:
    """``keyguard serve`` over TCP, and the full-access key of its one account."""
    with Servers(tmp_path_factory.mktemp("served")) as servers:
        server = servers()
        token: str = server.create_account("acme")["api_key"]["value"]
        yield server.start(), token


@pytest.mark.slow
@pytest.mark.parametrize("path", [KEYS, "/healthz"])
def test_over_a_real_server_head_answers_as_get_without_a_body(
    served: tuple[KeyguardServer, str], path: str
) -> None:
    server, token = served
    raw_http(server, "GET", path, token)  # from now on, last_used_at has its length
    got = raw_http(server, "GET", path, token)

    head = raw_http(server, "HEAD", path, token)

    assert (head.status, head.body) == (200, b"")
    assert head.headers["content-type"] == got.headers["content-type"] == "application/json"
    if path == KEYS:
        assert head.headers["content-length"] == got.headers["content-length"]


@pytest.mark.slow
@pytest.mark.parametrize(("path", "allowed"), ODD_PATHS)
def test_over_a_real_server_every_odd_method_that_reaches_keyguard_gets_405_wavix_body(
    served: tuple[KeyguardServer, str], path: str, allowed: set[str]
) -> None:
    server, token = served
    reached = []

    for method in ("get", "head", "Get", "FOO", "PROPFIND", "PURGE"):
        answer = raw_http(server, method, path, token)
        if (answer.status, answer.body) == PARSER_REFUSAL:
            continue
        reached.append(method)
        assert (answer.status, answer.headers["content-type"]) == (405, "application/json")
        assert json.loads(answer.body) == METHOD_NOT_ALLOWED
        assert allowed_methods(answer.headers) == allowed

    assert "PROPFIND" in reached  # a registered method passes every HTTP/1.1 parser
