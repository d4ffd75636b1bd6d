"""Logs never carry a secret: access lines without query strings, errors by type only."""

import re

import httpx
import pytest
from starlette.testclient import TestClient

from keyguard.runtime import Keyguard
from tests.conftest import Tenant
from tests.server import Servers

SECRET_DETAIL = "detail that could quote input"


@pytest.mark.slow
def test_access_log_shows_the_path_without_the_query_string(servers: Servers) -> None:
    server = servers(options=["--access-log"])
    token = server.create_account("acme")["api_key"]["value"]
    server.start()

    answer = httpx.get(f"{server.base_url}/v1/api-keys?appid={token}&label=x", timeout=10)
    server.stop()

    assert answer.status_code == 200
    logs = server.stdout + server.stderr
    assert '"GET /v1/api-keys HTTP/1.1" 200' in logs
    assert token not in logs
    assert "appid" not in logs


@pytest.mark.slow
def test_access_log_redacts_the_token_of_a_console_sign_in_link(servers: Servers) -> None:
    operator = "access-log-operator-token-0123456789abcdef"
    server = servers(options=["--access-log"], settings={"KEYGUARD_ADMIN_TOKEN": operator})
    account_id = server.create_account("acme")["account"]["id"]
    server.start()
    with server.client(operator) as admin:
        made = admin.post(f"/admin/v1/accounts/{account_id}/console-link").json()
    link_token = made["url"].rsplit("/", 1)[1]

    with httpx.Client(timeout=10) as browser:
        shown = browser.get(made["url"])
        form = dict(re.findall(r'name="(token|link)" value="([^"]+)"', shown.text))
        used = browser.post(f"{server.base_url}/console/link", data=form)
    server.stop()

    assert (shown.status_code, used.status_code) == (200, 303)
    assert used.headers["location"] == "/console/keys"
    logs = server.stdout + server.stderr
    assert '"GET /console/link/[redacted] HTTP/1.1" 200' in logs
    assert '"POST /console/link HTTP/1.1" 303' in logs
    assert link_token not in logs


def boom(*_args: object, **_kwargs: object) -> None:
    raise RuntimeError(SECRET_DETAIL)


def test_unexpected_error_in_the_api_is_logged_by_type_and_path_only(
    client: TestClient,
    keyguard: Keyguard,
    tenant: Tenant,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    monkeypatch.setattr(keyguard.service, "list_keys", boom)

    response = client.get(f"/v1/api-keys?appid={tenant.token}")

    assert (response.status_code, response.json()) == (
        500,
        {"success": False, "message": "Internal server error"},
    )
    assert "unexpected RuntimeError on GET /v1/api-keys" in caplog.text
    assert SECRET_DETAIL not in caplog.text
    assert tenant.token not in caplog.text


def test_unexpected_error_in_forward_auth_is_logged_by_type_only(
    client: TestClient,
    keyguard: Keyguard,
    tenant: Tenant,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    monkeypatch.setattr(keyguard.decider, "decide", boom)

    response = client.get("/auth/forward", headers=tenant.headers | {"X-Original-URI": "/v1"})

    assert (response.status_code, response.json()) == (
        500,
        {"success": False, "message": "Internal server error"},
    )
    assert "unexpected RuntimeError in forward auth" in caplog.text
    assert SECRET_DETAIL not in caplog.text
    assert tenant.token not in caplog.text
