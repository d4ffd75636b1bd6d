"""``POST /v1/secret-scanning/github``: GitHub reports keys it found in public, and they die.

GitHub's side is played by a P-256 key pair made for each test and published in a
keys file as GitHub publishes its own. A report signed by it revokes every live key
among its tokens, here at once and everywhere within a second; anything unsigned,
tampered with or signed by another key changes nothing.
"""

import base64
import json
import os
import re
import string
import time
import zlib
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import httpx2
import pytest
from click.testing import CliRunner
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from pydantic import SecretStr
from starlette.testclient import TestClient

from keyguard.api import create_app
from keyguard.cli import main
from keyguard.config import Settings
from keyguard.domain import keys
from keyguard.domain.records import AccountStatus, Actor
from keyguard.domain.scanning import Match
from keyguard.errors import ConfigurationError
from keyguard.runtime import Keyguard
from keyguard.storage import AuditQuery
from tests.conftest import (
    CLIENT_IP,
    POSTGRES_URL_VARIABLE,
    TEST_SECRET,
    ClientFactory,
    Tenant,
    bearer,
    missing,
    postgres_schema,
)
from tests.readme import README, readme_blocks
from tests.server import Servers, Worker, workers_of
from tests.test_webhooks import ARRIVAL_TIMEOUT, SIGNING_SECRET, Receiver

SCANNING = "/v1/secret-scanning/github"
TOKEN_TYPE = "keyguard_api_key"
URL = "https://github.com/octocat/Hello-World/blob/1234567/config.env"
UNAUTHORIZED = {"success": False, "error": True, "message": "Unauthorized"}
LEAKED = {"success": False, "message": "API key was leaked; roll it or create a new key"}


def _pem(key: ec.EllipticCurvePrivateKey) -> str:
    public = key.public_key()
    return public.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    ).decode()


def publish(path: Path, published: dict[str, ec.EllipticCurvePrivateKey]) -> None:
    """Write ``published`` (public halves, by identifier) as GitHub serves its keys."""
    entries = [
        {"key_identifier": key_id, "key": _pem(key), "is_current": number == 0}
        for number, (key_id, key) in enumerate(published.items())
    ]
    path.write_text(json.dumps({"public_keys": entries}))


class GitHub:
    """GitHub's side: a signing key, published in a keys file beside an older one."""

    def __init__(self, folder: Path) -> None:
        self.key = ec.generate_private_key(ec.SECP256R1())
        self.key_id = "a" * 64
        self.keys_file = folder / "github-keys.json"
        publish(
            self.keys_file,
            {self.key_id: self.key, "b" * 64: ec.generate_private_key(ec.SECP256R1())},
        )

    def sign(
        self, body: bytes, key: ec.EllipticCurvePrivateKey | None = None, key_id: str | None = None
    ) -> dict[str, str]:
        signature = (key or self.key).sign(body, ec.ECDSA(hashes.SHA256()))
        return {
            "Github-Public-Key-Identifier": key_id or self.key_id,
            "Github-Public-Key-Signature": base64.b64encode(signature).decode(),
        }

    def report(self, client: TestClient, *tokens: str) -> httpx2.Response:
        """Report ``tokens`` as found at :data:`URL`, signed."""
        body = report_body(*tokens)
        return client.post(SCANNING, content=body, headers=self.sign(body))


def report_body(*tokens: str) -> bytes:
    matches = [
        {"token": token, "type": TOKEN_TYPE, "url": URL, "source": "content"} for token in tokens
    ]
    return json.dumps(matches).encode()


def labelled(*answers: tuple[str, str]) -> list[dict[str, str]]:
    return [
        {"token_raw": token, "token_type": TOKEN_TYPE, "label": label} for token, label in answers
    ]


@pytest.fixture
def github(tmp_path: Path) -> GitHub:
    return GitHub(tmp_path)


@pytest.fixture
def settings(settings: Settings, github: GitHub) -> Settings:
    return settings.model_copy(update={"github_scanning_keys": github.keys_file})


def create_key(client: TestClient, owner: Tenant, **fields: Any) -> dict[str, Any]:
    answer = client.post("/v1/api-keys", json={"label": "ci", **fields}, headers=owner.headers)
    assert answer.status_code == 200, answer.text
    key: dict[str, Any] = answer.json()
    return key


def forward(client: TestClient, token: str) -> int:
    headers = {**bearer(token), "X-Original-Method": "GET", "X-Original-URI": "/v1/numbers"}
    return client.get("/auth/forward", headers=headers).status_code


def answers(client: TestClient, token: str) -> dict[str, int]:
    """What each way of presenting ``token`` gets: forward auth, verify, management."""
    verify = client.post(
        "/auth/verify", json={"key": token, "method": "GET", "path": "/v1/numbers"}
    )
    return {
        "forward": forward(client, token),
        "verify": verify.json()["status"],
        "management": client.get("/v1/api-keys", headers=bearer(token)).status_code,
    }


REFUSED = {"forward": 401, "verify": 401, "management": 401}
ALLOWED = {"forward": 200, "verify": 200, "management": 200}


def leaks(client: TestClient, owner: Tenant) -> list[dict[str, Any]]:
    answer = client.get("/v1/audit-log", params={"action": "key.leak"}, headers=owner.headers)
    assert answer.status_code == 200, answer.text
    found: list[dict[str, Any]] = answer.json()["items"]
    return found


def stored(keyguard: Keyguard) -> tuple[int, int]:
    """The store's revision and the audit trail's length: what any change moves."""
    revision = keyguard.store.changes_since(0).revision
    return revision, keyguard.store.list_audit(AuditQuery(account_id=None))[1]


# -- a true positive ------------------------------------------------------------------


def test_a_reported_key_is_refused_everywhere_at_once_marked_leaked_and_audited(
    client: TestClient, github: GitHub, tenant: Tenant
) -> None:
    key = create_key(client, tenant)
    assert answers(client, key["value"]) == ALLOWED
    before = datetime.now(UTC).replace(microsecond=0)

    answer = github.report(client, key["value"])

    assert answer.status_code == 200, answer.text
    assert answer.json() == labelled((key["value"], "true_positive"))
    assert answers(client, key["value"]) == REFUSED
    shown = client.get(f"/v1/api-keys/{key['id']}", headers=tenant.headers).json()
    assert (shown["active"], shown["is_active"]) == (False, False)
    assert before <= datetime.fromisoformat(shown["leaked_at"]) <= datetime.now(UTC)
    [record] = leaks(client, tenant)
    assert record["key_id"] == key["id"]
    assert record["actor"] == {"type": "github", "key_id": None, "ip": CLIENT_IP}
    assert record["before"]["active"] is True
    assert (record["after"]["url"], record["after"]["source"]) == (URL, "content")
    assert (record["after"]["active"], record["after"]["leaked_at"]) == (False, shown["leaked_at"])
    assert key["value"] not in json.dumps(record)
    assert key["value"][-10:] not in json.dumps(record)


def test_the_other_keys_of_the_account_keep_working(
    client: TestClient, github: GitHub, tenant: Tenant
) -> None:
    leaked, kept = create_key(client, tenant), create_key(client, tenant)

    github.report(client, leaked["value"])

    assert answers(client, kept["value"]) == ALLOWED
    assert answers(client, tenant.token) == ALLOWED


def test_a_key_of_a_suspended_account_is_revoked_too(
    client: TestClient, github: GitHub, keyguard: Keyguard, tenant: Tenant
) -> None:
    key = create_key(client, tenant)
    keyguard.service.set_account_status(tenant.account_id, AccountStatus.SUSPENDED)

    assert github.report(client, key["value"]).json() == labelled((key["value"], "true_positive"))

    keyguard.service.set_account_status(tenant.account_id, AccountStatus.ACTIVE)
    assert answers(client, key["value"]) == REFUSED
    assert answers(client, tenant.token) == ALLOWED


def test_a_key_made_a_moment_ago_by_another_process_is_found_in_the_database(
    settings: Settings, keyguard: Keyguard, tenant: Tenant
) -> None:
    reporter = Keyguard(settings)  # its snapshot was never loaded: the key is not in it
    assert len(reporter.cache) == 0

    found = reporter.service.report_leaks([Match(tenant.token, TOKEN_TYPE)], Actor("github"))
    reporter.store.close()

    assert found == [True]
    [key] = keyguard.store.list_keys(tenant.account_id)
    assert (key.settings.active, key.leaked_at is not None) == (False, True)


def test_a_key_not_yet_rewritten_by_a_secret_rotation_is_found_by_its_previous_digest(
    database_url: str, github: GitHub
) -> None:
    old = Settings(database_url=database_url, secret_key=TEST_SECRET)
    made = Keyguard(old)
    made.store.migrate()
    _account, view = made.service.create_account("acme")
    made.store.close()
    new = SecretStr("new-secret-" + "fedcba9876543210" * 3)
    rotating = Settings(
        database_url=database_url,
        secret_key=new,
        previous_secret_key=TEST_SECRET,
        github_scanning_keys=github.keys_file,
    )

    with TestClient(create_app(rotating)) as client:
        assert forward(client, view.value) == 200
        assert github.report(client, view.value).json() == labelled((view.value, "true_positive"))
        assert forward(client, view.value) == 401


# -- false positives and replays ----------------------------------------------------


def test_tokens_that_are_no_live_key_are_false_positives_and_change_nothing(
    client: TestClient, github: GitHub, keyguard: Keyguard, tenant: Tenant
) -> None:
    never_issued = keys.generate("kg")
    bad_checksum = never_issued[:-1] + ("A" if never_issued[-1] != "A" else "B")
    tokens = [never_issued, bad_checksum, "ghp_" + "x" * 36, tenant.token + "x"]
    state = stored(keyguard)

    answer = github.report(client, *tokens)

    assert answer.status_code == 200
    assert answer.json() == labelled(*((token, "false_positive") for token in tokens))
    assert stored(keyguard) == state
    assert answers(client, tenant.token) == ALLOWED


def test_a_report_labels_each_token_in_its_order(
    client: TestClient, github: GitHub, tenant: Tenant
) -> None:
    first, second = create_key(client, tenant), create_key(client, tenant)
    stranger = keys.generate("kg")

    answer = github.report(client, first["value"], stranger, second["value"])

    assert answer.json() == labelled(
        (first["value"], "true_positive"),
        (stranger, "false_positive"),
        (second["value"], "true_positive"),
    )
    assert [record["key_id"] for record in leaks(client, tenant)] == [second["id"], first["id"]]


def test_a_replayed_report_answers_the_same_and_changes_nothing(
    client: TestClient, github: GitHub, keyguard: Keyguard, tenant: Tenant
) -> None:
    key = create_key(client, tenant)
    body = report_body(key["value"])
    headers = github.sign(body)
    first = client.post(SCANNING, content=body, headers=headers)
    state = stored(keyguard)
    shown = client.get(f"/v1/api-keys/{key['id']}", headers=tenant.headers).json()

    again = client.post(SCANNING, content=body, headers=headers)

    assert (again.status_code, again.json()) == (first.status_code, first.json())
    assert stored(keyguard) == state
    assert len(leaks(client, tenant)) == 1
    assert client.get(f"/v1/api-keys/{key['id']}", headers=tenant.headers).json() == shown


def test_a_deleted_key_is_a_true_positive_and_nothing_changes(
    client: TestClient, github: GitHub, keyguard: Keyguard, tenant: Tenant
) -> None:
    key = create_key(client, tenant)
    assert client.delete(f"/v1/api-keys/{key['id']}", headers=tenant.headers).status_code == 200
    state = stored(keyguard)

    assert github.report(client, key["value"]).json() == labelled((key["value"], "true_positive"))

    assert stored(keyguard) == state


# -- what the owner can do with a leaked key ------------------------------------------


@pytest.mark.parametrize(
    ("method", "suffix", "body"),
    [
        ("PATCH", "", {"active": True}),
        ("PATCH", "", {"is_active": True}),
        ("PATCH", "", {"label": "renamed", "active": True}),
        ("PATCH", "/activate", None),
    ],
    ids=["active", "is_active", "label and active", "activate"],
)
def test_a_leaked_key_cannot_be_activated_again(
    client: TestClient,
    github: GitHub,
    keyguard: Keyguard,
    tenant: Tenant,
    method: str,
    suffix: str,
    body: dict[str, Any] | None,
) -> None:
    key = create_key(client, tenant)
    github.report(client, key["value"])
    path = f"/v1/api-keys/{key['id']}"
    shown = client.get(path, headers=tenant.headers).json()
    state = stored(keyguard)

    answer = client.request(method, path + suffix, json=body, headers=tenant.headers)

    assert (answer.status_code, answer.json()) == (409, LEAKED)
    assert client.get(path, headers=tenant.headers).json() == shown
    assert stored(keyguard) == state
    assert answers(client, key["value"]) == REFUSED


def test_a_leaked_key_may_be_renamed_or_deactivated_and_stays_refused(
    client: TestClient, github: GitHub, tenant: Tenant
) -> None:
    key = create_key(client, tenant)
    github.report(client, key["value"])
    path = f"/v1/api-keys/{key['id']}"

    renamed = client.patch(path, json={"label": "leaked in CI"}, headers=tenant.headers)
    deactivated = client.patch(path, json={"active": False}, headers=tenant.headers)

    assert renamed.status_code == deactivated.status_code == 200
    assert (renamed.json()["label"], renamed.json()["active"]) == ("leaked in CI", False)
    assert deactivated.json()["leaked_at"] == renamed.json()["leaked_at"] is not None
    assert answers(client, key["value"]) == REFUSED


def test_a_leaked_key_rolls_into_a_working_key_and_stays_refused(
    client: TestClient, github: GitHub, tenant: Tenant
) -> None:
    key = create_key(client, tenant, scopes_enabled=True, numbers={"allow": "read"})
    github.report(client, key["value"])

    rolled = client.post(f"/v1/api-keys/{key['id']}/roll", headers=tenant.headers)

    assert rolled.status_code == 200, rolled.text
    new = rolled.json()
    assert (new["rolled_from"], new["active"], new["leaked_at"]) == (key["id"], True, None)
    assert (new["label"], new["numbers"]) == ("ci", {"allow": "read"})
    assert forward(client, new["value"]) == 200
    assert forward(client, key["value"]) == 401  # within the grace period too
    old = client.get(f"/v1/api-keys/{key['id']}", headers=tenant.headers).json()
    assert (old["active"], old["leaked_at"] is not None) == (False, True)


# -- reports that are not GitHub's ------------------------------------------------------


def _another_body(github: GitHub, _body: bytes) -> dict[str, str]:
    return github.sign(report_body(keys.generate("kg")))


def _respaced_body(github: GitHub, body: bytes) -> dict[str, str]:
    return github.sign(json.dumps(json.loads(body), indent=1).encode())  # same JSON, other bytes


def _other_identifier(github: GitHub, body: bytes) -> dict[str, str]:
    return github.sign(body, key_id="c" * 64)


def _older_listed_key(github: GitHub, body: bytes) -> dict[str, str]:
    return github.sign(body, key_id="b" * 64)  # listed, but the signature is by "a"


def _unlisted_key(github: GitHub, body: bytes) -> dict[str, str]:
    return github.sign(body, key=ec.generate_private_key(ec.SECP256R1()))


def _no_identifier(github: GitHub, body: bytes) -> dict[str, str]:
    return {"Github-Public-Key-Signature": github.sign(body)["Github-Public-Key-Signature"]}


def _no_signature(github: GitHub, _body: bytes) -> dict[str, str]:
    return {"Github-Public-Key-Identifier": github.key_id}


def _no_headers(_github: GitHub, _body: bytes) -> dict[str, str]:
    return {}


def _not_base64(github: GitHub, _body: bytes) -> dict[str, str]:
    return {**github.sign(b""), "Github-Public-Key-Signature": "not base64!"}


def _not_der(github: GitHub, _body: bytes) -> dict[str, str]:
    return {**github.sign(b""), "Github-Public-Key-Signature": base64.b64encode(b"0" * 70).decode()}


@pytest.mark.parametrize(
    "signed",
    [
        _another_body,
        _respaced_body,
        _other_identifier,
        _older_listed_key,
        _unlisted_key,
        _no_identifier,
        _no_signature,
        _no_headers,
        _not_base64,
        _not_der,
    ],
    ids=[
        "body changed after signing",
        "body respaced after signing",
        "unknown key identifier",
        "another listed key's identifier",
        "a key not in the file",
        "no identifier",
        "no signature",
        "no headers",
        "signature not base64",
        "signature not DER",
    ],
)
def test_a_report_not_signed_by_a_listed_key_as_sent_is_401_and_changes_nothing(
    client: TestClient, github: GitHub, keyguard: Keyguard, tenant: Tenant, signed: Any
) -> None:
    key = create_key(client, tenant)
    body = report_body(key["value"])
    state = stored(keyguard)

    answer = client.post(SCANNING, content=body, headers=signed(github, body))

    assert (answer.status_code, answer.json()) == (401, UNAUTHORIZED)
    assert stored(keyguard) == state
    assert answers(client, key["value"]) == ALLOWED


def test_two_signature_headers_are_401(client: TestClient, github: GitHub, tenant: Tenant) -> None:
    key = create_key(client, tenant)
    body = report_body(key["value"])
    signature = github.sign(body)
    headers = [(name, value) for name, value in signature.items()]
    headers.append(("Github-Public-Key-Signature", signature["Github-Public-Key-Signature"]))

    answer = client.post(SCANNING, content=body, headers=headers)

    assert answer.status_code == 401
    assert answers(client, key["value"]) == ALLOWED


def test_an_api_key_does_not_stand_in_for_the_signature(
    client: TestClient, github: GitHub, tenant: Tenant
) -> None:
    body = report_body(tenant.token)

    unsigned = client.post(SCANNING, content=body, headers=tenant.headers)
    signed_with_junk = client.post(
        SCANNING, content=body, headers={**github.sign(body), **bearer("no key at all")}
    )

    assert unsigned.status_code == 401
    assert signed_with_junk.status_code == 200  # the signature alone counts
    assert signed_with_junk.json() == labelled((tenant.token, "true_positive"))


@pytest.mark.parametrize(
    "path", ["/v1/secret-scanning/github/", "/v1/secret-scanning/gitlab", "/v1/secret-scanning"]
)
def test_only_the_endpoint_itself_skips_the_key_check(
    client: TestClient, github: GitHub, path: str
) -> None:
    body = report_body(keys.generate("kg"))

    answer = client.post(path, content=body, headers=github.sign(body))

    assert (answer.status_code, answer.json()) == (401, UNAUTHORIZED)


@pytest.mark.parametrize(
    ("body", "parameter"),
    [
        (b"", "body"),
        (b"not json", "body"),
        (b'{"token": "kg_x", "type": "t"}', "body"),
        (b"[1]", "body"),
        (b'[{"type": "t"}]', "token"),
        (b'[{"token": 5, "type": "t"}]', "token"),
        (b'[{"token": "kg_x"}]', "type"),
        (b'[{"token": "kg_x", "type": "t", "url": 5}]', "url"),
        (b'[{"token": "kg_x", "type": "t", "source": ["content"]}]', "source"),
    ],
)
def test_a_malformed_report_with_a_valid_signature_is_400(
    client: TestClient, github: GitHub, keyguard: Keyguard, body: bytes, parameter: str
) -> None:
    state = stored(keyguard)

    answer = client.post(SCANNING, content=body, headers=github.sign(body))

    expected = {"success": False, "message": f"Missing or invalid parameter {parameter}"}
    assert (answer.status_code, answer.json()) == (400, expected)
    assert stored(keyguard) == state


def test_a_malformed_report_without_a_signature_is_401(client: TestClient) -> None:
    assert client.post(SCANNING, content=b"not json").status_code == 401


def test_an_empty_report_answers_an_empty_list(client: TestClient, github: GitHub) -> None:
    answer = client.post(SCANNING, content=b"[]", headers=github.sign(b"[]"))

    assert (answer.status_code, answer.json()) == (200, [])


def test_a_report_over_a_mebibyte_is_413(client: TestClient, github: GitHub) -> None:
    body = report_body(*(keys.generate("kg") for _ in range(9000)))
    assert len(body) > 1024 * 1024

    answer = client.post(SCANNING, content=body, headers=github.sign(body))

    assert (answer.status_code, answer.json()) == (
        413,
        {"success": False, "message": "Request body too large"},
    )


def test_where_a_key_was_found_is_recorded_printable_and_bounded(
    client: TestClient, github: GitHub, tenant: Tenant
) -> None:
    key = create_key(client, tenant)
    found = [{"token": key["value"], "type": TOKEN_TYPE, "url": "x" * 5000, "source": "a\x00b"}]
    body = json.dumps(found).encode()

    assert client.post(SCANNING, content=body, headers=github.sign(body)).status_code == 200

    [record] = leaks(client, tenant)
    assert (len(record["after"]["url"]), record["after"]["source"]) == (2048, "a?b")


# -- limits, keys file, off -----------------------------------------------------------


class TestFailedSignaturesCountAsFailedAuthentications:
    @pytest.fixture
    def settings(self, settings: Settings) -> Settings:
        return settings.model_copy(update={"auth_failures_per_minute": 3})

    def test_a_caller_past_the_limit_gets_429_even_when_signed(
        self, client_from: ClientFactory, github: GitHub
    ) -> None:
        body = report_body(keys.generate("kg"))
        forger, other = client_from("198.51.100.7"), client_from("198.51.100.8")

        statuses = [
            forger.post(SCANNING, content=body, headers=_unlisted_key(github, body)).status_code
            for _ in range(4)
        ]
        signed = forger.post(SCANNING, content=body, headers=github.sign(body))

        assert statuses == [401, 401, 401, 429]
        assert signed.status_code == 429
        assert int(signed.headers["Retry-After"]) > 0
        assert other.post(SCANNING, content=body, headers=github.sign(body)).status_code == 200


def test_a_refreshed_keys_file_is_used_without_a_restart(
    client: TestClient, github: GitHub, caplog: pytest.LogCaptureFixture
) -> None:
    body = report_body(keys.generate("kg"))
    newer = ec.generate_private_key(ec.SECP256R1())
    by_newer = github.sign(body, newer, "d" * 64)
    before = client.post(SCANNING, content=body, headers=by_newer)

    publish(github.keys_file, {"d" * 64: newer, github.key_id: github.key})
    after = client.post(SCANNING, content=body, headers=by_newer)
    github.keys_file.write_text("{")  # a refresh gone wrong
    after_a_bad_refresh = client.post(SCANNING, content=body, headers=by_newer)

    assert [before.status_code, after.status_code, after_a_bad_refresh.status_code] == [
        401,
        200,
        200,
    ]
    assert "cannot be used (it is not JSON); the keys read before stay in use" in caplog.text


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        (None, "No such file or directory"),
        ("{", "it is not JSON"),
        ('{"public_keys": []}', 'it has no "public_keys" list with a key in it'),
        ('{"keys": [{"key_identifier": "a", "key": "b"}]}', 'it has no "public_keys" list'),
        ('{"public_keys": [{"key": "b"}]}', 'public key 1 lacks "key_identifier" or "key"'),
        ('{"public_keys": [{"key_identifier": "a", "key": "b"}]}', "public key 1 is not a PEM"),
        ("P-384", "public key 1 is not an ECDSA P-256 key"),
    ],
    ids=["missing", "not JSON", "no keys", "other shape", "no identifier", "not PEM", "P-384"],
)
def test_a_keys_file_that_cannot_be_used_refuses_the_start(
    database_url: str, tmp_path: Path, content: str | None, reason: str
) -> None:
    path = tmp_path / "keys.json"
    if content == "P-384":
        publish(path, {"a": ec.generate_private_key(ec.SECP384R1())})
    elif content is not None:
        path.write_text(content)
    settings = Settings(
        database_url=database_url, secret_key=TEST_SECRET, github_scanning_keys=path
    )

    with pytest.raises(ConfigurationError) as refused:
        Keyguard(settings)

    assert refused.value.message.startswith(f"Cannot use KEYGUARD_GITHUB_SCANNING_KEYS {path}: ")
    assert reason in refused.value.message
    assert refused.value.message.endswith(
        "Download GitHub's keys into it (curl -fsS "
        f"https://api.github.com/meta/public_keys/secret_scanning -o {path}), or unset the "
        "variable to turn POST /v1/secret-scanning/github off."
    )


def test_keyguard_serve_with_a_bad_keys_file_exits_with_the_sentence(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    (tmp_path / "keys.json").write_text("{")
    monkeypatch.setenv("KEYGUARD_DATABASE_URL", f"sqlite:///{tmp_path}/keyguard.db")
    monkeypatch.setenv("KEYGUARD_GITHUB_SCANNING_KEYS", str(tmp_path / "keys.json"))

    result = CliRunner().invoke(main, ["serve"])

    assert result.exit_code == 1
    assert "keyguard: Cannot use KEYGUARD_GITHUB_SCANNING_KEYS" in result.output


def test_the_endpoint_is_documented_as_signed_by_github(client: TestClient) -> None:
    document = client.get("/openapi.json").json()

    operation = document["paths"][SCANNING]["post"]
    assert operation["security"] == [{"githubSignature": []}]
    scheme = document["components"]["securitySchemes"]["githubSignature"]
    assert (scheme["in"], scheme["name"]) == ("header", "Github-Public-Key-Signature")
    assert set(operation["responses"]) >= {"200", "400", "401", "413", "429"}


class TestWithoutAKeysFile:
    @pytest.fixture
    def settings(self, settings: Settings) -> Settings:
        return settings.model_copy(update={"github_scanning_keys": None})

    def test_the_endpoint_answers_as_any_unknown_route_does(
        self, client: TestClient, github: GitHub, tenant: Tenant
    ) -> None:
        body = report_body(tenant.token)
        unknown = "/v1/no-such-route"

        for headers in ({}, tenant.headers):
            signed = {**github.sign(body), **headers}
            off = client.post(SCANNING, content=body, headers=signed)
            elsewhere = client.post(unknown, content=body, headers=signed)
            assert (off.status_code, off.json()) == (elsewhere.status_code, elsewhere.json())
        assert client.post(SCANNING, content=body, headers=tenant.headers).status_code == 404
        assert answers(client, tenant.token) == ALLOWED
        assert SCANNING not in client.get("/openapi.json").json()["paths"]


class TestWithWebhooks:
    @pytest.fixture
    def receiver(self) -> Iterator[Receiver]:
        listening = Receiver()
        listening.up()
        yield listening
        listening.down()

    @pytest.fixture
    def settings(self, settings: Settings, receiver: Receiver) -> Settings:
        webhooks = {"webhook_url": receiver.url, "webhook_secret": SecretStr(SIGNING_SECRET)}
        return settings.model_copy(update=webhooks)

    def test_a_leak_is_announced_as_key_leaked_with_where_it_was_found_never_the_token(
        self, client: TestClient, github: GitHub, tenant: Tenant, receiver: Receiver
    ) -> None:
        key = create_key(client, tenant)

        github.report(client, key["value"])

        deadline = time.monotonic() + ARRIVAL_TIMEOUT
        while not [event for event in receiver.events() if event.type == "key.leaked"]:
            assert time.monotonic() < deadline, [event.type for event in receiver.events()]
            time.sleep(0.05)
        [leaked] = [event for event in receiver.events() if event.type == "key.leaked"]
        assert (leaked.data["action"], leaked.data["key_id"]) == ("key.leak", key["id"])
        assert leaked.data["actor"] == {"type": "github", "key_id": None, "ip": CLIENT_IP}
        assert (leaked.data["after"]["url"], leaked.data["after"]["source"]) == (URL, "content")
        assert key["value"] not in leaked.body
        assert key["value"][-4:] not in leaked.body


def readme_checksum(head: str) -> str:
    """The checksum as the README describes it to GitHub."""
    digits = string.digits + string.ascii_uppercase + string.ascii_lowercase
    number = zlib.crc32(head.encode())
    return "".join(digits[number // 62**place % 62] for place in reversed(range(6)))


def test_the_readme_pattern_finds_keys_with_the_prefix_and_nothing_else() -> None:
    blocks, _problems = readme_blocks(README.read_text("utf-8"))
    [block] = [
        block
        for block in blocks
        if block.markers.get("tested-by", "").endswith(
            "::test_the_readme_pattern_finds_keys_with_the_prefix_and_nothing_else"
        )
    ]
    pattern = re.compile(block.text.strip())
    issued = [keys.generate("acme") for _ in range(200)]

    for token in issued:
        assert [found.group() for found in pattern.finditer(f"KEY={token}\n")] == [token]
        assert token[-6:] == readme_checksum(token[:-6])
    assert not pattern.search(keys.generate("kg"))
    assert not pattern.search(keys.generate("acme2"))
    assert not pattern.search(issued[0] + "x")  # a longer string is not a key
    assert not pattern.search(issued[0][:-1])


# -- for real: two instances on PostgreSQL ----------------------------------------------

PROPAGATION_BOUND = 1.0  # README: a key revoked anywhere is refused everywhere within 1 s
POLL_TIMEOUT = 3.0


def settled(workers: list[Worker], tokens: list[str], status: int) -> dict[str, float]:
    """Poll every worker until it answers ``status`` for all ``tokens``; each one's delay."""
    since = time.monotonic()
    delays: dict[str, float] = {}
    while len(delays) < len(workers):
        assert time.monotonic() - since < POLL_TIMEOUT, f"only {sorted(delays)} answer {status}"
        for worker in workers:
            if worker.pid not in delays and statuses(worker, tokens) == {status}:
                delays[worker.pid] = time.monotonic() - since
    for worker in workers:
        assert statuses(worker, tokens) == {status}
        worker.still_same()
    return delays


def statuses(worker: Worker, tokens: list[str]) -> set[int]:
    """What forward auth on ``worker`` answers for each of ``tokens``."""
    found = set()
    for token in tokens:
        headers = {**bearer(token), "X-Original-Method": "GET", "X-Original-URI": "/v1/numbers"}
        found.add(worker.client.get("/auth/forward", headers=headers).status_code)
    return found


@pytest.mark.slow
def test_a_key_reported_to_one_instance_is_refused_by_every_worker_of_both_within_one_second(
    tmp_path: Path, github: GitHub
) -> None:
    server = os.environ.get(POSTGRES_URL_VARIABLE) or missing(
        f"PostgreSQL: set {POSTGRES_URL_VARIABLE} to run two instances on one database"
    )
    with postgres_schema(server) as database, Servers(tmp_path) as servers:
        settings = {
            "KEYGUARD_DATABASE_URL": database,
            "KEYGUARD_GITHUB_SCANNING_KEYS": str(github.keys_file),
        }
        a = servers("a", workers=2, settings=settings)
        b = servers("b", workers=2, settings=settings)
        admin = a.create_account("acme")["api_key"]["value"]
        a.start()
        b.start()
        with (
            httpx.Client(base_url=b.base_url, headers=bearer(admin)) as api_b,
            workers_of(a) as workers_a,
            workers_of(b) as workers_b,
        ):
            everyone = workers_a + workers_b
            known = api_b.post("/v1/api-keys", json={"label": "known"}).json()["value"]
            settled(everyone, [known], 200)
            # Made through B a moment ago: A's snapshot may not hold it yet.
            fresh = api_b.post("/v1/api-keys", json={"label": "fresh"}).json()["value"]
            body = report_body(known, fresh)
            answer = workers_a[0].client.post(SCANNING, content=body, headers=github.sign(body))
            delays = settled(everyone, [known, fresh], 401)
            assert answer.json() == labelled((known, "true_positive"), (fresh, "true_positive"))

    shown = ", ".join(f"worker {pid}: {delay * 1000:.1f} ms" for pid, delay in delays.items())
    print(f"leak reported to A, refused by: {shown}")
    assert max(delays.values()) < PROPAGATION_BOUND, shown
