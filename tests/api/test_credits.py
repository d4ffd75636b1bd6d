"""Usage credits over HTTP: the ``remaining`` and ``refill`` fields and the 429 answers.

Leases reach the serving process in the background, so a test that spends a
key's credits sends requests until the key has been refused for a while
(:func:`drain`), then counts what was allowed: on one process every credit
must be spent, and not one more.
"""

import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import pytest
from fastapi import FastAPI
from starlette.testclient import TestClient

from keyguard import KeyguardMiddleware
from keyguard.runtime import Keyguard
from tests.conftest import Tenant, bearer, create_key

KEYS = "/v1/api-keys"
EXHAUSTED = {"success": False, "message": "Usage limit exceeded"}
REFILL = {"amount": 1000, "interval": "daily"}


def forward(client: TestClient, token: str, path: str = "/v1/trunks") -> Any:
    headers = {"X-Original-URI": path, "X-Original-Method": "GET", **bearer(token)}
    return client.get("/auth/forward", headers=headers)


def drain(ask: Callable[[], int], quiet: float = 1.5, deadline: float = 30.0) -> int:
    """Ask until every answer has been a refusal for ``quiet`` seconds; how many were
    allowed. A refusal while the process waits for its next lease is retried."""
    allowed, refused_since, started = 0, None, time.monotonic()
    while time.monotonic() - started < deadline:
        status = ask()
        now = time.monotonic()
        if status == 200:
            allowed, refused_since = allowed + 1, None
            continue
        assert status == 429, status
        refused_since = refused_since or now
        if now - refused_since >= quiet:
            return allowed
        time.sleep(0.01)
    raise AssertionError("the key was never refused for good")


def stored_credits(keyguard: Keyguard, tenant: Tenant, key_id: int) -> int:
    """What the store holds and what this process holds in its lease: the credits
    not spent yet, read until two readings agree (a lease may be on its way back)."""
    readings: list[int] = []
    while len(readings) < 2 or readings[-1] != readings[-2]:
        time.sleep(0.05 if readings else 0)
        key = keyguard.store.get_key(tenant.account_id, key_id)
        assert key is not None
        assert key.settings.remaining is not None
        readings.append(key.settings.remaining + keyguard.credits.held())
    return readings[-1]


def without_use(key: dict[str, Any]) -> dict[str, Any]:
    return {name: value for name, value in key.items() if name not in ("last_used_at", "remaining")}


# -- the fields -----------------------------------------------------------------------


def test_created_key_shows_its_credits_after_its_rate_limit(
    client: TestClient, tenant: Tenant
) -> None:
    key = create_key(client, tenant, remaining=500, refill=REFILL)

    assert list(key)[-4:] == ["ratelimit", "remaining", "refill", "imported"]
    assert (key["remaining"], key["refill"]) == (500, REFILL)
    shown = client.get(f"{KEYS}/{key['id']}", headers=tenant.headers).json()
    assert shown["refill"] == REFILL
    assert 499 <= shown["remaining"] <= 500  # this process may hold one in a lease


def test_a_key_without_credits_is_unlimited(client: TestClient, tenant: Tenant) -> None:
    key = create_key(client, tenant)

    assert (key["remaining"], key["refill"]) == (None, None)
    assert all(forward(client, key["value"]).status_code == 200 for _ in range(20))


def test_patch_sets_keeps_and_removes_credits(client: TestClient, tenant: Tenant) -> None:
    path = f"{KEYS}/{create_key(client, tenant)['id']}"

    set_ = client.patch(path, json={"remaining": 10, "refill": REFILL}, headers=tenant.headers)
    kept = client.patch(path, json={"label": "x", "remaining": None}, headers=tenant.headers)
    no_refill = client.patch(path, json={"refill": "none"}, headers=tenant.headers)
    unlimited = client.patch(path, json={"remaining": "none"}, headers=tenant.headers)

    assert (set_.json()["remaining"], set_.json()["refill"]) == (10, REFILL)
    assert kept.json()["refill"] == REFILL
    assert kept.json()["remaining"] in (9, 10)
    assert no_refill.json()["refill"] is None
    assert (unlimited.json()["remaining"], unlimited.json()["refill"]) == (None, None)


def test_removing_credits_removes_their_refill(client: TestClient, tenant: Tenant) -> None:
    key = create_key(client, tenant, remaining=5, refill=REFILL)

    patched = client.patch(
        f"{KEYS}/{key['id']}", json={"remaining": "none"}, headers=tenant.headers
    )

    assert (patched.json()["remaining"], patched.json()["refill"]) == (None, None)


BAD_REMAINING = "Missing or invalid parameter remaining"
BAD_REFILL = "Missing or invalid parameter refill"
REMAINING_RANGE = "Remaining must be between 0 and 1000000000000 credits"
AMOUNT_RANGE = "Refill amount must be between 1 and 1000000000000 credits"
INTERVAL = 'Refill interval must be "daily" or "monthly"'
NEEDS_CREDITS = "Refill needs remaining credits (remaining must be a number)"


@pytest.mark.parametrize(
    ("fields", "status", "message"),
    [
        pytest.param({"remaining": -1}, 422, REMAINING_RANGE, id="negative"),
        pytest.param({"remaining": 10**30}, 422, REMAINING_RANGE, id="huge"),
        pytest.param({"remaining": 1.5}, 400, BAD_REMAINING, id="fraction"),
        pytest.param({"remaining": 10.0}, 400, BAD_REMAINING, id="float"),
        pytest.param({"remaining": "10"}, 400, BAD_REMAINING, id="string"),
        pytest.param({"remaining": True}, 400, BAD_REMAINING, id="boolean"),
        pytest.param({"remaining": [10]}, 400, BAD_REMAINING, id="array"),
        pytest.param({"refill": {"amount": 0, "interval": "daily"}}, 422, AMOUNT_RANGE, id="zero"),
        pytest.param({"refill": {"amount": -5, "interval": "daily"}}, 422, AMOUNT_RANGE, id="neg"),
        pytest.param(
            {"refill": {"amount": 10**30, "interval": "daily"}}, 422, AMOUNT_RANGE, id="big"
        ),
        pytest.param({"refill": {"amount": 2.5, "interval": "daily"}}, 400, BAD_REFILL, id="frac"),
        pytest.param({"refill": {"amount": "5", "interval": "daily"}}, 400, BAD_REFILL, id="text"),
        pytest.param({"refill": {"amount": 5, "interval": "weekly"}}, 422, INTERVAL, id="weekly"),
        pytest.param({"refill": {"amount": 5}}, 400, BAD_REFILL, id="no-interval"),
        pytest.param(
            {"refill": {"amount": 5, "interval": "daily", "at": 0}}, 400, BAD_REFILL, id="extra"
        ),
        pytest.param({"refill": "1000/daily"}, 400, BAD_REFILL, id="refill-string"),
    ],
)
def test_if_credits_are_unacceptable_then_4xx_and_nothing_changes(
    client: TestClient,
    keyguard: Keyguard,
    tenant: Tenant,
    fields: dict[str, Any],
    status: int,
    message: str,
) -> None:
    key = create_key(client, tenant, remaining=7, refill={"amount": 7, "interval": "monthly"})
    before = [without_use(each) for each in client.get(KEYS, headers=tenant.headers).json()]
    held = stored_credits(keyguard, tenant, key["id"])

    created = client.post(KEYS, json={"label": "x", **fields}, headers=tenant.headers)
    patched = client.patch(f"{KEYS}/{key['id']}", json=fields, headers=tenant.headers)

    for response in (created, patched):
        assert response.status_code == status
        assert response.json() == {"success": False, "message": message}
    after = [without_use(each) for each in client.get(KEYS, headers=tenant.headers).json()]
    assert after == before
    assert stored_credits(keyguard, tenant, key["id"]) == held


def test_a_refill_without_credits_is_refused(client: TestClient, tenant: Tenant) -> None:
    created = client.post(KEYS, json={"label": "x", "refill": REFILL}, headers=tenant.headers)

    assert created.status_code == 422
    assert created.json() == {"success": False, "message": NEEDS_CREDITS}


def test_removing_credits_while_giving_a_refill_is_refused(
    client: TestClient, tenant: Tenant
) -> None:
    key = create_key(client, tenant, remaining=5)
    change = {"remaining": "none", "refill": REFILL}

    patched = client.patch(f"{KEYS}/{key['id']}", json=change, headers=tenant.headers)

    assert patched.status_code == 422
    assert patched.json() == {"success": False, "message": NEEDS_CREDITS}
    shown = client.get(f"{KEYS}/{key['id']}", headers=tenant.headers).json()
    assert shown["refill"] is None
    assert shown["remaining"] is not None


# -- spending -------------------------------------------------------------------------


def test_forward_auth_allows_exactly_the_credits_then_429(
    client: TestClient, keyguard: Keyguard, tenant: Tenant
) -> None:
    key = create_key(client, tenant, remaining=40)

    allowed = drain(lambda: forward(client, key["value"]).status_code)
    refused = forward(client, key["value"])

    assert allowed == 40
    assert refused.status_code == 429
    assert refused.json() == EXHAUSTED
    assert refused.headers["X-Keyguard-Message"] == "Usage limit exceeded"
    assert stored_credits(keyguard, tenant, key["id"]) == 0
    shown = client.get(f"{KEYS}/{key['id']}", headers=tenant.headers).json()
    assert shown["remaining"] == 0


def test_verify_answers_usage_limit_exceeded_at_zero(client: TestClient, tenant: Tenant) -> None:
    key = create_key(client, tenant, remaining=3)

    def ask() -> int:
        body = {"key": key["value"], "method": "GET", "path": "/v1/trunks"}
        decision = client.post("/auth/verify", json=body).json()
        assert decision["message"] in ("OK", "Usage limit exceeded")
        status: int = decision["status"]
        return status

    assert drain(ask) == 3


def test_the_middleware_refuses_at_zero_with_a_wavix_body(
    keyguard: Keyguard, tenant: Tenant
) -> None:
    view = keyguard.service.create_key(tenant.account_id, {"label": "m", "remaining": 2})

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        keyguard.start()
        yield
        keyguard.stop()

    app = FastAPI(lifespan=lifespan)
    app.add_middleware(KeyguardMiddleware, decider=keyguard.decider)

    @app.get("/v3/messages")
    async def messages() -> dict[str, bool]:
        return {"ok": True}

    with TestClient(app) as client:
        allowed = drain(lambda: client.get("/v3/messages", headers=bearer(view.value)).status_code)
        refused = client.get("/v3/messages", headers=bearer(view.value))

    assert allowed == 2
    assert (refused.status_code, refused.json()) == (429, EXHAUSTED)


def test_refused_requests_spend_nothing(
    client: TestClient, keyguard: Keyguard, tenant: Tenant
) -> None:
    key = create_key(
        client,
        tenant,
        remaining=10,
        ratelimit={"limit": 2, "duration": 3600},
        scopes_enabled=True,
        trunks={"allow": "read"},
    )
    token = key["value"]

    forbidden = [forward(client, token, "/v1/numbers").status_code for _ in range(3)]
    allowed = drain(lambda: forward(client, token).status_code)
    client.patch(f"{KEYS}/{key['id']}/deactivate", headers=tenant.headers)
    unauthorized = [forward(client, token).status_code for _ in range(3)]

    assert forbidden == [403, 403, 403]
    assert allowed == 2  # then the rate limit refuses, and spends no credit
    assert forward(client, token).status_code == 401
    assert unauthorized == [401, 401, 401]
    assert stored_credits(keyguard, tenant, key["id"]) == 8


def test_a_request_refused_for_credits_does_not_count_against_the_rate_limit(
    client: TestClient, keyguard: Keyguard, tenant: Tenant
) -> None:
    key = create_key(client, tenant, remaining=2, ratelimit={"limit": 5, "duration": 3600})
    assert drain(lambda: forward(client, key["value"]).status_code) == 2

    client.patch(f"{KEYS}/{key['id']}", json={"remaining": 100}, headers=tenant.headers)

    assert drain(lambda: forward(client, key["value"]).status_code) == 3  # the limit's rest
    assert forward(client, key["value"]).json()["message"] == "Rate limit exceeded"
    assert stored_credits(keyguard, tenant, key["id"]) == 97


def test_patch_raises_the_credits_of_an_exhausted_key(
    client: TestClient, keyguard: Keyguard, tenant: Tenant
) -> None:
    key = create_key(client, tenant, remaining=2)
    assert drain(lambda: forward(client, key["value"]).status_code) == 2

    patched = client.patch(f"{KEYS}/{key['id']}", json={"remaining": 5}, headers=tenant.headers)

    assert patched.json()["remaining"] == 5
    assert drain(lambda: forward(client, key["value"]).status_code) == 5
    assert stored_credits(keyguard, tenant, key["id"]) == 0


def test_a_rolled_key_passes_its_credits_on_and_keeps_its_own_until_told(
    client: TestClient, tenant: Tenant
) -> None:
    old = create_key(client, tenant, remaining=30, refill=REFILL)
    held = client.get(f"{KEYS}/{old['id']}", headers=tenant.headers).json()["remaining"]

    rolled = client.post(f"{KEYS}/{old['id']}/roll", json={}, headers=tenant.headers).json()
    emptied = client.patch(f"{KEYS}/{old['id']}", json={"remaining": 0}, headers=tenant.headers)

    # What the store holds passes on: less what this process leased of the old key.
    assert 29 <= held <= 30
    assert (rolled["remaining"], rolled["refill"]) == (held, REFILL)
    assert emptied.json()["remaining"] == 0
    assert drain(lambda: forward(client, old["value"]).status_code) == 0
    assert forward(client, old["value"]).json() == EXHAUSTED
    assert drain(lambda: forward(client, rolled["value"]).status_code) == held


def test_refusals_for_credits_are_counted_and_exported(
    client: TestClient, keyguard: Keyguard, tenant: Tenant
) -> None:
    key = create_key(client, tenant, remaining=1)
    drain(lambda: forward(client, key["value"]).status_code, quiet=0.3)
    refusals = keyguard.credits.refused
    for _ in range(4):
        assert forward(client, key["value"]).status_code == 429
    keyguard.usage.flush()

    series = client.get(f"{KEYS}/{key['id']}/usage", headers=tenant.headers).json()
    metrics = client.get("/metrics").text

    assert keyguard.credits.refused == refusals + 4
    assert sum(point["allowed"] for point in series["items"]) == 1
    assert sum(point["no_credits"] for point in series["items"]) == keyguard.credits.refused
    assert f"keyguard_credits_refused_total {float(keyguard.credits.refused)}" in metrics
