"""keyguard under attack: one test per attack, each failing if the attack succeeds.

A refused attack must also leave no trace: where an attack aims at stored keys,
the test compares everything the store holds for the victim (the account, its
keys and its audit trail) before and after. Keys are made through the service,
not the API, so that no request moves a ``last_used_at`` between the two looks.

Attacks already proven elsewhere are named in comments where they would belong.
"""

from typing import Any

import pytest
from pydantic import SecretStr
from starlette.testclient import TestClient

from keyguard.config import Settings
from keyguard.domain.keys import generate
from keyguard.domain.network import ClientIPHeader
from keyguard.domain.scopes import WAVIX_GROUPS
from keyguard.runtime import Keyguard
from keyguard.storage import AuditQuery
from tests.conftest import (
    CLIENT_IP,
    TEST_SECRET,
    ClientFactory,
    Tenant,
    bearer,
    raw_request,
    stored,
)

KEYS = "/v1/api-keys"
NOT_FOUND = {"success": False, "message": "Record not found"}
UNAUTHORIZED = {"success": False, "error": True, "message": "Unauthorized"}
FULL_ACCESS_REQUIRED = {"success": False, "message": "API key with full access required"}
AMBIGUOUS_PATH = {
    "success": False,
    "message": "Ambiguous path (encoded separator, dot segment, backslash or the like): "
    "API key with full access required",
}
MESSAGES_WRITE_REQUIRED = {
    "success": False,
    "message": "API key scope messages: write access required",
}
EVERY_GROUP_WRITE = {group: {"allow": "write"} for group in WAVIX_GROUPS}


def new_key(keyguard: Keyguard, owner: Tenant, **fields: Any) -> tuple[int, str]:
    """A key of ``owner``'s account, its id and its secret."""
    view = keyguard.service.create_key(owner.account_id, {"label": "k", **fields})
    return view.key.id, view.value


def secrets_in(text: str, keyguard: Keyguard, *owners: Tenant) -> list[str]:
    """The full secrets of ``owners``' keys that appear in ``text``."""
    found = []
    for owner in owners:
        for view in keyguard.service.list_keys(owner.account_id):
            if view.value in text:
                found.append(view.value)
    return found


def refusal(ip: str) -> dict[str, object]:
    return {"success": False, "message": f"IP address {ip} is not permitted for this API key"}


# -- enumerating other accounts' keys -------------------------------------------------
# tests/api/test_auth.py proves a 404 for one foreign key per operation; here the
# attacker walks every id, and the victim's stored state and audit trail are compared.

TAKEOVER = {"label": "mine now", "active": True, "restricted": False, "scopes_enabled": False}


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        pytest.param("GET", "/{id}", None, id="read"),
        pytest.param("PATCH", "/{id}", TAKEOVER, id="update"),
        pytest.param("DELETE", "/{id}", None, id="delete"),
        pytest.param("PATCH", "/{id}/activate", None, id="activate"),
        pytest.param("PATCH", "/{id}/deactivate", None, id="deactivate"),
    ],
)
def test_if_other_accounts_key_ids_are_enumerated_then_always_404_and_nothing_changes(
    client: TestClient,
    keyguard: Keyguard,
    tenant: Tenant,
    other_tenant: Tenant,
    method: str,
    path: str,
    body: object,
) -> None:
    new_key(keyguard, other_tenant, scopes_enabled=True, numbers={"allow": "read"})
    new_key(keyguard, other_tenant, active=False)
    deleted_id, _ = new_key(keyguard, other_tenant)
    keyguard.service.delete_key(other_tenant.account_id, deleted_id)
    victim_before = stored(keyguard, other_tenant.account_id)
    attacker_trail = keyguard.store.list_audit(AuditQuery(tenant.account_id))

    # Every id up to three past the newest: live, inactive, deleted and never issued.
    answers = {}
    for key_id in range(1, deleted_id + 4):
        if key_id != tenant.key_id:
            url = KEYS + path.format(id=key_id)
            response = client.request(method, url, json=body, headers=tenant.headers)
            answers[key_id] = (response.status_code, response.json())

    assert answers == dict.fromkeys(answers, (404, NOT_FOUND))
    assert stored(keyguard, other_tenant.account_id) == victim_before
    assert keyguard.store.list_audit(AuditQuery(tenant.account_id)) == attacker_trail
    assert keyguard.decider.decide(other_tenant.token, CLIENT_IP, "GET", KEYS).allowed


# -- a scoped key reaching for full access ----------------------------------------------
# tests/api/test_auth.py proves the 403 for every operation with a scoped key; here
# the requests are the escalations themselves, and the stored state is compared.


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        pytest.param("GET", "", None, id="list_every_secret"),
        pytest.param("GET", "/{full}", None, id="read_the_full_access_secret"),
        pytest.param("POST", "", {"label": "minted"}, id="create_a_full_access_key"),
        pytest.param(
            "POST", "", {"label": "minted", **EVERY_GROUP_WRITE}, id="create_an_equal_key"
        ),
        pytest.param("PATCH", "/{self}", {"scopes_enabled": False}, id="patch_itself_to_full"),
        pytest.param(
            "PATCH", "/{self}", {"is_scopes_enabled": False}, id="patch_itself_to_full_seed_era"
        ),
        pytest.param("PATCH", "/{full}/deactivate", None, id="deactivate_the_full_access_key"),
    ],
)
def test_if_scoped_key_with_every_group_write_reaches_for_full_access_then_403_and_nothing_changes(
    client: TestClient,
    keyguard: Keyguard,
    tenant: Tenant,
    method: str,
    path: str,
    body: object,
) -> None:
    scoped_id, scoped = new_key(keyguard, tenant, scopes_enabled=True, **EVERY_GROUP_WRITE)
    before = stored(keyguard, tenant.account_id)

    url = KEYS + path.format(self=scoped_id, full=tenant.key_id)
    response = client.request(method, url, json=body, headers=bearer(scoped))

    assert (response.status_code, response.json()) == (403, FULL_ACCESS_REQUIRED)
    assert stored(keyguard, tenant.account_id) == before
    assert secrets_in(response.text, keyguard, tenant) == []


@pytest.mark.parametrize(
    ("path", "refusal"),
    [
        pytest.param("/v1/api%2Dkeys", AMBIGUOUS_PATH, id="encoded_hyphen"),
        pytest.param("/v1/%61pi-keys", AMBIGUOUS_PATH, id="encoded_letter"),
        pytest.param("/v1/api-keys/", FULL_ACCESS_REQUIRED, id="trailing_slash"),
        pytest.param("/v1/api-keys?label=", FULL_ACCESS_REQUIRED, id="empty_filter"),
    ],
)
def test_if_scoped_key_lists_secrets_under_another_spelling_then_403(
    client: TestClient, keyguard: Keyguard, tenant: Tenant, path: str, refusal: dict[str, object]
) -> None:
    """Spellings that keyguard's own router still serves as the list of keys."""
    _, scoped = new_key(keyguard, tenant, scopes_enabled=True, **EVERY_GROUP_WRITE)
    assert client.get(path, headers=tenant.headers).status_code == 200

    response = client.get(path, headers=bearer(scoped))

    assert (response.status_code, response.json()) == (403, refusal)
    assert secrets_in(response.text, keyguard, tenant) == []


# -- getting past an IP allow-list -----------------------------------------------------
# Proven elsewhere: X-Forwarded-For from an untrusted peer on /v1/api-keys
# (tests/api/test_auth.py), X-Real-IP and X-Forwarded-For from an untrusted peer on
# /auth/forward and a forged left-most hop (tests/api/test_forward_auth.py).


@pytest.mark.parametrize(
    "spoof",
    [
        pytest.param({"X-Real-IP": "192.0.2.1"}, id="x_real_ip"),
        pytest.param({"X-Real-IP": "192.0.2.1", "X-Forwarded-For": "192.0.2.1"}, id="both"),
        pytest.param({"Forwarded": "for=192.0.2.1"}, id="rfc_7239_forwarded"),
        pytest.param({"X-Client-IP": "192.0.2.1", "True-Client-IP": "192.0.2.1"}, id="others"),
    ],
)
def test_if_untrusted_peer_claims_a_permitted_address_then_its_own_is_judged(
    client: TestClient, keyguard: Keyguard, tenant: Tenant, spoof: dict[str, str]
) -> None:
    _, restricted = new_key(keyguard, tenant, restricted=True, permitted_ips=["192.0.2.1"])
    before = stored(keyguard, tenant.account_id)

    response = client.post(KEYS, json={"label": "minted"}, headers=bearer(restricted) | spoof)

    assert (response.status_code, response.json()) == (403, refusal(CLIENT_IP))
    assert stored(keyguard, tenant.account_id) == before


@pytest.mark.parametrize("peer", ["::ffff:10.1.2.3", "::ffff:a01:203", "::FFFF:10.1.2.3"])
def test_if_ipv4_client_arrives_as_ipv4_mapped_ipv6_then_it_is_the_same_client(
    client_from: ClientFactory, keyguard: Keyguard, tenant: Tenant, peer: str
) -> None:
    key_id, restricted = new_key(keyguard, tenant, restricted=True, permitted_ips=["10.0.0.0/8"])

    response = client_from(peer).get(f"{KEYS}/{key_id}", headers=bearer(restricted))

    assert response.status_code == 200


@pytest.mark.parametrize(
    ("peer", "judged"),
    [
        pytest.param("::ffff:11.1.2.3", "11.1.2.3", id="mapped_outside_the_range"),
        pytest.param("::10.1.2.3", "::a01:203", id="ipv4_compatible_is_not_mapped"),
        pytest.param("64:ff9b::a01:203", "64:ff9b::a01:203", id="nat64_is_not_mapped"),
    ],
)
def test_if_ipv6_peer_embeds_a_permitted_ipv4_address_otherwise_then_403(
    client_from: ClientFactory, keyguard: Keyguard, tenant: Tenant, peer: str, judged: str
) -> None:
    _, restricted = new_key(keyguard, tenant, restricted=True, permitted_ips=["10.0.0.0/8"])
    before = stored(keyguard, tenant.account_id)

    response = client_from(peer).post(KEYS, json={"label": "x"}, headers=bearer(restricted))

    assert (response.status_code, response.json()) == (403, refusal(judged))
    assert stored(keyguard, tenant.account_id) == before


PROXY = "10.9.0.1"
FORWARDED_FOR = ClientIPHeader.X_FORWARDED_FOR
REAL_IP = ClientIPHeader.X_REAL_IP
ADMIN_TOKEN = "operator-" + "7" * 32
# nginx's `proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for` appends the
# address it saw to the client's own header, and passes the client's X-Real-IP on.
THE_CLIENT = "203.0.113.9"
APPENDED = {"X-Forwarded-For": f"198.51.100.7, {THE_CLIENT}", "X-Real-IP": "198.51.100.7"}
PERMITTED = ["198.51.100.0/24", "2001:db8::/32", "fe80::/10"]


class TestBehindATrustedProxy:
    """keyguard believes one header, KEYGUARD_CLIENT_IP_HEADER (X-Forwarded-For unless a
    test says otherwise), from 10.9.0.0/16 only, and only addresses written as
    addresses: anything else is refused. The other header is ignored entirely, since a
    proxy passes on the client's own copy of the header it does not manage."""

    @pytest.fixture
    def client_ip_header(self) -> ClientIPHeader:
        return ClientIPHeader.X_FORWARDED_FOR

    @pytest.fixture
    def settings(self, database_url: str, client_ip_header: ClientIPHeader) -> Settings:
        return Settings(
            database_url=database_url,
            secret_key=TEST_SECRET,
            trusted_proxies=["10.9.0.0/16"],
            client_ip_header=client_ip_header,
            admin_token=SecretStr(ADMIN_TOKEN),
        )

    @pytest.fixture
    def proxy(self, client_from: ClientFactory) -> TestClient:
        return client_from(PROXY)

    @pytest.mark.parametrize(
        ("client_ip_header", "value"),
        [
            pytest.param(FORWARDED_FOR, "198.51.100.7:4711", id="ipv4_with_port"),
            pytest.param(REAL_IP, "198.51.100.7:4711", id="real_ip_with_port"),
            pytest.param(FORWARDED_FOR, "[2001:db8::7]:443", id="ipv6_with_port"),
            pytest.param(FORWARDED_FOR, "fe80::7%eth0", id="zone_id"),
            pytest.param(REAL_IP, "fe80::7%25eth0", id="encoded_zone_id"),
            pytest.param(REAL_IP, "198.51.100.7, 203.0.113.9", id="real_ip_list"),
            pytest.param(FORWARDED_FOR, "198.51.100. 7", id="space_inside"),
            pytest.param(FORWARDED_FOR, "198.51.100.7 203.0.113.9", id="space_for_comma"),
            pytest.param(FORWARDED_FOR, "198.51.100.7,", id="empty_right_most_hop"),
            pytest.param(FORWARDED_FOR, "198.51.100.07", id="leading_zero"),
            pytest.param(FORWARDED_FOR, "0xc6.51.100.7", id="hexadecimal"),
            pytest.param(FORWARDED_FOR, "3325256711", id="one_integer"),
            pytest.param(FORWARDED_FOR, "198.51.100.0/24", id="a_range"),
        ],
    )
    def test_if_forwarded_address_is_not_plainly_an_address_then_refused(
        self,
        proxy: TestClient,
        keyguard: Keyguard,
        tenant: Tenant,
        client_ip_header: ClientIPHeader,
        value: str,
    ) -> None:
        _, restricted = new_key(keyguard, tenant, restricted=True, permitted_ips=PERMITTED)
        headers = bearer(restricted) | {client_ip_header: value}

        forwarded = proxy.get("/auth/forward", headers=headers | {"X-Original-URI": "/v1/numbers"})
        managed = proxy.get(KEYS, headers=headers)

        for response in (forwarded, managed):
            assert response.status_code == 403
            body = response.json()
            assert body["success"] is False
            assert body["message"].startswith("IP address ")
            assert body["message"].endswith(" is not permitted for this API key")

    @pytest.mark.parametrize(
        "spoof",
        [
            pytest.param({"X-Real-IP": "198.51.100.7"}, id="x_real_ip"),
            pytest.param({"X-Forwarded-For": "198.51.100.7"}, id="x_forwarded_for"),
        ],
    )
    def test_if_untrusted_peer_sends_proxy_headers_then_they_are_ignored(
        self, client: TestClient, keyguard: Keyguard, tenant: Tenant, spoof: dict[str, str]
    ) -> None:
        _, restricted = new_key(keyguard, tenant, restricted=True, permitted_ips=PERMITTED)

        response = client.get(KEYS, headers=bearer(restricted) | spoof)

        assert (response.status_code, response.json()) == (403, refusal(CLIENT_IP))

    def test_if_trusted_proxy_passes_on_an_rfc_7239_forwarded_header_then_it_is_ignored(
        self, proxy: TestClient, keyguard: Keyguard, tenant: Tenant
    ) -> None:
        _, restricted = new_key(keyguard, tenant, restricted=True, permitted_ips=PERMITTED)
        headers = bearer(restricted) | {"Forwarded": "for=198.51.100.7"}

        response = proxy.get("/auth/forward", headers=headers | {"X-Original-URI": "/v1/numbers"})

        assert (response.status_code, response.json()) == (403, refusal(PROXY))

    def test_if_client_adds_x_real_ip_to_what_the_proxy_appends_to_then_it_is_ignored(
        self, proxy: TestClient, keyguard: Keyguard, tenant: Tenant
    ) -> None:
        _, restricted = new_key(keyguard, tenant, restricted=True, permitted_ips=PERMITTED)
        headers = bearer(restricted) | APPENDED

        forwarded = proxy.get("/auth/forward", headers=headers | {"X-Original-URI": "/v1/numbers"})
        managed = proxy.get(KEYS, headers=headers)

        for response in (forwarded, managed):
            assert (response.status_code, response.json()) == (403, refusal(THE_CLIENT))

    def test_if_client_adds_x_real_ip_then_the_audit_trail_still_names_the_client(
        self, proxy: TestClient, keyguard: Keyguard, tenant: Tenant
    ) -> None:
        by_key = proxy.post(KEYS, json={"label": "k"}, headers=tenant.headers | APPENDED)
        by_operator = proxy.post(
            "/admin/v1/accounts", json={"name": "initech"}, headers=bearer(ADMIN_TOKEN) | APPENDED
        )
        assert (by_key.status_code, by_operator.status_code) == (200, 200), by_operator.text

        [key_created], _ = keyguard.store.list_audit(AuditQuery(tenant.account_id, limit=1))
        created = by_operator.json()["account"]["id"]
        [account_created], _ = keyguard.store.list_audit(
            AuditQuery(created, action="account.create")
        )
        assert (key_created.actor.kind, key_created.actor.ip) == ("key", THE_CLIENT)
        assert (account_created.actor.kind, account_created.actor.ip) == ("operator", THE_CLIENT)

    @pytest.mark.parametrize("client_ip_header", [REAL_IP], ids=str)
    def test_if_x_real_ip_is_the_header_then_x_forwarded_for_is_ignored(
        self, proxy: TestClient, keyguard: Keyguard, tenant: Tenant
    ) -> None:
        _, restricted = new_key(keyguard, tenant, restricted=True, permitted_ips=PERMITTED)
        headers = bearer(restricted) | {"X-Real-IP": THE_CLIENT, "X-Forwarded-For": "198.51.100.7"}

        forwarded = proxy.get("/auth/forward", headers=headers | {"X-Original-URI": "/v1/numbers"})
        managed = proxy.get(KEYS, headers=headers)

        for response in (forwarded, managed):
            assert (response.status_code, response.json()) == (403, refusal(THE_CLIENT))

    @pytest.mark.parametrize("client_ip_header", [REAL_IP], ids=str)
    def test_if_x_real_ip_arrives_twice_then_the_client_is_unknown_and_refused(
        self, proxy: TestClient, keyguard: Keyguard, tenant: Tenant
    ) -> None:
        # The proxy set one; the client sent the other, and a proxy may put either first.
        _, restricted = new_key(keyguard, tenant, restricted=True, permitted_ips=PERMITTED)
        headers = [
            *bearer(restricted).items(),
            ("X-Real-IP", THE_CLIENT),
            ("X-Real-IP", "198.51.100.7"),
        ]

        forwarded = proxy.get(
            "/auth/forward", headers=[*headers, ("X-Original-URI", "/v1/numbers")]
        )
        managed = proxy.get(KEYS, headers=headers)

        for response in (forwarded, managed):
            assert (response.status_code, response.json()) == (403, refusal("(unknown)"))

    @pytest.mark.parametrize("client_ip_header", list(ClientIPHeader), ids=str)
    @pytest.mark.parametrize(
        ("forwarded", "status"),
        [
            pytest.param("::ffff:198.51.100.7", 200, id="mapped_permitted"),
            pytest.param("::ffff:203.0.113.7", 403, id="mapped_not_permitted"),
        ],
    )
    def test_if_proxy_forwards_an_ipv4_mapped_address_then_it_is_the_ipv4_client(
        self,
        proxy: TestClient,
        keyguard: Keyguard,
        tenant: Tenant,
        client_ip_header: ClientIPHeader,
        forwarded: str,
        status: int,
    ) -> None:
        _, restricted = new_key(keyguard, tenant, restricted=True, permitted_ips=PERMITTED)
        headers = bearer(restricted) | {
            client_ip_header: forwarded,
            "X-Original-URI": "/v1/numbers",
        }

        assert proxy.get("/auth/forward", headers=headers).status_code == status


# -- getting past the route map through /auth/forward ---------------------------------
# tests/api/test_forward_auth.py proves ../, %2e%2e/, ..%2F, %252e%252e/, //x/../../
# and upper case against /v1/api-keys with X-Original-URI; these are further spellings,
# and the same attack in Traefik's and Envoy's forms.


@pytest.fixture
def numbers_writer(keyguard: Keyguard, tenant: Tenant) -> str:
    """A scoped key that may write numbers and read messages, nothing more."""
    _, token = new_key(
        keyguard,
        tenant,
        scopes_enabled=True,
        numbers={"allow": "write"},
        messages={"allow": "read"},
    )
    return token


@pytest.mark.parametrize(
    "uri",
    [
        "/v1/numbers/..;/api-keys",
        "/v1/numbers/%2E%2E/api-keys",
        "/v1/numbers/.%2e/api-keys",
        "/v1/numbers\\..\\api-keys",
        "/v1/numbers/%5C..%5Capi-keys",
        "/v1/numbers%3F/../../v1/api-keys",
        "/v1/numbers%23/../../v1/api-keys",
        "/v1/numbers/%25%32%65%25%32%65/api-keys",
        "/v1/./api-keys",
        "/v1/api%2Dkeys",
        "v1/api-keys",
    ],
)
def test_if_scoped_key_reaches_api_keys_by_another_spelling_then_403(
    client: TestClient, numbers_writer: str, uri: str
) -> None:
    headers = bearer(numbers_writer) | {"X-Original-URI": uri, "X-Original-Method": "GET"}

    response = client.get("/auth/forward", headers=headers)

    assert (response.status_code, response.json()) == (403, AMBIGUOUS_PATH)


def test_if_scoped_key_reaches_api_keys_with_a_trailing_slash_then_403(
    client: TestClient, numbers_writer: str
) -> None:
    headers = bearer(numbers_writer) | {"X-Original-URI": "/v1/api-keys/"}

    response = client.get("/auth/forward", headers=headers)

    assert (response.status_code, response.json()) == (403, FULL_ACCESS_REQUIRED)


@pytest.mark.parametrize(
    ("uri", "refusal"),
    [
        ("/V3/MESSAGES", AMBIGUOUS_PATH),
        ("/v3//messages", AMBIGUOUS_PATH),
        ("/v3/./messages", AMBIGUOUS_PATH),
        ("/v3/messages/", MESSAGES_WRITE_REQUIRED),
        ("/v3/messages;x=1", AMBIGUOUS_PATH),
        ("/v3/%6Dessages", AMBIGUOUS_PATH),
        ("/v1/numbers%2F..%2F..%2Fv3%2Fmessages", AMBIGUOUS_PATH),
    ],
)
def test_if_read_key_writes_by_another_spelling_through_traefik_then_403(
    client: TestClient, numbers_writer: str, uri: str, refusal: dict[str, object]
) -> None:
    headers = bearer(numbers_writer) | {"X-Forwarded-Uri": uri, "X-Forwarded-Method": "POST"}

    response = client.get("/auth/forward", headers=headers)

    assert (response.status_code, response.json()) == (403, refusal)


def envoy_check(client: TestClient, method: str, original: str, token: str) -> int:
    """The status /auth/forward gives Envoy's ext_authz check of ``original``.

    Envoy appends the path as the client sent it to ``/auth/forward``; the server
    hands keyguard that path percent-decoded, beside the raw bytes, as uvicorn
    does. The test client would resolve ``..`` itself, so the request is sent raw.
    """
    path, _, query = f"/auth/forward{original}".partition("?")
    authorization = (b"authorization", f"Bearer {token}".encode())
    status, _headers, _body = raw_request(client, method, path, [authorization], query)
    return status


@pytest.mark.parametrize(
    ("method", "original"),
    [
        pytest.param("GET", "/v1/numbers/../api-keys", id="dot_dot"),
        pytest.param("GET", "/v1/numbers%2F..%2Fapi-keys", id="encoded_slashes"),
        pytest.param("GET", "/v1/numbers/%252e%252e/api-keys", id="double_encoded_dots"),
        pytest.param("GET", "/V1/API-KEYS", id="upper_case"),
        pytest.param("GET", "/v1/numbers%3F/../../v1/api-keys", id="encoded_question_mark"),
        pytest.param("GET", "/v1/numbers%23/../../v1/api-keys", id="encoded_hash"),
        pytest.param(
            "POST", "/v1/numbers/papers%3F/../../../v3/messages", id="encoded_question_mark_write"
        ),
        pytest.param("GET", "/v1/numbers/../api-keys?page=2", id="with_a_query"),
    ],
)
def test_if_scoped_key_reaches_a_stronger_route_through_envoy_then_403(
    client: TestClient, numbers_writer: str, method: str, original: str
) -> None:
    assert envoy_check(client, method, original, numbers_writer) == 403


@pytest.mark.parametrize(
    "headers",
    [
        pytest.param(
            [
                ("X-Original-Method", "POST"),
                ("X-Original-URI", "/v3/messages"),
                ("X-Forwarded-Method", "GET"),
                ("X-Forwarded-Uri", "/v1/numbers"),
            ],
            id="nginx_then_client",
        ),
        pytest.param(
            [
                ("X-Forwarded-Method", "POST"),
                ("X-Forwarded-Uri", "/v3/messages"),
                ("X-Original-Method", "GET"),
                ("X-Original-URI", "/v1/numbers"),
            ],
            id="traefik_then_client",
        ),
    ],
)
def test_if_client_adds_the_other_proxys_request_headers_then_403(
    client: TestClient, numbers_writer: str, headers: list[tuple[str, str]]
) -> None:
    """Which style comes first depends on the proxy: disagreeing headers are refused."""
    response = client.get(
        "/auth/forward", headers=[("Authorization", f"Bearer {numbers_writer}"), *headers]
    )

    assert (response.status_code, response.json()) == (
        403,
        {
            "success": False,
            "message": "Conflicting original-request headers: the request cannot be judged",
        },
    )


# -- token tricks ------------------------------------------------------------------------
# Proven elsewhere: an unknown key with a valid checksum, a wrong checksum, a token over
# the header limit, non-ASCII bytes in Authorization, two Authorization headers, two
# appids, and header beating appid (tests/api/test_auth.py, test_forward_auth.py,
# test_errors.py); the header limit itself in tests/api/test_limits.py.


def ask(
    client: TestClient, surface: str, authorization: list[str], appid: str | None
) -> tuple[int, Any]:
    """One request that presents ``authorization`` headers and ``appid``, on ``surface``."""
    headers = [("Authorization", value) for value in authorization]
    query = "" if appid is None else f"?appid={appid}"
    if surface == "management":
        response = client.get(KEYS + query, headers=headers)
    else:
        response = client.get(
            "/auth/forward", headers=[("X-Original-URI", f"/v1/numbers{query}"), *headers]
        )
    return response.status_code, response.json()


TRICKS = [
    pytest.param(["Bearer {other_prefix}"], None, 401, id="valid_checksum_other_prefix"),
    pytest.param(["Bearer kg_" + "A" * 8000], None, 401, id="oversized_within_header_limit"),
    pytest.param(["Bearer {full}, Bearer {full}"], None, 401, id="headers_joined_by_a_proxy"),
    pytest.param([], "kg_%D0%BA%D0%BB%D1%8E%D1%87", 401, id="non_ascii_appid"),
    pytest.param([], "{full}%00", 401, id="nul_after_appid"),
    pytest.param(["bearer {scoped}"], "{full}", 403, id="lowercase_bearer_beats_appid"),
    pytest.param(["Basic {full}"], "{full}", 401, id="other_scheme_with_appid"),
]


@pytest.mark.parametrize("surface", ["management", "forward"])
@pytest.mark.parametrize(("authorization", "appid", "status"), TRICKS)
def test_if_token_is_presented_with_a_trick_then_it_gains_nothing(
    client: TestClient,
    keyguard: Keyguard,
    tenant: Tenant,
    surface: str,
    authorization: list[str],
    appid: str | None,
    status: int,
) -> None:
    _, scoped = new_key(keyguard, tenant, scopes_enabled=True)
    tokens = {"full": tenant.token, "scoped": scoped, "other_prefix": generate("zz")}

    answer = ask(
        client,
        surface,
        [value.format(**tokens) for value in authorization],
        None if appid is None else appid.format(**tokens),
    )

    assert answer[0] == status
    if status == 401:
        assert answer[1] == UNAUTHORIZED
