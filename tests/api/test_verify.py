"""``POST /auth/verify``: the decision as JSON, for backends that ask directly."""

import pytest
from pydantic import SecretStr
from starlette.testclient import TestClient

from keyguard.config import Settings
from keyguard.runtime import Keyguard
from tests.conftest import TEST_SECRET, Tenant

VERIFY_TOKEN = "verify-" + "x" * 32


def _ask(client: TestClient, **body: object) -> dict[str, object]:
    response = client.post("/auth/verify", json=body)
    assert response.status_code == 200
    result: dict[str, object] = response.json()
    return result


def test_allowed_decision(client: TestClient, tenant: Tenant) -> None:
    assert _ask(client, key=tenant.token, ip="192.0.2.1", method="DELETE", path="/v1/trunks/7") == {
        "allowed": True,
        "status": 200,
        "message": "OK",
        "account_id": tenant.account_id,
        "key_id": tenant.key_id,
        "scope": "trunks:write",
        "retry_after": None,
    }


def test_refusals_are_decisions_too(client: TestClient, keyguard: Keyguard, tenant: Tenant) -> None:
    scoped = keyguard.service.create_key(
        tenant.account_id, {"label": "s", "scopes_enabled": True, "trunks": {"allow": "read"}}
    )
    assert _ask(client, key=None, method="GET", path="/v1/trunks") == {
        "allowed": False,
        "status": 401,
        "message": "Unauthorized",
        "account_id": None,
        "key_id": None,
        "scope": None,
        "retry_after": None,
    }
    refused = _ask(client, key=scoped.value, ip="192.0.2.1", method="POST", path="/v1/trunks")
    assert refused["status"] == 403
    assert refused["message"] == "API key scope trunks: write access required"
    assert refused["scope"] == "trunks:write"


@pytest.mark.parametrize(
    ("body", "name"),
    [
        (b"{", "body"),
        (b"[]", "body"),
        (b'{"key": 5, "method": "GET", "path": "/"}', "key"),
        (b'{"key": "k", "path": "/"}', "method"),
        (b'{"key": "k", "method": "GET", "path": ""}', "path"),
    ],
    ids=["malformed", "array", "key_type", "no_method", "empty_path"],
)
def test_bad_body_is_400_with_wavix_body(client: TestClient, body: bytes, name: str) -> None:
    response = client.post(
        "/auth/verify", content=body, headers={"Content-Type": "application/json"}
    )
    assert response.status_code == 400
    assert response.json() == {"success": False, "message": f"Missing or invalid parameter {name}"}


class TestWithVerifyToken:
    @pytest.fixture
    def settings(self, database_url: str) -> Settings:
        return Settings(
            database_url=database_url, secret_key=TEST_SECRET, verify_token=SecretStr(VERIFY_TOKEN)
        )

    def test_caller_without_the_token_is_401(self, client: TestClient, tenant: Tenant) -> None:
        body = {"key": tenant.token, "method": "GET", "path": "/v1/numbers"}
        for headers in ({}, {"Authorization": "Bearer wrong"}, tenant.headers):
            response = client.post("/auth/verify", json=body, headers=headers)
            assert response.status_code == 401
            assert response.json() == {"success": False, "error": True, "message": "Unauthorized"}

    def test_caller_with_the_token_gets_decisions(self, client: TestClient, tenant: Tenant) -> None:
        response = client.post(
            "/auth/verify",
            json={"key": tenant.token, "method": "GET", "path": "/v1/numbers"},
            headers={"Authorization": f"Bearer {VERIFY_TOKEN}"},
        )
        assert response.status_code == 200
        assert response.json()["allowed"] is True
