"""Fuzzing keyguard's own OpenAPI document: every operation, valid and invalid input.

Each operation gets a bounded number of generated requests, schema-valid and
schema-breaking, sent in-process with a full-access key (the operator token for
``/admin/v1``). A run fails on any 5xx, any response that breaks the documented
schema, status code or content type, and any error body that is not Wavix's.
"""

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from pydantic import SecretStr
from schemathesis.checks import not_a_server_error
from schemathesis.generation import GenerationMode
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from keyguard.api import create_app
from keyguard.config import Settings
from keyguard.runtime import Keyguard
from tests.conftest import TEST_SECRET

EXAMPLES_PER_OPERATION = 25
ADMIN_TOKEN = "operator-" + "0" * 32
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
]


def wavix_error_body(_ctx: Any, response: Any, _case: Any) -> bool:
    """Every 4xx and 5xx carries a Wavix body, and nothing else."""
    if response.status_code < 400:
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


@pytest.fixture
def fuzzed(tmp_path: Path) -> Iterator[tuple[Any, str]]:
    """An app with limits off (the fuzzer is one busy client) and a full-access key."""
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
    _account, view = runtime.service.create_account("fuzz")
    yield create_app(keyguard=runtime), view.value
    runtime.store.close()


@pytest.mark.slow
@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE])
def test_no_generated_request_breaks_the_documented_contract(
    fuzzed: tuple[Any, str], mode: GenerationMode
) -> None:
    app, key = fuzzed
    schema = schemathesis.openapi.from_asgi("/openapi.json", app)
    operations = [result.ok() for result in schema.get_all_operations()]  # type: ignore[union-attr]
    assert len(operations) >= 15
    for operation in operations:
        token = ADMIN_TOKEN if operation.path.startswith("/admin/") else key
        exercise = _exercise(operation, mode, {"Authorization": f"Bearer {token}"})
        try:
            exercise()
        except Exception as failure:
            failure.add_note(f"operation: {operation.label} ({mode.value} data)")
            raise


def _exercise(operation: Any, mode: GenerationMode, headers: dict[str, str]) -> Any:
    """A Hypothesis test of one operation: generated requests, every check."""

    @given(case=operation.as_strategy(generation_mode=mode))
    @settings(
        max_examples=EXAMPLES_PER_OPERATION,
        deadline=None,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    def exercise(case: Any) -> None:
        case.call_and_validate(headers=headers, checks=CHECKS, additional_checks=[wavix_error_body])

    return exercise
