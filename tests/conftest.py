"""Fixtures shared by the whole suite.

Every test gets its own database in its own temporary folder, built by the real
migrations; nothing is shared between tests and nothing is cleaned up by deleting
rows.
"""

import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from pydantic import SecretStr
from starlette.testclient import TestClient

from keyguard.api import create_app
from keyguard.config import Settings
from keyguard.runtime import Keyguard

TEST_SECRET = SecretStr("test-secret-" + "0123456789abcdef" * 3)
CLIENT_IP = "203.0.113.10"


@pytest.fixture(autouse=True)
def _clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """The developer's own KEYGUARD_* variables must not leak into tests."""
    for name in list(os.environ):
        if name.startswith("KEYGUARD_"):
            monkeypatch.delenv(name)


@pytest.fixture(params=["sqlite"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:  # noqa: ARG001
    """Each backend the suite runs on; PostgreSQL joins when it is configured."""
    return f"sqlite:///{tmp_path}/keyguard.db"


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


@dataclass(frozen=True)
class Tenant:
    """An account and its first, full-access key."""

    account_id: int
    key_id: int
    token: str

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}


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
