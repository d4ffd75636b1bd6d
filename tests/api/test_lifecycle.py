"""A key's life over HTTP: ``expires_at`` and ``POST /v1/api-keys/{id}/roll``."""

import time
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from starlette.testclient import TestClient

from keyguard.domain.fields import DEFAULT_GRACE_SECONDS
from keyguard.runtime import Keyguard
from tests.conftest import Tenant, bearer, create_key

KEYS = "/v1/api-keys"
UNAUTHORIZED = {"success": False, "error": True, "message": "Unauthorized"}


def moment(seconds: float) -> datetime:
    """Now plus ``seconds``, to the second, as key objects show times."""
    return (datetime.now(UTC) + timedelta(seconds=seconds)).replace(microsecond=0)


def shown(value: datetime) -> str:
    return value.strftime("%Y-%m-%dT%H:%M:%SZ")


def get_key(client: TestClient, tenant: Tenant, key_id: int) -> dict[str, Any]:
    response = client.get(f"{KEYS}/{key_id}", headers=tenant.headers)
    assert response.status_code == 200, response.text
    key: dict[str, Any] = response.json()
    return key


def roll(client: TestClient, tenant: Tenant, key_id: int, **body: Any) -> dict[str, Any]:
    response = client.post(f"{KEYS}/{key_id}/roll", json=body, headers=tenant.headers)
    assert response.status_code == 200, response.text
    key: dict[str, Any] = response.json()
    return key


def stored(client: TestClient, tenant: Tenant) -> list[dict[str, Any]]:
    """The account's keys, but for ``last_used_at``, which each listing moves."""
    keys: list[dict[str, Any]] = client.get(KEYS, headers=tenant.headers).json()
    return [{name: value for name, value in key.items() if name != "last_used_at"} for key in keys]


def works(client: TestClient, token: str) -> bool:
    """Whether ``token`` may list its account's keys (it has full access)."""
    status = client.get(KEYS, headers=bearer(token)).status_code
    assert status in (200, 401), status
    return status == 200


# -- expiry -----------------------------------------------------------------------


def test_created_key_shows_its_expiry_in_utc_seconds(client: TestClient, tenant: Tenant) -> None:
    key = create_key(client, tenant, expires_at="2099-01-31T12:00:00.750+02:00")

    assert key["expires_at"] == "2099-01-31T10:00:00Z"
    assert get_key(client, tenant, key["id"])["expires_at"] == "2099-01-31T10:00:00Z"


def test_key_without_expiry_shows_null(client: TestClient, tenant: Tenant) -> None:
    assert create_key(client, tenant)["expires_at"] is None


@pytest.mark.parametrize(
    ("value", "status", "message"),
    [
        pytest.param("2000-01-01T00:00:00Z", 422, "Expires at must be in the future", id="past"),
        pytest.param(
            "2099-01-01T00:00:00",
            422,
            "Expires at has incorrect format (UTC, as in 2027-01-31T00:00:00Z)",
            id="no-offset",
        ),
        pytest.param(
            "tomorrow",
            422,
            "Expires at has incorrect format (UTC, as in 2027-01-31T00:00:00Z)",
            id="text",
        ),
        pytest.param(
            "2099-01-01",
            422,
            "Expires at has incorrect format (UTC, as in 2027-01-31T00:00:00Z)",
            id="date-only",
        ),
        pytest.param(4102444800, 400, "Missing or invalid parameter expires_at", id="number"),
        pytest.param(True, 400, "Missing or invalid parameter expires_at", id="boolean"),
    ],
)
def test_if_expires_at_is_unacceptable_then_4xx_and_nothing_changes(
    client: TestClient, tenant: Tenant, value: object, status: int, message: str
) -> None:
    key = create_key(client, tenant)
    before = stored(client, tenant)

    created = client.post(KEYS, json={"label": "x", "expires_at": value}, headers=tenant.headers)
    patched = client.patch(
        f"{KEYS}/{key['id']}", json={"expires_at": value}, headers=tenant.headers
    )

    for response in (created, patched):
        assert response.status_code == status
        assert response.json() == {"success": False, "message": message}
    assert stored(client, tenant) == before


def test_patch_sets_and_never_removes_an_expiry(client: TestClient, tenant: Tenant) -> None:
    key = create_key(client, tenant)
    path = f"{KEYS}/{key['id']}"

    set_ = client.patch(path, json={"expires_at": "2099-06-01T00:00:00Z"}, headers=tenant.headers)
    kept = client.patch(path, json={"label": "renamed", "expires_at": None}, headers=tenant.headers)
    removed = client.patch(path, json={"expires_at": "never"}, headers=tenant.headers)

    assert set_.json()["expires_at"] == "2099-06-01T00:00:00Z"
    assert kept.json()["expires_at"] == "2099-06-01T00:00:00Z"  # null means not given
    assert removed.json()["expires_at"] is None


def test_expired_key_is_refused_everywhere_and_stays_listed(
    client: TestClient, keyguard: Keyguard, tenant: Tenant
) -> None:
    expires = moment(2)
    key = create_key(client, tenant, expires_at=shown(expires))
    token = key["value"]
    forward = {"X-Original-URI": "/v1/trunks", "X-Original-Method": "GET", **bearer(token)}
    verify = {"key": token, "ip": "192.0.2.1", "method": "GET", "path": "/v1/trunks"}
    assert works(client, token)

    time.sleep(max(0.0, expires.timestamp() - time.time()))

    assert client.get(KEYS, headers=bearer(token)).json() == UNAUTHORIZED
    assert client.get(KEYS, params={"appid": token}).status_code == 401
    assert client.get("/auth/forward", headers=forward).status_code == 401
    assert client.post("/auth/verify", json=verify).json()["status"] == 401
    listed = {entry["id"]: entry for entry in client.get(KEYS, headers=tenant.headers).json()}
    assert listed[key["id"]]["expires_at"] == shown(expires)
    assert keyguard.decider.decide(token, "192.0.2.1", "GET", "/v1/trunks").status == 401


def test_extending_an_expired_keys_expiry_brings_it_back(
    client: TestClient, tenant: Tenant
) -> None:
    expires = moment(1)
    key = create_key(client, tenant, expires_at=shown(expires))
    time.sleep(max(0.0, expires.timestamp() - time.time()))
    assert not works(client, key["value"])

    client.patch(f"{KEYS}/{key['id']}", json={"expires_at": "never"}, headers=tenant.headers)

    assert works(client, key["value"])


# -- roll -------------------------------------------------------------------------


def test_roll_answers_a_new_key_with_the_same_settings(client: TestClient, tenant: Tenant) -> None:
    old = create_key(
        client,
        tenant,
        restricted=True,
        permitted_ips=["203.0.113.10"],
        scopes_enabled=True,
        messages={"allow": "write"},
        expires_at="2099-01-01T00:00:00Z",
    )

    new = roll(client, tenant, old["id"])

    assert new["id"] != old["id"]
    assert new["value"] != old["value"]
    assert new["rolled_from"] == old["id"]
    same = {name: value for name, value in old.items() if name not in ("id", "value")}
    assert {name: new[name] for name in same if name not in ("created_at", "rolled_from")} == {
        name: value for name, value in same.items() if name not in ("created_at", "rolled_from")
    }


def test_old_key_works_through_the_grace_and_shows_when_it_ends(
    client: TestClient, tenant: Tenant
) -> None:
    old = create_key(client, tenant)
    before = datetime.now(UTC).replace(microsecond=0)

    new = roll(client, tenant, old["id"])

    ends = datetime.strptime(get_key(client, tenant, old["id"])["expires_at"], "%Y-%m-%dT%H:%M:%SZ")
    grace = ends.replace(tzinfo=UTC) - before
    assert (
        timedelta(seconds=DEFAULT_GRACE_SECONDS)
        <= grace
        <= timedelta(seconds=DEFAULT_GRACE_SECONDS + 2)
    )
    assert works(client, old["value"])
    assert works(client, new["value"])
    listed = [key["id"] for key in client.get(KEYS, headers=tenant.headers).json()]
    assert {old["id"], new["id"]} <= set(listed)


def test_roll_without_grace_refuses_the_old_key_at_once(client: TestClient, tenant: Tenant) -> None:
    old = create_key(client, tenant)

    new = roll(client, tenant, old["id"], grace_seconds=0)

    assert not works(client, old["value"])
    assert works(client, new["value"])


def test_grace_never_outlives_the_old_keys_own_expiry(client: TestClient, tenant: Tenant) -> None:
    expires = shown(moment(3600))
    old = create_key(client, tenant, expires_at=expires)

    new = roll(client, tenant, old["id"], grace_seconds=7 * 24 * 3600)

    assert get_key(client, tenant, old["id"])["expires_at"] == expires
    assert new["expires_at"] == expires


def test_rolling_an_expired_key_is_409_and_changes_nothing(
    client: TestClient, tenant: Tenant
) -> None:
    old = create_key(client, tenant)
    roll(client, tenant, old["id"], grace_seconds=0)
    before = stored(client, tenant)

    response = client.post(f"{KEYS}/{old['id']}/roll", headers=tenant.headers)

    assert response.status_code == 409
    assert response.json() == {
        "success": False,
        "message": "API key has expired; create a new key instead",
    }
    assert stored(client, tenant) == before


def test_rolling_a_deleted_or_anothers_key_is_404(
    client: TestClient, tenant: Tenant, other_tenant: Tenant
) -> None:
    deleted = create_key(client, tenant)
    client.delete(f"{KEYS}/{deleted['id']}", headers=tenant.headers)
    theirs = create_key(client, other_tenant)

    for key_id in (deleted["id"], theirs["id"]):
        response = client.post(f"{KEYS}/{key_id}/roll", headers=tenant.headers)
        assert response.status_code == 404
        assert response.json() == {"success": False, "message": "Record not found"}
    assert works(client, theirs["value"])


@pytest.mark.parametrize(
    ("body", "status", "message"),
    [
        pytest.param(
            {"grace_seconds": -1},
            422,
            "Grace seconds must be between 0 and 604800 (7 days)",
            id="negative",
        ),
        pytest.param(
            {"grace_seconds": 604801},
            422,
            "Grace seconds must be between 0 and 604800 (7 days)",
            id="over-7-days",
        ),
        pytest.param(
            {"grace_seconds": "60"}, 400, "Missing or invalid parameter grace_seconds", id="text"
        ),
        pytest.param(
            {"grace_seconds": 1.5}, 400, "Missing or invalid parameter grace_seconds", id="float"
        ),
        pytest.param({"grace": 60}, 400, "Missing or invalid parameter grace", id="unknown"),
        pytest.param([60], 400, "Missing or invalid parameter body", id="array"),
    ],
)
def test_if_roll_body_is_unacceptable_then_4xx_and_nothing_changes(
    client: TestClient, tenant: Tenant, body: object, status: int, message: str
) -> None:
    key = create_key(client, tenant)
    before = stored(client, tenant)

    response = client.post(f"{KEYS}/{key['id']}/roll", json=body, headers=tenant.headers)

    assert response.status_code == status
    assert response.json() == {"success": False, "message": message}
    assert stored(client, tenant) == before


def test_scoped_key_may_not_roll(client: TestClient, tenant: Tenant) -> None:
    scoped = create_key(client, tenant, scopes_enabled=True, numbers={"allow": "write"})

    response = client.post(f"{KEYS}/{scoped['id']}/roll", headers=bearer(scoped["value"]))

    assert response.status_code == 403
    assert response.json() == {
        "success": False,
        "message": "API key with full access required",
    }


def test_roll_is_audited_with_both_keys(client: TestClient, tenant: Tenant) -> None:
    old = create_key(client, tenant)

    new = roll(client, tenant, old["id"], grace_seconds=60)

    records = client.get("/v1/audit-log", headers=tenant.headers).json()["items"]
    rolled, created = records[0], records[1]
    assert rolled["action"] == "key.roll"
    assert rolled["key_id"] == old["id"]
    assert rolled["before"]["expires_at"] is None
    assert rolled["after"]["expires_at"] == get_key(client, tenant, old["id"])["expires_at"]
    assert rolled["after"]["rolled_to"] == new["id"]
    assert created["action"] == "key.create"
    assert created["key_id"] == new["id"]
    assert created["after"]["rolled_from"] == old["id"]
    assert new["value"] not in str(records)
