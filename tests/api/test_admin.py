"""``/admin/v1/``: the operator API, for the platform that runs keyguard.

It exists only when an operator token is configured, answers only to that token,
manages accounts, shows an account's keys with their secrets masked, and records
every change in the account's audit trail as the operator's.
"""

import re
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx2
import pytest
from pydantic import SecretStr
from starlette.testclient import TestClient

from keyguard.config import Settings
from keyguard.runtime import Keyguard
from keyguard.storage import AuditQuery
from tests.conftest import (
    CLIENT_IP,
    TEST_SECRET,
    ClientFactory,
    Tenant,
    bearer,
    settings_for,
    stored,
)

ADMIN = "/admin/v1"
KEYS = "/v1/api-keys"
ADMIN_TOKEN = "operator-" + "7" * 32
OPERATOR = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
OTHER_IP = "198.51.100.20"
UNAUTHORIZED = {"success": False, "error": True, "message": "Unauthorized"}
NOT_FOUND = {"success": False, "message": "Record not found"}
MASKED = re.compile(r"kg_\*{8}[0-9A-Za-z]{4}")


@pytest.fixture
def settings(database_url: str) -> Settings:
    return settings_for(database_url, admin_token=SecretStr(ADMIN_TOKEN))


def create_account(client: TestClient, name: str) -> dict[str, Any]:
    response = client.post(f"{ADMIN}/accounts", json={"name": name}, headers=OPERATOR)
    assert response.status_code == 200, response.text
    created: dict[str, Any] = response.json()
    return created


def forward(client: TestClient, token: str) -> httpx2.Response:
    headers = bearer(token) | {"X-Original-URI": "/v1/numbers"}
    return client.get("/auth/forward", headers=headers)


def status_of(client: TestClient, token: str) -> tuple[int, int]:
    """What a key gets from the management API and from forward auth."""
    return client.get(KEYS, headers=bearer(token)).status_code, forward(client, token).status_code


# -- who may use it ------------------------------------------------------------------------


class TestWithoutAdminToken:
    @pytest.fixture
    def settings(self, database_url: str) -> Settings:
        return Settings(database_url=database_url, secret_key=TEST_SECRET)

    @pytest.mark.parametrize(
        ("method", "path"),
        [
            ("GET", "/accounts"),
            ("POST", "/accounts"),
            ("GET", "/accounts/1"),
            ("POST", "/accounts/1/suspend"),
            ("DELETE", "/accounts/1"),
            ("GET", "/accounts/1/keys"),
            ("GET", "/audit-log"),
        ],
    )
    def test_if_no_operator_token_is_configured_then_the_operator_api_does_not_exist(
        self, client: TestClient, keyguard: Keyguard, tenant: Tenant, method: str, path: str
    ) -> None:
        before = stored(keyguard, tenant.account_id, last_use=False)

        for headers in ({}, OPERATOR, tenant.headers):
            response = client.request(method, ADMIN + path, json={"name": "x"}, headers=headers)
            assert (response.status_code, response.json()) == (
                404,
                {"success": False, "message": "Route not found"},
            )
        assert stored(keyguard, tenant.account_id, last_use=False) == before


@pytest.mark.parametrize(
    "headers",
    [
        pytest.param({}, id="missing"),
        pytest.param(bearer("operator-" + "8" * 32), id="wrong_token"),
        pytest.param(bearer(ADMIN_TOKEN[:-1]), id="token_less_its_last_character"),
        pytest.param(bearer(ADMIN_TOKEN + "7"), id="token_and_one_more_character"),
        pytest.param(bearer(ADMIN_TOKEN.upper()), id="token_upper_cased"),
        pytest.param({"Authorization": f"Basic {ADMIN_TOKEN}"}, id="other_scheme"),
        pytest.param({"Authorization": ADMIN_TOKEN}, id="no_scheme"),
        pytest.param({"X-Admin-Token": ADMIN_TOKEN}, id="other_header"),
    ],
)
def test_if_operator_token_is_missing_or_wrong_then_401_and_nothing_changes(
    client: TestClient, keyguard: Keyguard, tenant: Tenant, headers: dict[str, str]
) -> None:
    before = stored(keyguard, tenant.account_id, last_use=False), keyguard.store.list_accounts()

    suspend = client.post(f"{ADMIN}/accounts/{tenant.account_id}/suspend", headers=headers)
    create = client.post(f"{ADMIN}/accounts", json={"name": "x"}, headers=headers)

    for response in (suspend, create):
        assert (response.status_code, response.json()) == (401, UNAUTHORIZED)
    assert (
        stored(keyguard, tenant.account_id, last_use=False),
        keyguard.store.list_accounts(),
    ) == before


@pytest.mark.parametrize(
    "tokens",
    [
        pytest.param([ADMIN_TOKEN, ADMIN_TOKEN], id="right_twice"),
        pytest.param([ADMIN_TOKEN, "operator-" + "8" * 32], id="right_first"),
        pytest.param(["operator-" + "8" * 32, ADMIN_TOKEN], id="right_second"),
    ],
)
def test_if_two_authorization_headers_are_sent_then_401_and_nothing_changes(
    client: TestClient, keyguard: Keyguard, tenant: Tenant, tokens: list[str]
) -> None:
    """A proxy and keyguard might each read a different header: neither is believed."""
    before = stored(keyguard, tenant.account_id, last_use=False), keyguard.store.list_accounts()
    headers = [("Authorization", f"Bearer {token}") for token in tokens]

    suspend = client.post(f"{ADMIN}/accounts/{tenant.account_id}/suspend", headers=headers)
    listed = client.get(f"{ADMIN}/accounts", headers=headers)

    for response in (suspend, listed):
        assert (response.status_code, response.json()) == (401, UNAUTHORIZED)
        assert response.headers["www-authenticate"] == "Bearer"
    assert (
        stored(keyguard, tenant.account_id, last_use=False),
        keyguard.store.list_accounts(),
    ) == before


class TestFailedAuthenticationLimit:
    LIMIT = 3

    @pytest.fixture
    def settings(self, database_url: str) -> Settings:
        return Settings(
            database_url=database_url,
            secret_key=TEST_SECRET,
            admin_token=SecretStr(ADMIN_TOKEN),
            auth_failures_per_minute=self.LIMIT,
        )

    def test_if_wrong_operator_tokens_pass_the_limit_then_429_even_for_the_right_token(
        self, client_from: ClientFactory, keyguard: Keyguard, tenant: Tenant
    ) -> None:
        guesser, operator = client_from("203.0.113.66"), client_from(OTHER_IP)
        before = stored(keyguard, tenant.account_id, last_use=False)
        url = f"{ADMIN}/accounts/{tenant.account_id}/suspend"
        for attempt in range(self.LIMIT):
            response = guesser.post(url, headers=bearer(f"operator-{attempt}" + "9" * 32))
            assert (response.status_code, response.json()) == (401, UNAUTHORIZED)

        refused = [
            guesser.post(url, headers=bearer("operator-" + "9" * 32)),
            guesser.post(url, headers=OPERATOR),
            guesser.get(KEYS, headers=bearer("kg_nonsense")),  # one limit for keys and tokens
        ]

        for response in refused:
            assert_too_many(response)
        assert stored(keyguard, tenant.account_id, last_use=False) == before
        # A valid key is never refused by the limit, whoever's address it comes from.
        assert guesser.get(KEYS, headers=tenant.headers).status_code == 200
        assert operator.get(f"{ADMIN}/accounts", headers=OPERATOR).status_code == 200

    def test_if_wrong_keys_pass_the_limit_then_the_operator_token_gets_429(
        self, client_from: ClientFactory
    ) -> None:
        guesser = client_from("203.0.113.67")
        for _attempt in range(self.LIMIT + 1):
            guesser.get(KEYS, headers=bearer("kg_nonsense"))

        assert_too_many(guesser.get(f"{ADMIN}/accounts", headers=OPERATOR))

    def test_if_duplicate_authorization_headers_are_sent_then_they_count_as_failures(
        self, client_from: ClientFactory
    ) -> None:
        guesser = client_from("203.0.113.68")
        doubled = [("Authorization", f"Bearer {ADMIN_TOKEN}")] * 2
        for _attempt in range(self.LIMIT):
            assert guesser.get(f"{ADMIN}/accounts", headers=doubled).status_code == 401

        assert_too_many(guesser.get(f"{ADMIN}/accounts", headers=doubled))
        assert_too_many(guesser.get(f"{ADMIN}/accounts", headers=OPERATOR))


def assert_too_many(response: httpx2.Response) -> None:
    """The failure limit's 429, as a client presenting wrong keys gets it."""
    assert response.status_code == 429, response.text
    retry_after = response.headers["retry-after"]
    assert 1 <= int(retry_after) <= 60
    assert response.json() == {
        "success": False,
        "message": f"Too many failed authentications from this address; retry in {retry_after} "
        "seconds",
    }


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/accounts"),
        ("GET", "/accounts/{account}"),
        ("POST", "/accounts/{account}/resume"),
        ("DELETE", "/accounts/{account}"),
        ("GET", "/accounts/{account}/keys"),
    ],
)
def test_if_tenants_own_full_access_key_is_presented_then_401_and_nothing_changes(
    client: TestClient, keyguard: Keyguard, tenant: Tenant, method: str, path: str
) -> None:
    before = stored(keyguard, tenant.account_id, last_use=False)

    url = ADMIN + path.format(account=tenant.account_id)
    response = client.request(method, url, headers=tenant.headers)

    assert (response.status_code, response.json()) == (401, UNAUTHORIZED)
    assert stored(keyguard, tenant.account_id, last_use=False) == before


def test_if_operator_token_is_presented_as_an_api_key_then_401(client: TestClient) -> None:
    assert status_of(client, ADMIN_TOKEN) == (401, 401)
    assert client.get(KEYS, params={"appid": ADMIN_TOKEN}).status_code == 401


# -- accounts ------------------------------------------------------------------------------


def test_create_account_shows_its_first_full_access_key_and_the_key_works(
    client: TestClient,
) -> None:
    created = create_account(client, "initech")

    account, key = created["account"], created["api_key"]
    assert account["name"] == "initech"
    assert account["status"] == "active"
    assert key["scopes_enabled"] is False
    assert key["active"] is True
    assert key["restricted"] is False
    listed = client.get(KEYS, headers=bearer(key["value"]))
    assert listed.status_code == 200
    assert [k["id"] for k in listed.json()] == [key["id"]]
    assert forward(client, key["value"]).status_code == 200


def test_the_first_key_is_shown_once_to_the_operator(client: TestClient) -> None:
    created = create_account(client, "initech")
    value = created["api_key"]["value"]

    answers = [
        client.get(f"{ADMIN}/accounts", headers=OPERATOR),
        client.get(f"{ADMIN}/accounts/{created['account']['id']}", headers=OPERATOR),
        client.get(f"{ADMIN}/accounts/{created['account']['id']}/keys", headers=OPERATOR),
    ]

    for response in answers:
        assert response.status_code == 200
        assert value not in response.text


def test_accounts_are_listed_and_got_by_id(
    client: TestClient, tenant: Tenant, other_tenant: Tenant
) -> None:
    created = create_account(client, "initech")["account"]

    listed = client.get(f"{ADMIN}/accounts", headers=OPERATOR).json()
    got = client.get(f"{ADMIN}/accounts/{created['id']}", headers=OPERATOR)

    assert [(a["id"], a["name"], a["status"]) for a in listed["items"]] == [
        (tenant.account_id, "acme", "active"),
        (other_tenant.account_id, "globex", "active"),
        (created["id"], "initech", "active"),
    ]
    assert listed["pagination"] == {"current_page": 1, "per_page": 25, "total": 3, "total_pages": 1}
    assert (got.status_code, got.json()) == (200, created)


@pytest.mark.parametrize(
    ("method", "suffix"),
    [("GET", ""), ("POST", "/suspend"), ("POST", "/resume"), ("DELETE", ""), ("GET", "/keys")],
)
def test_if_account_does_not_exist_then_404(client: TestClient, method: str, suffix: str) -> None:
    response = client.request(method, f"{ADMIN}/accounts/999999{suffix}", headers=OPERATOR)

    assert (response.status_code, response.json()) == (404, NOT_FOUND)


@pytest.mark.parametrize(
    "body",
    [
        pytest.param({}, id="missing"),
        pytest.param({"name": ""}, id="empty"),
        pytest.param({"name": "   "}, id="blank"),
        pytest.param({"name": 7}, id="number"),
        pytest.param({"name": "a\u0000b"}, id="control_character"),
        pytest.param(["initech"], id="not_an_object"),
    ],
)
def test_if_account_name_is_invalid_then_400_and_nothing_is_created(
    client: TestClient, keyguard: Keyguard, body: object
) -> None:
    before = keyguard.store.list_accounts()

    response = client.post(f"{ADMIN}/accounts", json=body, headers=OPERATOR)

    assert (response.status_code, response.json()) == (
        400,
        {"success": False, "message": "Missing or invalid parameter name"},
    )
    assert keyguard.store.list_accounts() == before


def test_if_account_name_is_longer_than_255_characters_then_422_and_nothing_is_created(
    client: TestClient, keyguard: Keyguard
) -> None:
    before = keyguard.store.list_accounts()

    response = client.post(f"{ADMIN}/accounts", json={"name": "n" * 256}, headers=OPERATOR)

    assert (response.status_code, response.json()) == (
        422,
        {"success": False, "message": "Name is too long (maximum is 255 characters)"},
    )
    assert keyguard.store.list_accounts() == before
    assert create_account(client, "n" * 255)["account"]["name"] == "n" * 255


def test_accounts_page_is_at_most_100(client: TestClient) -> None:
    response = client.get(f"{ADMIN}/accounts", params={"per_page": 101}, headers=OPERATOR)

    assert (response.status_code, response.json()) == (
        400,
        {"success": False, "message": "Missing or invalid parameter per_page"},
    )


# -- suspending, resuming, deleting ------------------------------------------------------------


def suspend(client: TestClient, account_id: int, action: str = "suspend") -> dict[str, Any]:
    response = client.post(f"{ADMIN}/accounts/{account_id}/{action}", headers=OPERATOR)
    assert response.status_code == 200, response.text
    account: dict[str, Any] = response.json()
    return account


def test_if_account_is_suspended_then_every_key_of_it_gets_401_at_once(
    client: TestClient, keyguard: Keyguard, tenant: Tenant, other_tenant: Tenant
) -> None:
    scoped = keyguard.service.create_key(
        tenant.account_id, {"label": "s", "scopes_enabled": True, "numbers": {"allow": "read"}}
    ).value
    assert status_of(client, scoped) == (403, 200)

    account = suspend(client, tenant.account_id)

    assert account["status"] == "suspended"
    for token in (tenant.token, scoped):
        assert status_of(client, token) == (401, 401)
        assert client.get(KEYS, headers=bearer(token)).json() == UNAUTHORIZED
    assert status_of(client, other_tenant.token) == (200, 200)


def test_if_account_is_resumed_then_its_keys_work_again(client: TestClient, tenant: Tenant) -> None:
    suspend(client, tenant.account_id)
    assert status_of(client, tenant.token) == (401, 401)

    account = suspend(client, tenant.account_id, "resume")

    assert account["status"] == "active"
    assert status_of(client, tenant.token) == (200, 200)


@pytest.fixture
def elsewhere(keyguard: Keyguard) -> Iterator[Keyguard]:
    """A second keyguard process on the same database, following its changes."""
    runtime = Keyguard(keyguard.settings)
    runtime.start()
    yield runtime
    runtime.stop()


def decided_within(runtime: Keyguard, token: str, status: int, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if runtime.decider.decide(token, CLIENT_IP, "GET", "/v1/numbers").status == status:
            return True
        time.sleep(0.01)
    return False


def test_if_account_is_suspended_then_other_processes_refuse_its_keys_within_a_second(
    client: TestClient, tenant: Tenant, elsewhere: Keyguard
) -> None:
    assert elsewhere.decider.decide(tenant.token, CLIENT_IP, "GET", "/v1/numbers").allowed

    suspend(client, tenant.account_id)
    assert decided_within(elsewhere, tenant.token, 401, 1.0)

    suspend(client, tenant.account_id, "resume")
    assert decided_within(elsewhere, tenant.token, 200, 1.0)


def test_if_account_is_deleted_then_its_keys_get_401_and_it_is_gone(
    client: TestClient, keyguard: Keyguard, tenant: Tenant, other_tenant: Tenant
) -> None:
    response = client.delete(f"{ADMIN}/accounts/{tenant.account_id}", headers=OPERATOR)

    assert (response.status_code, response.json()) == (200, {"success": True})
    assert status_of(client, tenant.token) == (401, 401)
    assert keyguard.store.list_keys(tenant.account_id) == []
    for method, suffix in [("GET", ""), ("GET", "/keys"), ("POST", "/resume")]:
        url = f"{ADMIN}/accounts/{tenant.account_id}{suffix}"
        answer = client.request(method, url, headers=OPERATOR)
        assert (answer.status_code, answer.json()) == (404, NOT_FOUND)
    listed = client.get(f"{ADMIN}/accounts", headers=OPERATOR).json()["items"]
    assert [account["id"] for account in listed] == [other_tenant.account_id]
    assert status_of(client, tenant.token) == (401, 401)  # resuming did not revive it


# -- an account's keys -------------------------------------------------------------------------


def test_an_accounts_keys_are_listed_with_secrets_masked(
    client: TestClient, keyguard: Keyguard, tenant: Tenant
) -> None:
    made = [
        keyguard.service.create_key(tenant.account_id, {"label": label}).value
        for label in ("one", "two")
    ]

    response = client.get(f"{ADMIN}/accounts/{tenant.account_id}/keys", headers=OPERATOR)

    assert response.status_code == 200
    keys = response.json()
    assert [key["label"] for key in keys] == ["acme full access", "one", "two"]
    for key, secret in zip(keys, [tenant.token, *made], strict=True):
        assert MASKED.fullmatch(key["value"]), key["value"]
        assert key["value"].endswith(secret[-4:])
    for secret in [tenant.token, *made]:
        assert secret not in response.text
        assert secret.partition("_")[2][:28] not in response.text


def test_another_accounts_keys_are_not_in_the_list(
    client: TestClient, tenant: Tenant, other_tenant: Tenant
) -> None:
    response = client.get(f"{ADMIN}/accounts/{tenant.account_id}/keys", headers=OPERATOR)

    assert [key["id"] for key in response.json()] == [tenant.key_id]
    assert other_tenant.token[-4:] not in response.text


# -- the audit trail -----------------------------------------------------------------------------


def test_every_operator_change_is_in_the_accounts_trail_as_the_operator(
    client: TestClient, keyguard: Keyguard
) -> None:
    created = create_account(client, "initech")
    account_id, key = created["account"]["id"], created["api_key"]
    suspend(client, account_id)
    suspend(client, account_id, "resume")
    seen = client.get("/v1/audit-log", headers=bearer(key["value"])).json()["items"]
    deleted = client.delete(f"{ADMIN}/accounts/{account_id}", headers=OPERATOR)
    assert deleted.status_code == 200

    records, _ = keyguard.service.audit(AuditQuery(account_id))

    operator = {"type": "operator", "key_id": None, "ip": CLIENT_IP}
    assert [(r["action"], r["key_id"], r["actor"]) for r in reversed(seen)] == [
        ("account.create", None, operator),
        ("key.create", key["id"], operator),
        ("account.suspend", None, operator),
        ("account.resume", None, operator),
    ]
    assert [(r["before"], r["after"]) for r in reversed(seen)][2:] == [
        ({"status": "active"}, {"status": "suspended"}),
        ({"status": "suspended"}, {"status": "active"}),
    ]
    newest = records[0]
    assert (newest.action, newest.actor.kind, newest.actor.ip) == (
        "account.delete",
        "operator",
        CLIENT_IP,
    )
    assert (newest.before, newest.after) == ({"status": "active"}, {"status": "deleted"})
    assert len(records) == len(seen) + 1


def audit_log(client: TestClient, **params: Any) -> dict[str, Any]:
    response = client.get(f"{ADMIN}/audit-log", params=params, headers=OPERATOR)
    assert response.status_code == 200, response.text
    page: dict[str, Any] = response.json()
    return page


def test_the_operator_reads_every_accounts_trail_newest_first(
    client: TestClient, tenant: Tenant, other_tenant: Tenant
) -> None:
    suspend(client, tenant.account_id)
    minted = client.post(KEYS, json={"label": "k"}, headers=other_tenant.headers).json()

    page = audit_log(client)

    operator = {"type": "operator", "key_id": None, "ip": CLIENT_IP}
    command_line = {"type": "cli", "key_id": None, "ip": None}
    by_key = {"type": "key", "key_id": other_tenant.key_id, "ip": CLIENT_IP}
    assert [(r["account_id"], r["action"], r["key_id"], r["actor"]) for r in page["items"]] == [
        (other_tenant.account_id, "key.create", minted["id"], by_key),
        (tenant.account_id, "account.suspend", None, operator),
        (other_tenant.account_id, "key.create", other_tenant.key_id, command_line),
        (other_tenant.account_id, "account.create", None, command_line),
        (tenant.account_id, "key.create", tenant.key_id, command_line),
        (tenant.account_id, "account.create", None, command_line),
    ]
    assert page["pagination"] == {"current_page": 1, "per_page": 25, "total": 6, "total_pages": 1}


@pytest.mark.usefixtures("other_tenant")
def test_the_operator_reads_a_deleted_accounts_trail(client: TestClient, tenant: Tenant) -> None:
    deleted = client.delete(f"{ADMIN}/accounts/{tenant.account_id}", headers=OPERATOR)
    assert deleted.status_code == 200

    page = audit_log(client, account_id=tenant.account_id)

    assert [(r["account_id"], r["action"]) for r in page["items"]] == [
        (tenant.account_id, "account.delete"),
        (tenant.account_id, "key.create"),
        (tenant.account_id, "account.create"),
    ]
    assert page["items"][0]["after"] == {"status": "deleted"}
    assert audit_log(client, account_id=999999)["items"] == []


def test_the_operators_trail_takes_the_tenant_filters_and_pages(
    client: TestClient, tenant: Tenant, other_tenant: Tenant
) -> None:
    suspend(client, other_tenant.account_id)
    suspend(client, other_tenant.account_id, "resume")
    suspend(client, tenant.account_id)
    now = datetime.now(UTC).replace(microsecond=0)
    later = (now + timedelta(seconds=1)).isoformat().replace("+00:00", "Z")
    earlier = (now - timedelta(days=1)).isoformat().replace("+00:00", "Z")

    suspended = audit_log(client, action="account.suspend", per_page=1, page=2)
    of_one_key = audit_log(client, key_id=tenant.key_id)
    window = audit_log(client, account_id=other_tenant.account_id, **{"from": earlier, "to": later})

    assert [(r["account_id"], r["action"]) for r in suspended["items"]] == [
        (other_tenant.account_id, "account.suspend")
    ]
    assert suspended["pagination"] == {
        "current_page": 2, "per_page": 1, "total": 2, "total_pages": 2,
    }  # fmt: skip
    assert [(r["account_id"], r["action"]) for r in of_one_key["items"]] == [
        (tenant.account_id, "key.create")
    ]
    assert [r["action"] for r in window["items"]] == [
        "account.resume", "account.suspend", "key.create", "account.create",
    ]  # fmt: skip
    assert audit_log(client, **{"from": later})["items"] == []


@pytest.mark.parametrize(
    ("params", "name"),
    [
        pytest.param({"account_id": 0}, "account_id", id="account_id_0"),
        pytest.param({"account_id": "acme"}, "account_id", id="account_id_word"),
        pytest.param({"key_id": 0}, "key_id", id="key_id_0"),
        pytest.param({"action": "key.explode"}, "action", id="unknown_action"),
        pytest.param({"from": "yesterday"}, "from", id="from_word"),
        pytest.param({"to": "9999-12-31T23:00:00-05:00"}, "to", id="to_after_9999_utc"),
        pytest.param({"per_page": 101}, "per_page", id="per_page_101"),
    ],
)
def test_if_an_operator_trail_filter_is_invalid_then_400_wavix_body(
    client: TestClient, params: dict[str, Any], name: str
) -> None:
    response = client.get(f"{ADMIN}/audit-log", params=params, headers=OPERATOR)

    assert (response.status_code, response.json()) == (
        400,
        {"success": False, "message": f"Missing or invalid parameter {name}"},
    )


@pytest.mark.parametrize(
    "params",
    [pytest.param({}, id="no_filter"), pytest.param({"from": "yesterday"}, id="bad_filter")],
)
def test_if_the_operator_token_is_missing_then_the_trail_answers_401(
    client: TestClient, tenant: Tenant, params: dict[str, str]
) -> None:
    for headers in ({}, tenant.headers, bearer("operator-" + "8" * 32)):
        response = client.get(f"{ADMIN}/audit-log", params=params, headers=headers)
        assert (response.status_code, response.json()) == (401, UNAUTHORIZED)


# -- HEAD ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("suffix", ["", "/{account}", "/{account}/keys", "/999999"])
def test_head_on_an_operator_route_answers_as_get_without_a_body(
    client: TestClient, tenant: Tenant, suffix: str
) -> None:
    url = f"{ADMIN}/accounts" + suffix.format(account=tenant.account_id)
    got = client.get(url, headers=OPERATOR)

    head = client.head(url, headers=OPERATOR)

    assert (head.status_code, head.content) == (got.status_code, b"")
    assert head.headers["content-type"] == got.headers["content-type"] == "application/json"
    assert head.headers["content-length"] == got.headers["content-length"]


def test_head_on_an_operator_route_without_the_token_answers_401_without_a_body(
    client: TestClient,
) -> None:
    response = client.head(f"{ADMIN}/accounts")

    assert (response.status_code, response.content) == (401, b"")
    assert response.headers["www-authenticate"] == "Bearer"
