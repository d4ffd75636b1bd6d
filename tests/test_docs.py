"""``/docs`` in a real browser on a machine without internet access.

Debian's Chromium, driven by Playwright, opens ``/docs`` of a real server; every
request the page makes is recorded, and any that would leave the machine is
refused, so a page that needs a CDN fails here as it would offline.
"""

from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest
from playwright.sync_api import Page, Route, sync_playwright

from tests.conftest import missing
from tests.server import HOST, KeyguardServer, Servers

pytestmark = pytest.mark.slow

CHROMIUM = Path("/usr/bin/chromium")
RENDER_TIMEOUT_MS = 20_000


@pytest.fixture
def server(tmp_path: Path) -> Iterator[KeyguardServer]:
    with Servers(tmp_path) as servers:
        yield servers("docs").start()


@pytest.fixture
def page() -> Iterator[Page]:
    if not CHROMIUM.exists():
        missing(f"Chromium: no {CHROMIUM}; install it with apt-get install -y chromium")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM))
        try:
            yield browser.new_page()
        finally:
            browser.close()


def documented_operations(server: KeyguardServer) -> set[str]:
    document = httpx.get(f"{server.base_url}/openapi.json", timeout=10).json()
    return {
        f"{method.upper()} {path}"
        for path, item in document["paths"].items()
        for method in item
        if method in {"get", "post", "put", "patch", "delete", "head", "options", "trace"}
    }


def test_docs_render_every_operation_with_no_request_leaving_the_machine(
    server: KeyguardServer, page: Page
) -> None:
    requested: list[str] = []

    def local_only(route: Route) -> None:
        url = route.request.url
        requested.append(url)
        if urlsplit(url).hostname == HOST:
            route.continue_()
        else:
            route.abort("internetdisconnected")

    page.route("**/*", local_only)
    page.goto(f"{server.base_url}/docs", wait_until="networkidle", timeout=RENDER_TIMEOUT_MS)
    assert [url for url in requested if urlsplit(url).hostname != HOST] == []
    page.wait_for_selector(".opblock-summary", timeout=RENDER_TIMEOUT_MS)
    shown = page.eval_on_selector_all(
        ".opblock-summary",
        "blocks => blocks.map(b => b.querySelector('.opblock-summary-method').textContent"
        " + ' ' + b.querySelector('.opblock-summary-path').dataset.path)",
    )

    assert f"{server.base_url}/openapi.json" in requested
    assert set(shown) == documented_operations(server)


def test_docs_assets_are_served_by_keyguard_and_others_are_not(server: KeyguardServer) -> None:
    with httpx.Client(base_url=server.base_url, timeout=10) as client:
        script = client.get("/docs/assets/swagger-ui-bundle.js")
        style = client.get("/docs/assets/swagger-ui.css")
        unknown = client.get("/docs/assets/index.html")

    assert script.status_code == 200
    assert script.headers["content-type"].startswith("text/javascript")
    assert "SwaggerUIBundle" in script.text
    assert style.status_code == 200
    assert style.headers["content-type"].startswith("text/css")
    assert (unknown.status_code, unknown.json()) == (
        404,
        {"success": False, "message": "Route not found"},
    )
