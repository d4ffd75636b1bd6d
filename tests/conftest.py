"""Fixtures shared by the whole suite.

Every test gets its own database in its own temporary folder, built by the real
migrations; nothing is shared between tests and nothing is cleaned up by deleting
rows.
"""

import os
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, NoReturn
from urllib.parse import unquote

import pytest
from alembic import command
from pydantic import SecretStr
from starlette.testclient import TestClient
from starlette.types import Message

from keyguard.api import create_app
from keyguard.config import Settings
from keyguard.runtime import Keyguard
from keyguard.storage import AuditQuery
from keyguard.storage.migrations import alembic_config
from keyguard.storage.sql import SQLStore

# At home in tests/server.py and tests/postgres.py, which the benchmarks share; tests
# take them from here too, beside the fixtures that make them.
from tests.postgres import postgres_schema as postgres_schema
from tests.server import Servers
from tests.server import Tenant as Tenant
from tests.server import bearer as bearer

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


BACKENDS = ["sqlite", "postgresql"]


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
def database(backend: str, folder: Path) -> Iterator[str]:
    """A database of its own on ``backend`` (one of :data:`BACKENDS`, or ``memory``).

    SQLite's lives in ``folder``. PostgreSQL runs when KEYGUARD_TEST_POSTGRES_URL
    names a server (``.ci/run`` sets it), in a fresh schema there; if the variable
    is set and the server does not answer, the test fails: it never skips silently.
    """
    if backend == "memory":
        yield "memory://"
    elif backend == "sqlite":
        yield f"sqlite:///{folder}/keyguard.db"
    else:
        server = os.environ.get(POSTGRES_URL_VARIABLE)
        if not server:
            missing(f"PostgreSQL: set {POSTGRES_URL_VARIABLE} to run this test on PostgreSQL")
        with postgres_schema(server) as url:
            yield url


@pytest.fixture(params=BACKENDS)
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """Each database backend the suite runs on, with a database of the test's own."""
    with database(request.param, tmp_path) as url:
        yield url


def settings_for(database_url: str, **overrides: Any) -> Settings:
    """The suite's settings: the test secret, snapshot and usage refreshed every 50 ms."""
    return Settings(
        database_url=database_url,
        secret_key=TEST_SECRET,
        refresh_interval=0.05,
        usage_flush_interval=0.05,
        **overrides,
    )


@pytest.fixture
def settings(database_url: str) -> Settings:
    return settings_for(database_url)


@pytest.fixture
def keyguard(settings: Settings) -> Iterator[Keyguard]:
    runtime = Keyguard(settings)
    runtime.store.migrate()
    yield runtime
    runtime.store.close()


def stored(keyguard: Keyguard, account_id: int, *, last_use: bool = True) -> tuple[object, ...]:
    """Everything the store holds for an account: the account, its keys, its audit trail;
    with ``last_use=False``, not when its keys were last used, which requests move."""
    store = keyguard.store
    keys = store.list_keys(account_id)
    held = keys if last_use else [(key.id, key.settings, key.revision) for key in keys]
    trail = store.list_audit(AuditQuery(account_id, limit=1000))
    return store.get_account(account_id), held, trail


def downgrade(store: SQLStore, revision: str) -> None:
    """Take a database back to ``revision``: its rows as an older keyguard left them."""
    with store.engine.begin() as connection:
        command.downgrade(alembic_config(connection), revision)


def make_tenant(keyguard: Keyguard, name: str) -> Tenant:
    account, view = keyguard.service.create_account(name)
    return Tenant(account.id, view.key.id, view.value)


@pytest.fixture
def tenant(keyguard: Keyguard) -> Tenant:
    return make_tenant(keyguard, "acme")


@pytest.fixture
def other_tenant(keyguard: Keyguard) -> Tenant:
    return make_tenant(keyguard, "globex")


def create_key(client: TestClient, owner: Tenant, **fields: Any) -> dict[str, Any]:
    """A new key of ``owner``'s account, made with its key: ``fields`` on top of the
    label "test key"; the key object answered."""
    response = client.post(
        "/v1/api-keys", json={"label": "test key", **fields}, headers=owner.headers
    )
    assert response.status_code == 200, response.text
    key: dict[str, Any] = response.json()
    return key


def list_keys(client: TestClient, owner: Tenant, label: str | None = None) -> list[Any]:
    """The account's keys, but for the caller's own last use, which each request moves."""
    params = {} if label is None else {"label": label}
    response = client.get("/v1/api-keys", params=params, headers=owner.headers)
    assert response.status_code == 200, response.text
    keys: list[dict[str, Any]] = response.json()
    return [key | {"last_used_at": None} if key["id"] == owner.key_id else key for key in keys]


@pytest.fixture
def servers(tmp_path: Path) -> Iterator[Servers]:
    """Real ``keyguard serve`` processes, every one ended when the test ends."""
    with Servers(tmp_path) as started:
        yield started


def raw_request(
    client: TestClient,
    method: str,
    raw_path: str,
    headers: list[tuple[bytes, bytes]],
    query: str = "",
) -> tuple[int, dict[str, str], bytes]:
    """Send one request straight to ``client``'s running app, as a server hands it over:
    for what HTTP clients never send (a lower-case method, a path they would normalise).

    The path arrives percent-decoded beside the raw bytes sent, as uvicorn gives it.
    """
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": unquote(raw_path),
        "raw_path": raw_path.encode("ascii"),
        "root_path": "",
        "query_string": query.encode("ascii"),
        "headers": [(b"host", b"testserver"), *headers],
        "client": (CLIENT_IP, 50000),
        "server": ("testserver", 80),
    }
    messages: list[Message] = []

    async def receive() -> Message:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: Message) -> None:
        messages.append(message)

    assert client.portal is not None, "the client runs the app's lifespan"
    client.portal.call(client.app, scope, receive, send)
    start, *bodies = messages
    status: int = start["status"]
    headers_out = {name.decode(): value.decode() for name, value in start["headers"]}
    return status, headers_out, b"".join(body.get("body", b"") for body in bodies)


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
