"""Every error keyguard sends has a Wavix body, whatever caused it (§4).

No framework default (``{"detail": ...}``, an HTML page, an empty body) may reach
a client: not for unknown routes, wrong methods, hostile requests, nor bugs.
"""

from collections.abc import Callable, Iterator

import httpx2
import pytest
from starlette.testclient import TestClient

from keyguard.errors import StorageUnavailable
from keyguard.runtime import Keyguard
from tests.conftest import Tenant

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
        pytest.param("", {"GET", "POST"}, id="collection"),
        pytest.param("/{id}", {"GET", "PATCH", "DELETE"}, id="key"),
        pytest.param("/{id}/activate", {"PATCH"}, id="activate"),
    ],
)
def test_if_method_is_not_allowed_then_allow_header_lists_every_method(
    client: TestClient, tenant: Tenant, path: str, allowed: set[str]
) -> None:
    """RFC 9110 §15.5.6: a 405 names all the methods the resource supports."""
    response = client.put(KEYS + path.format(id=tenant.key_id), headers=tenant.headers)

    assert response.status_code == 405
    assert {method.strip() for method in response.headers["allow"].split(",")} == allowed


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
