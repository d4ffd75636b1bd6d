"""Per-key request counts: ``GET /v1/api-keys/{id}/usage`` and ``GET /v1/usage``."""

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from starlette.testclient import TestClient

from keyguard.config import Settings
from keyguard.runtime import Keyguard
from tests.conftest import TEST_SECRET, Tenant, bearer

KEYS = "/v1/api-keys"
ZERO = {"allowed": 0, "unauthorized": 0, "forbidden": 0, "rate_limited": 0, "no_credits": 0}


def forward(client: TestClient, token: str, method: str, uri: str) -> int:
    headers = {**bearer(token), "X-Original-Method": method, "X-Original-URI": uri}
    return client.get("/auth/forward", headers=headers).status_code


def usage(client: TestClient, tenant: Tenant, key_id: int, **params: Any) -> dict[str, Any]:
    response = client.get(f"{KEYS}/{key_id}/usage", params=params, headers=tenant.headers)
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


@pytest.fixture
def settings(database_url: str) -> Settings:
    """Counts are flushed by the tests alone, so that each test knows what was written."""
    return Settings(database_url=database_url, secret_key=TEST_SECRET, usage_flush_interval=3600)


@pytest.fixture
def reader(keyguard: Keyguard, tenant: Tenant) -> tuple[int, str]:
    """A key that may read messages and nothing else."""
    view = keyguard.service.create_key(
        tenant.account_id,
        {"label": "reader", "scopes_enabled": True, "messages": {"allow": "read"}},
    )
    return view.key.id, view.value


def test_every_outcome_of_a_key_is_counted_in_its_minute_hour_and_day(
    client: TestClient, keyguard: Keyguard, tenant: Tenant, reader: tuple[int, str]
) -> None:
    key_id, token = reader
    sent = {"allowed": 0, "forbidden": 0, "unauthorized": 0}
    for _ in range(5):
        assert forward(client, token, "GET", "/v3/messages") == 200
        sent["allowed"] += 1
    for _ in range(3):
        assert forward(client, token, "POST", "/v3/messages") == 403
        sent["forbidden"] += 1
    client.patch(f"{KEYS}/{key_id}/deactivate", headers=tenant.headers)
    for _ in range(2):
        assert forward(client, token, "GET", "/v3/messages") == 401
        sent["unauthorized"] += 1
    keyguard.usage.flush()

    for granularity in ("minute", "hour", "day"):
        series = usage(client, tenant, key_id, granularity=granularity)
        counted = {name: sum(point[name] for point in series["items"]) for name in ZERO}
        assert counted == {**ZERO, **sent}, granularity
    totals = client.get("/v1/usage", headers=tenant.headers).json()
    assert {**ZERO, **sent, "key_id": key_id} in totals["items"]


def test_a_series_has_a_point_for_every_bucket_of_the_span(
    client: TestClient, keyguard: Keyguard, tenant: Tenant, reader: tuple[int, str]
) -> None:
    key_id, token = reader
    forward(client, token, "GET", "/v3/messages")
    keyguard.usage.flush()
    now = datetime.now(UTC)
    since = (now - timedelta(hours=2)).replace(minute=0, second=0, microsecond=0)

    series = usage(
        client,
        tenant,
        key_id,
        granularity="hour",
        **{"from": since.isoformat(), "to": now.isoformat()},
    )

    starts = [point["start"] for point in series["items"]]
    assert len(starts) == 3
    assert starts[0] == since.strftime("%Y-%m-%dT%H:%M:%SZ")
    assert [point["allowed"] for point in series["items"]] == [0, 0, 1]
    assert series["granularity"] == "hour"


def test_unflushed_requests_are_not_counted_yet_and_flushes_add_up(
    client: TestClient, keyguard: Keyguard, tenant: Tenant, reader: tuple[int, str]
) -> None:
    key_id, token = reader
    forward(client, token, "GET", "/v3/messages")
    assert sum(p["allowed"] for p in usage(client, tenant, key_id, granularity="day")["items"]) == 0

    keyguard.usage.flush()
    forward(client, token, "GET", "/v3/messages")
    keyguard.usage.flush()

    assert sum(p["allowed"] for p in usage(client, tenant, key_id, granularity="day")["items"]) == 2


def test_totals_name_only_keys_with_requests_and_only_the_callers(
    client: TestClient,
    keyguard: Keyguard,
    tenant: Tenant,
    other_tenant: Tenant,
    reader: tuple[int, str],
) -> None:
    _key_id, token = reader
    forward(client, token, "GET", "/v3/messages")
    forward(client, other_tenant.token, "GET", "/v3/messages")
    keyguard.usage.flush()

    mine = client.get("/v1/usage", headers=tenant.headers).json()["items"]
    theirs = client.get("/v1/usage", headers=other_tenant.headers).json()["items"]

    # The account's own full-access key counts too, once its requests are flushed.
    assert {item["key_id"] for item in mine} - {tenant.key_id} == {reader[0]}
    assert {item["key_id"] for item in theirs} == {other_tenant.key_id}


def test_another_accounts_key_or_a_deleted_one_is_404(
    client: TestClient, tenant: Tenant, other_tenant: Tenant
) -> None:
    for key_id in (other_tenant.key_id, 999):
        response = client.get(f"{KEYS}/{key_id}/usage", headers=tenant.headers)
        assert response.status_code == 404
        assert response.json() == {"success": False, "message": "Record not found"}


@pytest.mark.parametrize(
    ("path", "params", "status", "message"),
    [
        ("key", {"granularity": "week"}, 400, "Missing or invalid parameter granularity"),
        ("key", {"from": "yesterday"}, 400, "Missing or invalid parameter from"),
        ("totals", {"to": "soon"}, 400, "Missing or invalid parameter to"),
        (
            "key",
            {"from": "2030-01-02T00:00:00Z", "to": "2030-01-01T00:00:00Z"},
            422,
            "From must be earlier than to",
        ),
        (
            "totals",
            {"from": "2030-01-01T00:00:00Z", "to": "2030-01-01T00:00:00Z"},
            422,
            "From must be earlier than to",
        ),
        (
            "key",
            {"granularity": "minute", "from": "2030-01-01T00:00:00Z", "to": "2030-01-09T00:00:00Z"},
            422,
            "Too many points: at most 10080 minutes per series",
        ),
    ],
)
def test_if_a_usage_parameter_is_unacceptable_then_4xx_with_a_wavix_body(
    client: TestClient, tenant: Tenant, path: str, params: dict[str, str], status: int, message: str
) -> None:
    url = f"{KEYS}/{tenant.key_id}/usage" if path == "key" else "/v1/usage"

    response = client.get(url, params=params, headers=tenant.headers)

    assert response.status_code == status
    assert response.json() == {"success": False, "message": message}


def test_a_scoped_key_may_not_read_usage(client: TestClient, reader: tuple[int, str]) -> None:
    key_id, token = reader
    for url in (f"{KEYS}/{key_id}/usage", "/v1/usage"):
        response = client.get(url, headers=bearer(token))
        assert response.status_code == 403
