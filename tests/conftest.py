"""Fixtures shared by the whole suite.

Every test gets its own database in its own temporary folder, built by the real
migrations; nothing is shared between tests and nothing is cleaned up by deleting
rows.
"""

import os
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import NoReturn

import psycopg
import pytest
from alembic import command
from pydantic import SecretStr
from starlette.testclient import TestClient

from keyguard.api import create_app
from keyguard.config import Settings
from keyguard.runtime import Keyguard
from keyguard.storage.migrations import alembic_config
from keyguard.storage.sql import SQLStore

TEST_SECRET = SecretStr("test-secret-" + "0123456789abcdef" * 3)
CLIENT_IP = "203.0.113.10"


POSTGRES_URL_VARIABLE = "KEYGUARD_TEST_POSTGRES_URL"
REQUIRE_ALL_VARIABLE = "KEYGUARD_TEST_REQUIRE_ALL"


def missing(part: str) -> NoReturn:
    """A test needs ``part`` (PostgreSQL, nginx …) and this machine lacks it.

    On a developer's bare machine the test is skipped with the reason in the
    summary; where KEYGUARD_TEST_REQUIRE_ALL is set (``.ci/run`` sets it), the
    test fails instead, so that nothing is ever skipped silently in CI.
    """
    if os.environ.get(REQUIRE_ALL_VARIABLE):
        pytest.fail(f"{part} ({REQUIRE_ALL_VARIABLE} is set, so nothing may be skipped)")
    pytest.skip(part)


@pytest.fixture(autouse=True)
def _clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """The developer's own KEYGUARD_* variables must not leak into tests."""
    for name in list(os.environ):
        if name.startswith("KEYGUARD_") and not name.startswith("KEYGUARD_TEST_"):
            monkeypatch.delenv(name)


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """Each backend the suite runs on, with a database of the test's own.

    PostgreSQL runs when KEYGUARD_TEST_POSTGRES_URL names a server (``.ci/run``
    sets it); each test gets a fresh schema there. If the variable is set and the
    server does not answer, the tests fail: they never skip silently.
    """
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path}/keyguard.db"
        return
    server = os.environ.get(POSTGRES_URL_VARIABLE)
    if not server:
        missing(f"PostgreSQL: set {POSTGRES_URL_VARIABLE} to run this test on PostgreSQL")
    with postgres_schema(server) as url:
        yield url


REDIS_URL_VARIABLE = "KEYGUARD_TEST_REDIS_URL"


@pytest.fixture
def redis_url() -> str:
    """The Redis server the rate-limit tests share counts through (``.ci/run`` sets it)."""
    url = os.environ.get(REDIS_URL_VARIABLE)
    if not url:
        missing(f"Redis: set {REDIS_URL_VARIABLE} (e.g. redis://127.0.0.1:6379/0) to run this test")
    return url


@pytest.fixture
def redis_prefix() -> str:
    """A key prefix of the test's own, so that tests sharing one Redis never meet."""
    return f"keyguard-test-{uuid.uuid4().hex[:12]}:"


@contextmanager
def postgres_schema(server: str) -> Iterator[str]:
    """A throwaway schema on ``server``; the URL's connections use only it."""
    name = f"kg_test_{uuid.uuid4().hex[:12]}"
    conninfo = server.replace("postgresql+psycopg://", "postgresql://")
    with psycopg.connect(conninfo, autocommit=True, connect_timeout=5) as admin:
        admin.execute(f'CREATE SCHEMA "{name}"')
    separator = "&" if "?" in server else "?"
    yield f"{server}{separator}options=-csearch_path%3D{name}&application_name={name}"
    with psycopg.connect(conninfo, autocommit=True, connect_timeout=5) as admin:
        admin.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = %s",
            (name,),
        )
        admin.execute(f'DROP SCHEMA "{name}" CASCADE')


@pytest.fixture
def settings(database_url: str) -> Settings:
    return Settings(
        database_url=database_url,
        secret_key=TEST_SECRET,
        refresh_interval=0.05,
        usage_flush_interval=0.05,
    )


@pytest.fixture
def keyguard(settings: Settings) -> Iterator[Keyguard]:
    runtime = Keyguard(settings)
    runtime.store.migrate()
    yield runtime
    runtime.store.close()


def downgrade(store: SQLStore, revision: str) -> None:
    """Take a database back to ``revision``: its rows as an older keyguard left them."""
    with store.engine.begin() as connection:
        command.downgrade(alembic_config(connection), revision)


def bearer(token: str) -> dict[str, str]:
    """The ``Authorization`` header that presents ``token``."""
    return {"Authorization": f"Bearer {token}"}


@dataclass(frozen=True)
class Tenant:
    """An account and its first, full-access key."""

    account_id: int
    key_id: int
    token: str

    @property
    def headers(self) -> dict[str, str]:
        return bearer(self.token)


def make_tenant(keyguard: Keyguard, name: str) -> Tenant:
    account, view = keyguard.service.create_account(name)
    return Tenant(account.id, view.key.id, view.value)


@pytest.fixture
def tenant(keyguard: Keyguard) -> Tenant:
    return make_tenant(keyguard, "acme")


@pytest.fixture
def other_tenant(keyguard: Keyguard) -> Tenant:
    return make_tenant(keyguard, "globex")


ClientFactory = Callable[[str], TestClient]


@pytest.fixture
def client_from(keyguard: Keyguard) -> Iterator[ClientFactory]:
    """Clients of one running app, each connecting from the address given."""
    app = create_app(keyguard=keyguard)
    clients: list[TestClient] = []

    def connect(ip: str) -> TestClient:
        client = TestClient(app, client=(ip, 50000))
        if not clients:
            client.__enter__()  # the first client runs the app's lifespan
        clients.append(client)
        return client

    yield connect
    if clients:
        clients[0].__exit__(None, None, None)


@pytest.fixture
def client(client_from: ClientFactory) -> TestClient:
    return client_from(CLIENT_IP)
