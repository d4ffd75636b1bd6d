"""Per-key rate limits over HTTP: the ``ratelimit`` field and the 429 answers."""

import re
import time
from typing import Any

import pytest
from starlette.testclient import TestClient

from keyguard.api import create_app
from keyguard.config import Settings
from keyguard.runtime import Keyguard
from tests.conftest import (
    CLIENT_IP,
    TEST_SECRET,
    ClientFactory,
    Tenant,
    bearer,
    create_key,
    make_tenant,
)

KEYS = "/v1/api-keys"
LIMITED = {"success": False, "message": "Rate limit exceeded"}


def forward(client: TestClient, token: str, path: str = "/v1/trunks") -> Any:
    headers = {"X-Original-URI": path, "X-Original-Method": "GET", **bearer(token)}
    return client.get("/auth/forward", headers=headers)


def keys_without_use(client: TestClient, tenant: Tenant) -> list[dict[str, Any]]:
    """The account's keys, without ``last_used_at``, which these very requests move."""
    keys = client.get(KEYS, headers=tenant.headers).json()
    return [{name: value for name, value in key.items() if name != "last_used_at"} for key in keys]


def ratelimit_field(value: str) -> tuple[int, int]:
    """``r`` and ``t`` of a ``RateLimit`` header for keyguard's one policy, ``"key"``."""
    found = re.fullmatch(r'"key";r=(\d+);t=(\d+)', value)
    assert found is not None, value
    return int(found[1]), int(found[2])


# -- the field ----------------------------------------------------------------------


def test_created_key_shows_its_rate_limit(client: TestClient, tenant: Tenant) -> None:
    key = create_key(client, tenant, ratelimit={"limit": 100, "duration": 60})

    assert key["ratelimit"] == {"limit": 100, "duration": 60}
    names = list(key)  # after leaked_at, before the credits
    assert names.index("leaked_at") + 1 == names.index("ratelimit") == names.index("remaining") - 1
    shown = client.get(f"{KEYS}/{key['id']}", headers=tenant.headers).json()
    assert shown["ratelimit"] == {"limit": 100, "duration": 60}


def test_key_without_rate_limit_shows_null(client: TestClient, tenant: Tenant) -> None:
    assert create_key(client, tenant)["ratelimit"] is None


def test_patch_sets_keeps_on_null_and_removes_with_none(client: TestClient, tenant: Tenant) -> None:
    path = f"{KEYS}/{create_key(client, tenant)['id']}"

    set_ = client.patch(
        path, json={"ratelimit": {"limit": 5, "duration": 1}}, headers=tenant.headers
    )
    kept = client.patch(path, json={"label": "renamed", "ratelimit": None}, headers=tenant.headers)
    removed = client.patch(path, json={"ratelimit": "none"}, headers=tenant.headers)

    assert set_.json()["ratelimit"] == {"limit": 5, "duration": 1}
    assert (kept.json()["label"], kept.json()["ratelimit"]) == (
        "renamed",
        {"limit": 5, "duration": 1},
    )
    assert removed.json()["ratelimit"] is None


BAD = "Missing or invalid parameter ratelimit"
LIMIT_RANGE = "Rate limit must be between 1 and 1000000000 requests"
DURATION_RANGE = "Rate limit duration must be between 1 and 86400 seconds (1 day)"


@pytest.mark.parametrize(
    ("value", "status", "message"),
    [
        pytest.param({"limit": 0, "duration": 60}, 422, LIMIT_RANGE, id="zero-limit"),
        pytest.param({"limit": -5, "duration": 60}, 422, LIMIT_RANGE, id="negative-limit"),
        pytest.param({"limit": 10**30, "duration": 60}, 422, LIMIT_RANGE, id="huge-limit"),
        pytest.param({"limit": 10, "duration": 0}, 422, DURATION_RANGE, id="zero-duration"),
        pytest.param({"limit": 10, "duration": -1}, 422, DURATION_RANGE, id="negative-duration"),
        pytest.param({"limit": 10, "duration": 86401}, 422, DURATION_RANGE, id="over-a-day"),
        pytest.param({"limit": 1.5, "duration": 60}, 400, BAD, id="fractional-limit"),
        pytest.param({"limit": 10, "duration": 1.0}, 400, BAD, id="float-duration"),
        pytest.param({"limit": "10", "duration": 60}, 400, BAD, id="text-limit"),
        pytest.param({"limit": True, "duration": 60}, 400, BAD, id="boolean-limit"),
        pytest.param({"limit": 10}, 400, BAD, id="no-duration"),
        pytest.param({"limit": 10, "duration": 60, "burst": 5}, 400, BAD, id="unknown-member"),
        pytest.param([10, 60], 400, BAD, id="array"),
        pytest.param("10/60s", 400, BAD, id="text"),
        pytest.param(100, 400, BAD, id="number"),
    ],
)
def test_if_ratelimit_is_unacceptable_then_4xx_and_nothing_changes(
    client: TestClient, tenant: Tenant, value: object, status: int, message: str
) -> None:
    key = create_key(client, tenant, ratelimit={"limit": 7, "duration": 70})
    before = keys_without_use(client, tenant)

    created = client.post(KEYS, json={"label": "x", "ratelimit": value}, headers=tenant.headers)
    patched = client.patch(f"{KEYS}/{key['id']}", json={"ratelimit": value}, headers=tenant.headers)

    for response in (created, patched):
        assert response.status_code == status
        assert response.json() == {"success": False, "message": message}
    assert keys_without_use(client, tenant) == before


# -- forward auth -------------------------------------------------------------------


def test_forward_auth_allows_up_to_the_limit_then_429_with_headers(
    client: TestClient, tenant: Tenant
) -> None:
    token = create_key(client, tenant, ratelimit={"limit": 3, "duration": 3600})["value"]

    allowed = [forward(client, token) for _ in range(3)]
    refused = forward(client, token)

    assert [response.status_code for response in allowed] == [200, 200, 200]
    assert [ratelimit_field(r.headers["RateLimit"])[0] for r in allowed] == [2, 1, 0]
    assert all(r.headers["RateLimit-Policy"] == '"key";q=3;w=3600' for r in allowed)
    assert refused.status_code == 429
    assert refused.json() == LIMITED
    assert refused.headers["X-Keyguard-Message"] == "Rate limit exceeded"
    assert refused.headers["RateLimit-Policy"] == '"key";q=3;w=3600'
    retry_after = int(refused.headers["Retry-After"])
    assert 1 <= retry_after <= 2 * 3600
    assert ratelimit_field(refused.headers["RateLimit"]) == (0, retry_after)


def test_key_without_rate_limit_gets_no_ratelimit_headers(
    client: TestClient, tenant: Tenant
) -> None:
    response = forward(client, tenant.token)

    assert response.status_code == 200
    assert "RateLimit" not in response.headers
    assert "RateLimit-Policy" not in response.headers


def test_each_key_has_its_own_limit(client: TestClient, tenant: Tenant) -> None:
    first = create_key(client, tenant, ratelimit={"limit": 1, "duration": 3600})["value"]
    second = create_key(client, tenant, ratelimit={"limit": 1, "duration": 3600})["value"]

    assert forward(client, first).status_code == 200
    assert forward(client, first).status_code == 429
    assert forward(client, second).status_code == 200


def test_refused_requests_are_not_counted(client: TestClient, tenant: Tenant) -> None:
    token = create_key(
        client,
        tenant,
        ratelimit={"limit": 1, "duration": 3600},
        scopes_enabled=True,
        trunks={"allow": "read"},
    )["value"]

    forbidden = [forward(client, token, "/v1/unknown").status_code for _ in range(3)]

    assert forbidden == [403, 403, 403]  # a 403 spends nothing
    assert forward(client, token, "/v1/trunks").status_code == 200
    assert forward(client, token, "/v1/trunks").status_code == 429


def test_raising_and_removing_a_limit_takes_effect(client: TestClient, tenant: Tenant) -> None:
    key = create_key(client, tenant, ratelimit={"limit": 1, "duration": 3600})
    path, token = f"{KEYS}/{key['id']}", key["value"]
    assert forward(client, token).status_code == 200
    assert forward(client, token).status_code == 429

    client.patch(path, json={"ratelimit": {"limit": 3, "duration": 3600}}, headers=tenant.headers)
    raised = [forward(client, token).status_code for _ in range(4)]
    client.patch(path, json={"ratelimit": "none"}, headers=tenant.headers)
    removed = [forward(client, token) for _ in range(5)]

    # A new limit starts a new count: the old one was for another policy.
    assert raised == [200, 200, 200, 429]
    assert all(response.status_code == 200 for response in removed)
    assert all("RateLimit" not in response.headers for response in removed)


def test_rate_limit_refusals_are_no_failed_authentications(database_url: str) -> None:
    settings = Settings(
        database_url=database_url,
        secret_key=TEST_SECRET,
        refresh_interval=0.05,
        auth_failures_per_minute=2,
    )
    runtime = Keyguard(settings)
    runtime.store.migrate()
    tenant = make_tenant(runtime, "acme")

    with TestClient(create_app(keyguard=runtime), client=(CLIENT_IP, 50000)) as client:
        token = create_key(client, tenant, ratelimit={"limit": 1, "duration": 3600})["value"]
        statuses = [forward(client, token).status_code for _ in range(6)]
        wrong = forward(client, "kg_" + "x" * 40)
        other = forward(client, tenant.token)

    assert statuses == [200, 429, 429, 429, 429, 429]
    assert wrong.status_code == 401  # the first failure from this address, not a lock-out
    assert other.status_code == 200


# -- verify, the middleware and metrics ---------------------------------------------


def test_verify_answers_429_with_retry_after_and_headers(
    client: TestClient, tenant: Tenant
) -> None:
    token = create_key(client, tenant, ratelimit={"limit": 1, "duration": 60})["value"]
    asked = {"key": token, "ip": "192.0.2.1", "method": "GET", "path": "/v1/trunks"}

    allowed = client.post("/auth/verify", json=asked)
    refused = client.post("/auth/verify", json=asked)

    assert allowed.json()["status"] == 200
    assert ratelimit_field(allowed.headers["RateLimit"])[0] == 0
    body = refused.json()
    assert (body["allowed"], body["status"], body["message"]) == (False, 429, "Rate limit exceeded")
    assert 1 <= body["retry_after"] <= 120
    assert refused.headers["RateLimit-Policy"] == '"key";q=1;w=60'
    assert ratelimit_field(refused.headers["RateLimit"]) == (0, body["retry_after"])


def test_management_api_through_the_middleware_answers_429(
    client: TestClient, tenant: Tenant
) -> None:
    token = create_key(client, tenant, ratelimit={"limit": 2, "duration": 3600})["value"]

    statuses = [client.get(KEYS, headers=bearer(token)).status_code for _ in range(2)]
    refused = client.get(KEYS, headers=bearer(token))

    assert statuses == [200, 200]
    assert refused.status_code == 429
    assert refused.json() == LIMITED
    assert int(refused.headers["Retry-After"]) >= 1
    assert refused.headers["RateLimit-Policy"] == '"key";q=2;w=3600'


def test_metrics_count_rate_limited_refusals_without_key_labels(
    client: TestClient, tenant: Tenant
) -> None:
    token = create_key(client, tenant, ratelimit={"limit": 1, "duration": 3600})["value"]
    for _ in range(4):
        forward(client, token)

    exposition = client.get("/metrics").text

    assert "keyguard_rate_limited_total 3.0" in exposition.splitlines()


def test_clients_of_one_process_share_the_limit(client_from: ClientFactory, tenant: Tenant) -> None:
    first, second = client_from("192.0.2.1"), client_from("192.0.2.2")
    token = create_key(first, tenant, ratelimit={"limit": 4, "duration": 3600})["value"]

    statuses = [forward(client, token).status_code for client in (first, second) * 3]

    assert statuses == [200, 200, 200, 200, 429, 429]


def test_rate_limited_requests_are_counted_in_the_keys_usage(
    client: TestClient, tenant: Tenant
) -> None:
    key = create_key(client, tenant, ratelimit={"limit": 2, "duration": 3600})
    for _ in range(5):
        forward(client, key["value"])
    path = f"{KEYS}/{key['id']}/usage?granularity=minute"

    deadline, points = time.monotonic() + 5, []
    while time.monotonic() < deadline:  # counts reach the database with the usage flush
        points = client.get(path, headers=tenant.headers).json()["items"]
        if sum(point["rate_limited"] for point in points) == 3:
            break
        time.sleep(0.05)

    assert sum(point["rate_limited"] for point in points) == 3
    assert sum(point["allowed"] for point in points) == 2
