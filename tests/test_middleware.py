"""KeyguardMiddleware protecting another app in-process, as the README shows."""

import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request
from starlette.testclient import TestClient

from keyguard import KeyguardMiddleware
from keyguard.domain.network import parse_networks
from keyguard.runtime import Keyguard
from tests.conftest import Tenant


def _protected_app(keyguard: Keyguard, **options: Any) -> FastAPI:
    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        keyguard.start()
        yield
        keyguard.stop()

    app = FastAPI(lifespan=lifespan)
    app.add_middleware(
        KeyguardMiddleware,
        decider=keyguard.decider,
        **({"trusted_proxies": keyguard.trusted_proxies} | options),
        protect=lambda path: path.startswith("/v3/"),
    )

    @app.post("/v3/messages")
    async def send(request: Request) -> dict[str, object]:
        decision = request.state.keyguard
        return {"account": decision.account_id, "key": decision.key_id, "scope": decision.scope}

    @app.get("/public")
    async def public() -> dict[str, bool]:
        return {"public": True}

    return app


def test_allowed_request_reaches_the_handler_with_the_decision(
    keyguard: Keyguard, tenant: Tenant
) -> None:
    with TestClient(_protected_app(keyguard)) as client:
        response = client.post("/v3/messages", headers=tenant.headers)
    assert response.status_code == 200
    assert response.json() == {
        "account": tenant.account_id,
        "key": tenant.key_id,
        "scope": "messages:write",
    }


def test_refused_request_never_reaches_the_handler(keyguard: Keyguard, tenant: Tenant) -> None:
    scoped = keyguard.service.create_key(
        tenant.account_id, {"label": "r", "scopes_enabled": True, "messages": {"allow": "read"}}
    )
    with TestClient(_protected_app(keyguard)) as client:
        missing = client.post("/v3/messages")
        weak = client.post("/v3/messages", headers={"Authorization": f"Bearer {scoped.value}"})
    assert (missing.status_code, missing.json()) == (
        401,
        {"success": False, "error": True, "message": "Unauthorized"},
    )
    assert missing.headers["www-authenticate"] == "Bearer"
    assert (weak.status_code, weak.json()) == (
        403,
        {"success": False, "message": "API key scope messages: write access required"},
    )


def test_unprotected_paths_pass_without_a_key(keyguard: Keyguard) -> None:
    with TestClient(_protected_app(keyguard)) as client:
        assert client.get("/public").json() == {"public": True}


def test_behind_a_proxy_that_sets_x_real_ip_only_that_header_names_the_client(
    keyguard: Keyguard, tenant: Tenant
) -> None:
    restricted = keyguard.service.create_key(
        tenant.account_id, {"label": "r", "restricted": True, "permitted_ips": ["198.51.100.7"]}
    )
    app = _protected_app(
        keyguard, trusted_proxies=parse_networks(["10.9.0.1"]), client_ip_header="x-real-ip"
    )
    key = {"Authorization": f"Bearer {restricted.value}"}
    with TestClient(app, client=("10.9.0.1", 50000)) as proxy:
        believed = proxy.post("/v3/messages", headers=key | {"X-Real-IP": "198.51.100.7"})
        ignored = proxy.post("/v3/messages", headers=key | {"X-Forwarded-For": "198.51.100.7"})
    assert believed.status_code == 200, believed.text
    assert (ignored.status_code, ignored.json()) == (
        403,
        {"success": False, "message": "IP address 10.9.0.1 is not permitted for this API key"},
    )


def test_importing_the_middleware_loads_neither_the_database_layer_nor_the_service() -> None:
    """An app that embeds the middleware pays for the decision path only."""
    probe = (
        "import sys\n"
        "from keyguard import KeyguardMiddleware\n"
        "heavy = ('sqlalchemy', 'keyguard.service', 'fastapi')\n"
        "print(sorted(m for m in heavy if m in sys.modules))"
    )
    loaded = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True, timeout=30
    )
    assert loaded.stdout.strip() == "[]"
