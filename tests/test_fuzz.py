"""Fuzzing keyguard's own OpenAPI document: every operation, valid and invalid input.

Each operation of the document gets a fresh database and a bounded number of
generated requests, schema-valid (positive) and schema-breaking (negative), sent
in-process. Every request carries a full-access key minted for it (the operator
token for ``/admin/v1``), so a generated ``DELETE`` of the caller's own key
costs only that request. A run fails on any 5xx, any response that breaks the
documented schema, status code or content type, any error body that is not
Wavix's, and any operation whose valid requests never once succeed.

The default run is derandomised: the same commit always draws the same requests.
``make fuzz`` draws more, from a random seed it prints;
``KEYGUARD_TEST_FUZZ_SEED=N`` (and ``KEYGUARD_TEST_FUZZ_EXAMPLES=M``) replays a run.
"""

import os
import re
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, given, seed, settings
from hypothesis import strategies as st
from pydantic import SecretStr
from schemathesis.checks import not_a_server_error
from schemathesis.generation import GenerationMode
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from keyguard.api import create_app
from keyguard.config import Settings
from keyguard.runtime import Keyguard
from keyguard.service import KeyService
from tests.conftest import TEST_SECRET

SEED_VARIABLE = "KEYGUARD_TEST_FUZZ_SEED"
EXAMPLES_VARIABLE = "KEYGUARD_TEST_FUZZ_EXAMPLES"
EXAMPLES_PER_OPERATION = 25  # the default, derandomised run
EXAMPLES_PER_OPERATION_WHEN_SEEDED = 200  # make fuzz
ADMIN_TOKEN = "operator-" + "0" * 32
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
]
HTTP_METHODS = {"get", "put", "post", "delete", "options", "head", "patch", "trace"}

# Every operation of the document, by label: test_the_fuzzed_operations_are_the_documents
# fails when the document gains or loses one and this list does not follow.
OPERATIONS = [
    "GET /v1/api-keys",
    "POST /v1/api-keys",
    "GET /v1/api-keys/{id}",
    "PATCH /v1/api-keys/{id}",
    "DELETE /v1/api-keys/{id}",
    "PATCH /v1/api-keys/{id}/activate",
    "PATCH /v1/api-keys/{id}/deactivate",
    "POST /v1/api-keys/{id}/roll",
    "GET /v1/api-keys/{id}/usage",
    "GET /v1/usage",
    "GET /v1/audit-log",
    "POST /admin/v1/accounts",
    "GET /admin/v1/accounts",
    "GET /admin/v1/accounts/{account_id}",
    "DELETE /admin/v1/accounts/{account_id}",
    "POST /admin/v1/accounts/{account_id}/suspend",
    "POST /admin/v1/accounts/{account_id}/resume",
    "GET /admin/v1/accounts/{account_id}/keys",
    "GET /admin/v1/audit-log",
    "GET /healthz",
    "GET /metrics",
    "POST /auth/verify",
    "GET /auth/forward",
    "HEAD /auth/forward",
    "POST /auth/forward",
    "PUT /auth/forward",
    "PATCH /auth/forward",
    "DELETE /auth/forward",
    "OPTIONS /auth/forward",
    "TRACE /auth/forward",
]


def wavix_error_body(_ctx: Any, response: Any, case: Any) -> bool:
    """Every 4xx and 5xx carries a Wavix body, and nothing else (HEAD: no body at all)."""
    if response.status_code < 400:
        return True
    if case.method.upper() == "HEAD":
        assert not response.content, f"a body in an answer to HEAD: {response.content!r}"
        return True
    body = response.json()
    expected = (
        {"success", "error", "message"}
        if response.status_code == 401
        else {
            "success",
            "message",
        }
    )
    assert set(body) == expected, f"not a Wavix error body: {body!r}"
    assert body["success"] is False
    assert isinstance(body["message"], str)
    assert body["message"]
    return True


@dataclass
class Target:
    """A keyguard with accounts and keys for generated requests to find."""

    app: Any
    service: KeyService
    account_id: int
    live: dict[str, list[int]]  # path parameter -> ids that exist

    def headers(self, operation: Any) -> dict[str, str]:
        if operation.path.startswith("/admin/"):
            token = ADMIN_TOKEN
        else:
            token = self.service.create_key(self.account_id, {"label": "fuzz caller"}).value
        return {"Authorization": f"Bearer {token}"}


@pytest.fixture
def target(tmp_path: Path) -> Iterator[Target]:
    """A fresh keyguard, limits off (the fuzzer is one busy client), with something to find.

    Account 1 holds keys of each kind; accounts 2 and 3 hold one key each, which
    account 1's keys must not reach.
    """
    runtime = Keyguard(
        Settings(
            database_url=f"sqlite:///{tmp_path}/keyguard.db",
            secret_key=TEST_SECRET,
            admin_token=SecretStr(ADMIN_TOKEN),
            auth_failures_per_minute=0,
            management_writes_per_minute=0,
        )
    )
    runtime.store.migrate()
    runtime.cache.refresh()
    service = runtime.service
    accounts = [service.create_account(name)[0].id for name in ("fuzz", "other", "another")]
    for body in (
        {"label": "plain"},
        {"label": "scoped", "scopes_enabled": True, "numbers": {"allow": "read"}},
        {"label": "restricted", "restricted": True, "permitted_ips": ["203.0.113.0/24"]},
        {"label": "inactive", "active": False},
    ):
        service.create_key(accounts[0], body)
    key_ids = [view.key.id for account in accounts for view in service.list_keys(account)]
    live = {"id": sorted(key_ids), "account_id": accounts}
    yield Target(create_app(keyguard=runtime), service, accounts[0], live)
    runtime.store.close()


def test_the_fuzzed_operations_are_the_documents(target: Target) -> None:
    schema = schemathesis.openapi.from_asgi("/openapi.json", target.app)
    documented = {
        f"{method.upper()} {path}"
        for path, item in schema.raw_schema["paths"].items()
        for method in item
        if method in HTTP_METHODS
    }
    generated = {result.ok().label for result in schema.get_all_operations()}  # type: ignore[union-attr]
    assert sorted(OPERATIONS) == sorted(documented)
    assert generated == documented


# Operations that take no parameter, no body and no credential: there is nothing to
# break, so they are fuzzed with valid requests only.
WITHOUT_INPUT = {"GET /healthz", "GET /metrics"}
CASES = [
    pytest.param(label, mode, id=f"{label}-{mode}")
    for label in OPERATIONS
    for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE)
    if mode is GenerationMode.POSITIVE or label not in WITHOUT_INPUT
]


@pytest.mark.slow
@pytest.mark.parametrize(("label", "mode"), CASES)
def test_no_generated_request_breaks_the_documented_contract(
    target: Target, label: str, mode: GenerationMode
) -> None:
    schema = schemathesis.openapi.from_asgi("/openapi.json", target.app)
    operation = schema.find_operation_by_label(label)
    assert operation is not None, f"{label} is not in the document"
    statuses: Counter[int] = Counter()
    fuzz_seed = os.environ.get(SEED_VARIABLE)

    @given(case=_requests(operation, mode, target.live))
    @_settings(fuzz_seed)
    def exercise(case: Any) -> None:
        response = case.call_and_validate(
            headers=target.headers(operation),
            checks=CHECKS,
            additional_checks=[wavix_error_body],
        )
        statuses[response.status_code] += 1

    if fuzz_seed is not None:
        exercise = seed(int(fuzz_seed))(exercise)
    try:
        exercise()
    except Exception as failure:
        if fuzz_seed is not None:
            failure.add_note(f"replay: {_replay(fuzz_seed)}")
        raise
    if mode is GenerationMode.POSITIVE:
        succeeded = sum(count for status, count in statuses.items() if 200 <= status < 300)
        assert succeeded, f"no valid request to {label} succeeded: {dict(statuses)}"


# Requests a fuzz run once found breaking the contract, sent in every run since.
FOUND = [
    pytest.param(
        "POST /admin/v1/accounts",
        {"body": {"name": "n" * 256}},
        (422, "Name is too long (maximum is 255 characters)"),
        id="account name of 256 characters",
    ),
]


@pytest.mark.parametrize(("label", "request_parts", "answer"), FOUND)
def test_requests_fuzzing_once_found_get_a_documented_answer(
    target: Target, label: str, request_parts: dict[str, Any], answer: tuple[int, str]
) -> None:
    schema = schemathesis.openapi.from_asgi("/openapi.json", target.app)
    operation = schema.find_operation_by_label(label)
    assert operation is not None, f"{label} is not in the document"
    case = operation.Case(media_type="application/json", **request_parts)
    response = case.call_and_validate(
        headers=target.headers(operation), checks=CHECKS, additional_checks=[wavix_error_body]
    )
    status, message = answer
    assert response.status_code == status
    assert response.json() == {"success": False, "message": message}


def test_a_throttled_forward_auth_answer_is_documented(tmp_path: Path) -> None:
    """The fuzzer runs with the limits off; their 429 must be in the document all the same."""
    runtime = Keyguard(
        Settings(
            database_url=f"sqlite:///{tmp_path}/keyguard.db",
            secret_key=TEST_SECRET,
            auth_failures_per_minute=1,
        )
    )
    runtime.store.migrate()
    runtime.cache.refresh()
    schema = schemathesis.openapi.from_asgi("/openapi.json", create_app(keyguard=runtime))
    operation = schema.find_operation_by_label("GET /auth/forward")
    assert operation is not None
    case = operation.Case(headers={"X-Original-Method": "GET", "X-Original-URI": "/v1/numbers"})
    unknown = {"Authorization": "Bearer kg_" + "0" * 38}
    assert case.call(headers=unknown).status_code == 401
    response = case.call_and_validate(
        headers=unknown, checks=CHECKS, additional_checks=[wavix_error_body]
    )
    assert response.status_code == 429
    [wait] = response.headers["retry-after"]
    assert wait.isdigit()
    runtime.store.close()


@st.composite
def _requests(
    draw: st.DrawFn, operation: Any, mode: GenerationMode, live: dict[str, list[int]]
) -> Any:
    """Generated requests; valid ones name an existing key or account half the time.

    A random id almost never exists, so without this the routes that take one
    would only ever answer 404.
    """
    case = draw(operation.as_strategy(generation_mode=mode))
    if mode is GenerationMode.POSITIVE:
        for name in re.findall(r"{(\w+)}", operation.path):
            existing = draw(st.none() | st.sampled_from(live[name]))
            if existing is not None:
                case.path_parameters = {**case.path_parameters, name: existing}
    return case


def _settings(fuzz_seed: str | None) -> settings:
    """Derandomised by default; more examples from a given seed under ``make fuzz``."""
    examples = EXAMPLES_PER_OPERATION
    if fuzz_seed is not None:
        examples = int(os.environ.get(EXAMPLES_VARIABLE, EXAMPLES_PER_OPERATION_WHEN_SEEDED))
    return settings(
        max_examples=examples,
        derandomize=fuzz_seed is None,
        database=None,
        deadline=None,
        suppress_health_check=list(HealthCheck),
    )


def _replay(fuzz_seed: str) -> str:
    examples = os.environ.get(EXAMPLES_VARIABLE, EXAMPLES_PER_OPERATION_WHEN_SEEDED)
    return f"make fuzz {SEED_VARIABLE}={fuzz_seed} {EXAMPLES_VARIABLE}={examples}"
