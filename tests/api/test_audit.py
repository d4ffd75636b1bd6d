"""``GET /v1/audit-log``: every change to an account's keys, who made it and from where.

A record holds the key's settings before and after the change, never a secret. It
is written in the change's own transaction: a refused change writes none, and a
change whose record cannot be written is not made. Operator changes are in
tests/api/test_admin.py.
"""

from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from starlette.testclient import TestClient

from keyguard.config import Settings
from keyguard.domain.scopes import WAVIX_GROUPS
from keyguard.runtime import Keyguard
from keyguard.storage import sql
from tests.conftest import CLIENT_IP, TEST_SECRET, ClientFactory, Tenant, bearer, create_key

KEYS = "/v1/api-keys"
AUDIT = "/v1/audit-log"
FULL_ACCESS_REQUIRED = {"success": False, "message": "API key with full access required"}
PROXY = "10.9.0.1"
SECRET_FIELDS = {"value", "digest", "sealed_value", "token", "secret"}


def trail(client: TestClient, owner: Tenant, **params: Any) -> dict[str, Any]:
    """One page of ``owner``'s audit trail."""
    response = client.get(AUDIT, params=params, headers=owner.headers)
    assert response.status_code == 200, response.text
    page: dict[str, Any] = response.json()
    return page


def items(client: TestClient, owner: Tenant, **params: Any) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = trail(client, owner, per_page=100, **params)["items"]
    return found


def settings_view(**changed: Any) -> dict[str, Any]:
    """A key's settings as the trail records them: defaults but for ``changed``."""
    view = {
        "label": "test key",
        "active": True,
        "restricted": False,
        "permitted_ips": [],
        "scopes_enabled": False,
        "scopes": {},
        "expires_at": None,
        "ratelimit": None,
        "remaining": None,
        "refill": None,
    }
    return view | changed


def field_names(value: object) -> set[str]:
    """Every object key anywhere in a JSON document."""
    if isinstance(value, dict):
        return set(value).union(*(field_names(item) for item in value.values()))
    if isinstance(value, list):
        return set().union(*(field_names(item) for item in value))
    return set()


# -- what is recorded ------------------------------------------------------------------------


def test_every_change_to_a_key_is_recorded_with_its_actor_and_settings(
    client: TestClient, tenant: Tenant
) -> None:
    key = create_key(
        client,
        tenant,
        restricted=True,
        permitted_ips=["192.0.2.0/24"],
        scopes_enabled=True,
        numbers={"allow": "read"},
    )
    url = f"{KEYS}/{key['id']}"
    patch = {"label": "renamed", "messages": {"allow": "write"}}
    for method, path, body in [
        ("PATCH", url, patch),
        ("PATCH", f"{url}/deactivate", None),
        ("PATCH", f"{url}/activate", None),
        ("DELETE", url, None),
    ]:
        assert client.request(method, path, json=body, headers=tenant.headers).status_code == 200

    records = items(client, tenant, key_id=key["id"])

    created = settings_view(
        restricted=True,
        permitted_ips=["192.0.2.0/24"],
        scopes_enabled=True,
        scopes={"numbers": "read"},
    )
    renamed = created | {"label": "renamed", "scopes": {"numbers": "read", "messages": "write"}}
    inactive = renamed | {"active": False}
    assert [(r["action"], r["before"], r["after"]) for r in reversed(records)] == [
        ("key.create", None, created),
        ("key.update", created, renamed),
        ("key.deactivate", renamed, inactive),
        ("key.activate", inactive, renamed),
        ("key.delete", renamed, None),
    ]
    actor = {"type": "key", "key_id": tenant.key_id, "ip": CLIENT_IP}
    assert all(r["key_id"] == key["id"] and r["actor"] == actor for r in records)


def test_each_record_says_when_it_happened_in_utc_seconds(
    client: TestClient, tenant: Tenant
) -> None:
    started = datetime.now(UTC).replace(microsecond=0)
    key = create_key(client, tenant)

    [record] = items(client, tenant, key_id=key["id"])

    occurred = datetime.strptime(record["occurred_at"], "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)
    assert started <= occurred <= datetime.now(UTC)


def test_account_creation_is_recorded_with_its_first_key(
    client: TestClient, tenant: Tenant
) -> None:
    records = items(client, tenant)

    command_line = {"type": "cli", "key_id": None, "ip": None}
    assert [(r["action"], r["key_id"], r["actor"], r["after"]) for r in reversed(records)] == [
        ("account.create", None, command_line, {"name": "acme"}),
        ("key.create", tenant.key_id, command_line, settings_view(label="acme full access")),
    ]


def test_the_trail_never_shows_a_secret(client: TestClient, tenant: Tenant) -> None:
    every_group = {group: {"allow": "write"} for group in WAVIX_GROUPS}
    made = [
        create_key(client, tenant, label="plain"),
        create_key(client, tenant, restricted=True, permitted_ips=["192.0.2.1"]),
        create_key(client, tenant, scopes_enabled=True, **every_group),
    ]
    for key in made:
        url = f"{KEYS}/{key['id']}"
        assert client.patch(url, json={"label": "x"}, headers=tenant.headers).status_code == 200
    assert client.delete(f"{KEYS}/{made[0]['id']}", headers=tenant.headers).status_code == 200

    response = client.get(AUDIT, params={"per_page": 100}, headers=tenant.headers)

    assert response.json()["pagination"]["total"] == 2 + 3 + 3 + 1
    for secret in [tenant.token, *(key["value"] for key in made)]:
        assert secret not in response.text
        assert secret.partition("_")[2][:16] not in response.text
    assert not field_names(response.json()) & SECRET_FIELDS


def test_actor_ip_is_the_address_keyguard_judged_not_one_the_client_claims(
    client_from: ClientFactory, tenant: Tenant
) -> None:
    peer = client_from("2001:db8::7")
    spoof = {"X-Forwarded-For": "192.0.2.1", "X-Real-IP": "192.0.2.1"}
    created = peer.post(KEYS, json={"label": "k"}, headers=tenant.headers | spoof)
    assert created.status_code == 200

    [record] = items(peer, tenant, key_id=created.json()["id"])

    assert record["actor"] == {"type": "key", "key_id": tenant.key_id, "ip": "2001:db8::7"}


class TestBehindATrustedProxy:
    @pytest.fixture
    def settings(self, database_url: str) -> Settings:
        return Settings(database_url=database_url, secret_key=TEST_SECRET, trusted_proxies=[PROXY])

    @pytest.mark.parametrize(
        ("forwarded", "recorded"),
        [
            pytest.param("z" * 100, "z" * 64, id="longer_than_any_address"),
            pytest.param("192.0.2.1\x00", "192.0.2.1?", id="nul"),
            pytest.param("\x1b[31mred", "?[31mred", id="control_character"),
        ],
    )
    def test_if_the_proxy_forwards_no_address_then_the_change_is_made_and_recorded_printable(
        self, client_from: ClientFactory, tenant: Tenant, forwarded: str, recorded: str
    ) -> None:
        proxy = client_from(PROXY)

        created = proxy.post(
            KEYS, json={"label": "k"}, headers=tenant.headers | {"X-Forwarded-For": forwarded}
        )

        assert created.status_code == 200, created.text
        [record] = items(proxy, tenant, key_id=created.json()["id"])
        assert record["actor"] == {"type": "key", "key_id": tenant.key_id, "ip": recorded}


# -- filters and pages -------------------------------------------------------------------------


def test_key_id_filter_shows_only_that_keys_records(client: TestClient, tenant: Tenant) -> None:
    create_key(client, tenant)
    second = create_key(client, tenant)
    client.patch(f"{KEYS}/{second['id']}/deactivate", headers=tenant.headers)

    page = trail(client, tenant, key_id=second["id"])

    assert [r["action"] for r in page["items"]] == ["key.deactivate", "key.create"]
    assert {r["key_id"] for r in page["items"]} == {second["id"]}
    assert page["pagination"]["total"] == 2


@pytest.mark.parametrize(
    ("action", "count"),
    [("key.create", 3), ("key.update", 2), ("key.delete", 1), ("account.create", 1)],
)
def test_action_filter_shows_only_that_action(
    client: TestClient, tenant: Tenant, action: str, count: int
) -> None:
    key = create_key(client, tenant)
    for label in ("a", "b"):
        client.patch(f"{KEYS}/{key['id']}", json={"label": label}, headers=tenant.headers)
    client.delete(f"{KEYS}/{create_key(client, tenant)['id']}", headers=tenant.headers)

    page = trail(client, tenant, action=action)

    assert {r["action"] for r in page["items"]} == {action}
    assert page["pagination"]["total"] == len(page["items"]) == count


def at(moment: datetime, zone: timezone = UTC) -> str:
    return moment.astimezone(zone).isoformat()


def test_from_includes_its_second_and_to_excludes_it(client: TestClient, tenant: Tenant) -> None:
    key = create_key(client, tenant)
    [record] = items(client, tenant, key_id=key["id"])
    moment = datetime.strptime(record["occurred_at"], "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)
    second = timedelta(seconds=1)

    def found(**window: str) -> int:
        return len(items(client, tenant, key_id=key["id"], **window))

    assert found(**{"from": at(moment)}) == 1
    assert found(**{"from": at(moment + second)}) == 0
    assert found(to=at(moment)) == 0
    assert found(to=at(moment + second)) == 1
    assert found(**{"from": at(moment - second), "to": at(moment + second)}) == 1


def test_times_with_another_zone_or_none_are_the_same_instant(
    client: TestClient, tenant: Tenant
) -> None:
    key = create_key(client, tenant)
    [record] = items(client, tenant, key_id=key["id"])
    moment = datetime.strptime(record["occurred_at"], "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)
    east = timezone(timedelta(hours=2))
    naive = moment.replace(tzinfo=None).isoformat()  # read as UTC

    for since in (at(moment, east), naive):
        assert len(items(client, tenant, key_id=key["id"], **{"from": since})) == 1
    for until in (at(moment, east), naive):
        assert items(client, tenant, key_id=key["id"], to=until) == []


def test_pages_are_newest_first_and_cover_the_trail_once(
    client: TestClient, tenant: Tenant
) -> None:
    for _ in range(5):
        create_key(client, tenant)  # with the account's own two records: 7 in all

    pages = [trail(client, tenant, page=number, per_page=3) for number in (1, 2, 3, 4)]

    assert [page["pagination"] for page in pages] == [
        {"current_page": number, "per_page": 3, "total": 7, "total_pages": 3}
        for number in (1, 2, 3, 4)
    ]
    ids = [record["id"] for page in pages for record in page["items"]]
    assert [len(page["items"]) for page in pages] == [3, 3, 1, 0]
    assert ids == sorted(set(ids), reverse=True)


def test_per_page_may_be_100(client: TestClient, tenant: Tenant) -> None:
    assert trail(client, tenant, per_page=100)["pagination"]["per_page"] == 100


@pytest.mark.parametrize(
    ("params", "name"),
    [
        pytest.param({"per_page": 101}, "per_page", id="per_page_101"),
        pytest.param({"per_page": 0}, "per_page", id="per_page_0"),
        pytest.param({"page": 0}, "page", id="page_0"),
        pytest.param({"page": "last"}, "page", id="page_word"),
        pytest.param({"key_id": 0}, "key_id", id="key_id_0"),
        pytest.param({"key_id": "1 OR 1=1"}, "key_id", id="key_id_sql"),
        pytest.param({"action": "key.explode"}, "action", id="unknown_action"),
        pytest.param({"from": "yesterday"}, "from", id="from_word"),
        pytest.param({"to": "2026-13-01T00:00:00Z"}, "to", id="to_month_13"),
        # valid times whose UTC instant is outside years 1-9999, which no database stores
        pytest.param({"from": "9999-12-31T23:00:00-05:00"}, "from", id="from_after_9999_utc"),
        pytest.param({"to": "9999-12-31T23:00:00-05:00"}, "to", id="to_after_9999_utc"),
        pytest.param({"from": "0001-01-01T00:00:00+05:00"}, "from", id="from_before_0001_utc"),
        pytest.param({"to": "0001-01-01T00:00:00+05:00"}, "to", id="to_before_0001_utc"),
    ],
)
def test_if_filter_or_page_is_invalid_then_400_wavix_body(
    client: TestClient, tenant: Tenant, params: dict[str, Any], name: str
) -> None:
    response = client.get(AUDIT, params=params, headers=tenant.headers)

    assert (response.status_code, response.json()) == (
        400,
        {"success": False, "message": f"Missing or invalid parameter {name}"},
    )


def test_times_at_the_ends_of_the_utc_range_are_accepted(
    client: TestClient, tenant: Tenant
) -> None:
    everything = len(items(client, tenant))

    assert len(items(client, tenant, **{"from": "0001-01-01T00:00:00Z"})) == everything
    assert len(items(client, tenant, **{"from": "0001-01-01T05:00:00+05:00"})) == everything
    assert len(items(client, tenant, to="9999-12-31T23:59:59Z")) == everything
    assert len(items(client, tenant, to="9999-12-31T18:59:59-05:00")) == everything
    assert items(client, tenant, **{"from": "9999-12-31T23:59:59"}) == []
    assert items(client, tenant, to="0001-01-01T00:00:00") == []


# -- who may read it -------------------------------------------------------------------------


def test_an_account_sees_only_its_own_trail(
    client: TestClient, tenant: Tenant, other_tenant: Tenant
) -> None:
    theirs = create_key(client, other_tenant, label="theirs")
    client.patch(f"{KEYS}/{theirs['id']}/deactivate", headers=other_tenant.headers)
    mine = create_key(client, tenant, label="mine")

    everything = items(client, tenant)
    filtered = trail(client, tenant, key_id=theirs["id"])

    assert {r["key_id"] for r in everything} == {None, tenant.key_id, mine["id"]}
    assert {r["account_id"] for r in everything} == {tenant.account_id}
    assert "globex" not in str(everything)
    assert filtered["items"] == []
    assert filtered["pagination"]["total"] == 0


@pytest.mark.parametrize(
    "fields",
    [
        pytest.param({}, id="no_groups"),
        pytest.param({group: {"allow": "write"} for group in WAVIX_GROUPS}, id="every_group"),
    ],
)
def test_if_scoped_key_reads_the_trail_then_403(
    client: TestClient, tenant: Tenant, fields: dict[str, Any]
) -> None:
    scoped = create_key(client, tenant, scopes_enabled=True, **fields)

    response = client.get(AUDIT, headers=bearer(scoped["value"]))

    assert (response.status_code, response.json()) == (403, FULL_ACCESS_REQUIRED)


# -- refused changes write nothing ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "path", "body", "status"),
    [
        pytest.param("POST", "", {"label": "x", "permitted_ips": ["nope"]}, 422, id="bad_ip"),
        pytest.param("POST", "", {"label": "x" * 256}, 422, id="label_too_long"),
        pytest.param("POST", "", {"active": True}, 400, id="no_label"),
        pytest.param("POST", "", {"label": "x", "pad": "a" * 70_000}, 413, id="body_too_large"),
        pytest.param("PATCH", "/{own}", {"owner": "me"}, 400, id="unknown_field"),
        pytest.param("PATCH", "/{own}", {"numbers": "write"}, 422, id="bad_scope"),
        pytest.param("PATCH", "/{theirs}", {"label": "x"}, 404, id="other_accounts_key"),
        pytest.param("DELETE", "/{theirs}", None, 404, id="delete_other_accounts_key"),
        pytest.param("PATCH", "/999999/deactivate", None, 404, id="no_such_key"),
    ],
)
def test_if_a_change_is_refused_then_no_record_is_written(
    client: TestClient,
    tenant: Tenant,
    other_tenant: Tenant,
    method: str,
    path: str,
    body: object,
    status: int,
) -> None:
    before = trail(client, tenant, per_page=100), trail(client, other_tenant, per_page=100)

    url = KEYS + path.format(own=tenant.key_id, theirs=other_tenant.key_id)
    response = client.request(method, url, json=body, headers=tenant.headers)

    assert response.status_code == status
    assert (trail(client, tenant, per_page=100), trail(client, other_tenant, per_page=100)) == (
        before
    )


def test_if_a_scoped_key_is_refused_a_change_then_no_record_is_written(
    client: TestClient, tenant: Tenant
) -> None:
    scoped = create_key(client, tenant, scopes_enabled=True)
    before = trail(client, tenant)

    response = client.post(KEYS, json={"label": "minted"}, headers=bearer(scoped["value"]))

    assert response.status_code == 403
    assert trail(client, tenant) == before


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        pytest.param("POST", "", {"label": "unrecorded"}, id="create"),
        pytest.param("PATCH", "/{id}", {"label": "unrecorded"}, id="update"),
        pytest.param("PATCH", "/{id}/deactivate", None, id="deactivate"),
        pytest.param("DELETE", "/{id}", None, id="delete"),
    ],
)
def test_if_the_record_cannot_be_written_then_the_change_is_not_made(
    client: TestClient,
    keyguard: Keyguard,
    tenant: Tenant,
    monkeypatch: pytest.MonkeyPatch,
    method: str,
    path: str,
    body: object,
) -> None:
    key = create_key(client, tenant)
    before = keyguard.store.list_keys(tenant.account_id)

    def audit_fails(*_args: object, **_kwargs: object) -> None:
        raise RuntimeError("the audit table is full")

    monkeypatch.setattr(sql, "_audit", audit_fails)

    url = KEYS + path.format(id=key["id"])
    response = client.request(method, url, json=body, headers=tenant.headers)

    assert (response.status_code, response.json()) == (
        500,
        {"success": False, "message": "Internal server error"},
    )
    monkeypatch.undo()
    assert [k.settings for k in keyguard.store.list_keys(tenant.account_id)] == [
        k.settings for k in before
    ]
    assert client.get(KEYS, headers=bearer(key["value"])).status_code == 200
