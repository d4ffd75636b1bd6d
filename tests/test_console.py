"""The web console in a real browser, against a live keyguard, on SQLite and PostgreSQL.

Debian's Chromium, driven by Playwright, uses the console the way a tenant does:
by the labels on its controls. After each action the test reads the API's JSON,
or asks ``/auth/forward``, to see that the console did what the API would have
done. One server per backend serves the whole module (with
KEYGUARD_UNKNOWN_ROUTES=deny, so the console works where unknown routes are
refused); each test works in an account of its own, in a fresh browser context.
"""

import re
import time
from collections.abc import Callable, Iterator
from itertools import count
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
from axe_playwright_python.sync_playwright import Axe
from playwright.sync_api import Browser, Page, Route, ViewportSize, expect, sync_playwright
from pydantic import SecretStr

from keyguard.api.app import create_app
from keyguard.config import Settings
from keyguard.domain.counts import OUTCOMES
from keyguard.domain.routes import UnknownRoutes
from keyguard.runtime import Keyguard
from tests.conftest import POSTGRES_URL_VARIABLE, TEST_SECRET, missing, postgres_schema
from tests.server import HOST
from tests.test_differential import UvicornThread

pytestmark = pytest.mark.slow

CHROMIUM = Path("/usr/bin/chromium")
ADMIN_TOKEN = "console-test-operator-token-0123456789abcdef"
PROPAGATION = 1.0  # seconds: what the issue allows for a change to reach every gate
NARROW: ViewportSize = {"width": 390, "height": 844}
TIMEOUT_MS = 10_000
FLUSH = 0.2  # seconds between usage flushes: counts reach the usage page this soon


class Live:
    """A running keyguard and an operator's client for it."""

    def __init__(self, base_url: str) -> None:
        self.base_url = base_url
        self.client = httpx.Client(base_url=base_url, timeout=10)
        self._names = count(1)

    def __enter__(self) -> "Live":
        return self

    def __exit__(self, *_exc: object) -> None:
        self.client.close()

    def account(self) -> tuple[int, str]:
        """A new account: its id and its first, full-access key."""
        answer = self.client.post(
            "/admin/v1/accounts",
            json={"name": f"Tenant {next(self._names)}"},
            headers=operator(),
        )
        answer.raise_for_status()
        created = answer.json()
        return created["account"]["id"], created["api_key"]["value"]

    def api(self, key: str, method: str, path: str, **kwargs: Any) -> httpx.Response:
        return self.client.request(method, path, headers=bearer(key), **kwargs)

    def key(self, key: str, key_id: int) -> dict[str, Any]:
        answer = self.api(key, "GET", f"/v1/api-keys/{key_id}")
        answer.raise_for_status()
        found: dict[str, Any] = answer.json()
        return found

    def forward(self, key: str) -> int:
        """What the gate answers for ``key`` on a route of the route map."""
        original = {"X-Original-Method": "GET", "X-Original-URI": "/v1/api-keys"}
        return self.client.get("/auth/forward", headers={**bearer(key), **original}).status_code

    def counted(self, key: str, key_id: int) -> dict[str, int]:
        """The key's counts of the last hour by outcome, as the API's usage endpoint adds up."""
        path = f"/v1/api-keys/{key_id}/usage?granularity=minute&from={hour_ago()}"
        answer = self.api(key, "GET", path)
        answer.raise_for_status()
        items = answer.json()["items"]
        return {name: sum(item[name] for item in items) for name in OUTCOMES}


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def operator() -> dict[str, str]:
    return bearer(ADMIN_TOKEN)


def hour_ago() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() - 3600))


def within(seconds: float, condition: Callable[[], bool]) -> float:
    """How long ``condition`` took to hold; fails after ``seconds``."""
    started = time.monotonic()
    while not condition():
        elapsed = time.monotonic() - started
        assert elapsed < seconds, f"not within {seconds} s"
        time.sleep(0.02)
    return time.monotonic() - started


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def live(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Live]:
    if request.param == "sqlite":
        folder = tmp_path_factory.mktemp("console")
        yield from _serve(f"sqlite:///{folder}/keyguard.db")
        return
    server = _postgres_server()
    with postgres_schema(server) as url:
        yield from _serve(url)


def _postgres_server() -> str:
    import os

    server = os.environ.get(POSTGRES_URL_VARIABLE)
    if not server:
        missing(f"PostgreSQL: set {POSTGRES_URL_VARIABLE} to run this test on PostgreSQL")
    return server


def _serve(database_url: str) -> Iterator[Live]:
    settings = Settings(
        database_url=database_url,
        secret_key=TEST_SECRET,
        admin_token=SecretStr(ADMIN_TOKEN),
        unknown_routes=UnknownRoutes.DENY,
        # The failure limit counts per client: tests that probe it say they come
        # from an address of their own, through the trusted proxy 127.0.0.1.
        trusted_proxies=["127.0.0.1"],
        auth_failures_per_minute=5,
        management_writes_per_minute=0,
        usage_flush_interval=FLUSH,
    )
    runtime = Keyguard(settings)
    runtime.store.migrate()
    runtime.start()
    server = UvicornThread(create_app(keyguard=runtime)).start()
    try:
        with Live(f"http://{server.address}") as started:
            yield started
    finally:
        server.stop()
        runtime.stop()


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    if not CHROMIUM.exists():
        missing(f"Chromium: no {CHROMIUM}; install it with apt-get install -y chromium")
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=str(CHROMIUM))
        yield launched
        launched.close()


@pytest.fixture
def page(browser: Browser, live: Live) -> Iterator[Page]:
    context = browser.new_context(base_url=live.base_url, viewport=NARROW)
    context.grant_permissions(["clipboard-read", "clipboard-write"], origin=live.base_url)
    context.set_default_timeout(TIMEOUT_MS)
    opened = context.new_page()
    opened.route("**/*", _local_only)
    yield opened
    context.close()


def _local_only(route: Route) -> None:
    """The console makes no third-party request: any would fail here."""
    if urlsplit(route.request.url).hostname == HOST:
        route.continue_()
    else:
        route.abort("internetdisconnected")
        pytest.fail(f"third-party request: {route.request.url}")


def sign_in(page: Page, key: str) -> None:
    page.goto("/console/")
    page.get_by_label("API key").fill(key)
    page.get_by_role("button", name="Sign in").click()
    expect(page.get_by_role("heading", name="API keys")).to_be_visible()


def create_in_console(page: Page, label: str, **choices: Any) -> tuple[int, str]:
    """Create a key through the form; its id and the secret shown once."""
    page.get_by_role("link", name="Create key").click()
    page.get_by_label("Label").fill(label)
    if "ips" in choices:
        page.get_by_label("Restrict to IP addresses").check()
        page.get_by_label("Permitted IPs").fill("\n".join(choices["ips"]))
    if "scopes" in choices:
        page.get_by_label("Limit scopes").check()
        for group, level in choices["scopes"].items():
            page.get_by_role("group", name=group, exact=True).get_by_label(level).check()
    if "ratelimit" in choices:
        fill_rate_limit(page, *choices["ratelimit"])
    if "credits" in choices:
        fill_credits(page, *choices["credits"])
    page.get_by_role("button", name="Create key").click()
    secret = page.get_by_label("Secret key").input_value()
    match = re.search(r"/console/keys/(\d+)/secret$", page.url)
    assert match is not None, page.url
    return int(match.group(1)), secret


def fill_rate_limit(page: Page, requests: str, seconds: str) -> None:
    fieldset = page.get_by_role("group", name="Rate limit")
    fieldset.get_by_label("Requests").fill(requests)
    fieldset.get_by_label("Seconds").fill(seconds)


def fill_credits(page: Page, left: str, amount: str, interval: str) -> None:
    fieldset = page.get_by_role("group", name="Credits")
    fieldset.get_by_label("Credits left").fill(left)
    fieldset.get_by_label("Refill amount").fill(amount)
    fieldset.get_by_label("Refill interval").select_option(interval)


def row(page: Page, label: str) -> Any:
    return page.get_by_role("row").filter(has=page.get_by_role("rowheader", name=label, exact=True))


# -- rate limits ---------------------------------------------------------------------------


def test_a_rate_limit_set_in_the_form_is_what_the_api_returns_and_clearing_it_removes_it(
    page: Page, live: Live
) -> None:
    _, key = live.account()
    sign_in(page, key)
    key_id, _ = create_in_console(page, "metered", ratelimit=("120", "60"))
    assert live.key(key, key_id)["ratelimit"] == {"limit": 120, "duration": 60}

    page.get_by_role("link", name="Done").click()
    expect(row(page, "metered")).to_contain_text("120 per minute")
    row(page, "metered").get_by_role("link", name="Edit").click()
    fieldset = page.get_by_role("group", name="Rate limit")
    expect(fieldset.get_by_label("Requests")).to_have_value("120")
    expect(fieldset.get_by_label("Seconds")).to_have_value("60")
    fill_rate_limit(page, "5", "90")
    page.get_by_role("button", name="Save key").click()
    assert live.key(key, key_id)["ratelimit"] == {"limit": 5, "duration": 90}
    expect(row(page, "metered")).to_contain_text("5 per 90 seconds")

    row(page, "metered").get_by_role("link", name="Edit").click()
    fill_rate_limit(page, "", "")
    page.get_by_role("button", name="Save key").click()
    expect(page.get_by_role("status")).to_have_text("The key was saved.")
    assert live.key(key, key_id)["ratelimit"] is None
    expect(row(page, "metered")).to_contain_text("None")


@pytest.mark.parametrize(
    ("requests", "seconds"),
    [("5", "90000"), ("2000000000", "60"), ("0", "60"), ("5", "")],
    ids=["too-long", "too-many", "zero", "half-empty"],
)
def test_a_bad_rate_limit_shows_the_apis_message_next_to_the_field_and_changes_nothing(
    page: Page, live: Live, requests: str, seconds: str
) -> None:
    _, key = live.account()
    made = live.api(key, "POST", "/v1/api-keys", json={"label": "limited"}).json()
    body = {
        "label": "limited",
        "ratelimit": {
            "limit": int(requests) if requests else None,
            "duration": int(seconds) if seconds else None,
        },
    }
    refused = live.api(key, "POST", "/v1/api-keys", json=body)
    assert refused.status_code in (400, 422)
    sign_in(page, key)

    row(page, "limited").get_by_role("link", name="Edit").click()
    # The browser's own checks would stop some values first: the API is the judge here.
    page.locator("form.key-form").evaluate("form => form.noValidate = true")
    fill_rate_limit(page, requests, seconds)
    page.get_by_role("button", name="Save key").click()

    expect(page.locator("#ratelimit-error")).to_have_text(refused.json()["message"])
    fieldset = page.get_by_role("group", name="Rate limit")
    expect(fieldset.get_by_label("Requests")).to_have_attribute("aria-invalid", "true")
    expect(fieldset.get_by_label("Requests")).to_have_value(requests)
    assert live.key(key, made["id"])["ratelimit"] is None
    assert len(live.api(key, "GET", "/v1/api-keys").json()) == 2


# -- usage credits -------------------------------------------------------------------------


def credits_of(shown: dict[str, Any]) -> str:
    """How the keys table words the credits of a key object the API returned."""
    if shown["remaining"] is None:
        return "Unlimited"
    left = f"{shown['remaining']:,} left"
    refill = shown["refill"]
    return left if refill is None else f"{left}, {refill['amount']:,} {refill['interval']}"


def test_credits_set_in_the_form_are_what_the_api_returns_and_emptying_them_removes_them(
    page: Page, live: Live
) -> None:
    _, key = live.account()
    sign_in(page, key)
    key_id, _ = create_in_console(page, "metered", credits=("500", "500", "daily"))
    shown = live.key(key, key_id)
    assert shown["refill"] == {"amount": 500, "interval": "daily"}
    assert shown["remaining"] in (499, 500)  # this process may lease one at once

    page.get_by_role("link", name="Done").click()
    expect(row(page, "metered")).to_contain_text(credits_of(shown))
    row(page, "metered").get_by_role("link", name="Edit").click()
    fieldset = page.get_by_role("group", name="Credits")
    expect(fieldset.get_by_label("Credits left")).to_have_value(str(shown["remaining"]))
    expect(fieldset.get_by_label("Refill amount")).to_have_value("500")
    expect(fieldset.get_by_label("Refill interval")).to_have_value("daily")
    fill_credits(page, "1200", "2000", "monthly")
    page.get_by_role("button", name="Save key").click()
    shown = live.key(key, key_id)
    assert shown["refill"] == {"amount": 2000, "interval": "monthly"}
    assert shown["remaining"] in (1199, 1200)
    expect(row(page, "metered")).to_contain_text(credits_of(shown))

    row(page, "metered").get_by_role("link", name="Edit").click()
    fill_credits(page, "", "", "")
    page.get_by_role("button", name="Save key").click()
    expect(page.get_by_role("status")).to_have_text("The key was saved.")
    shown = live.key(key, key_id)
    assert (shown["remaining"], shown["refill"]) == (None, None)
    expect(row(page, "metered")).to_contain_text("Unlimited")


def test_saving_the_form_leaves_credits_it_did_not_change_as_the_api_holds_them(
    page: Page, live: Live
) -> None:
    _, key = live.account()
    body = {"label": "spent", "remaining": 900, "refill": {"amount": 900, "interval": "daily"}}
    made = live.api(key, "POST", "/v1/api-keys", json=body).json()
    sign_in(page, key)
    row(page, "spent").get_by_role("link", name="Edit").click()
    # Meanwhile the credits change (as requests spend them): the open form is stale.
    path = f"/v1/api-keys/{made['id']}"
    live.api(key, "PATCH", path, json={"remaining": 7}).raise_for_status()
    before = live.key(key, made["id"])
    page.get_by_label("Label").fill("spent twice")
    page.get_by_role("button", name="Save key").click()
    expect(page.get_by_role("status")).to_have_text("The key was saved.")
    after = live.key(key, made["id"])
    assert after["label"] == "spent twice"
    assert (after["remaining"], after["refill"]) == (before["remaining"], before["refill"])
    assert after["remaining"] in (6, 7)


@pytest.mark.parametrize(
    ("left", "amount", "interval", "sent"),
    [
        ("-1", "", "", {"remaining": -1}),
        ("2.5", "", "", {"remaining": 2.5}),
        ("1000000000001", "", "", {"remaining": 1_000_000_000_001}),
        ("100", "50", "", {"remaining": 100, "refill": {"amount": 50, "interval": ""}}),
    ],
    ids=["negative", "fraction", "huge", "amount-without-interval"],
)
def test_bad_credits_show_the_apis_message_next_to_the_field_and_change_nothing(
    page: Page, live: Live, left: str, amount: str, interval: str, sent: dict[str, Any]
) -> None:
    _, key = live.account()
    made = live.api(key, "POST", "/v1/api-keys", json={"label": "allowance", "remaining": 9})
    key_id = made.json()["id"]
    before = live.key(key, key_id)
    refused = live.api(key, "PATCH", f"/v1/api-keys/{key_id}", json=sent)
    assert refused.status_code in (400, 422)
    sign_in(page, key)

    row(page, "allowance").get_by_role("link", name="Edit").click()
    # The browser's own checks would stop some values first: the API is the judge here.
    page.locator("form.key-form").evaluate("form => form.noValidate = true")
    fill_credits(page, left, amount, interval)
    page.get_by_role("button", name="Save key").click()

    expect(page.locator("#credits-error")).to_have_text(refused.json()["message"])
    fieldset = page.get_by_role("group", name="Credits")
    expect(fieldset.get_by_label("Credits left")).to_have_attribute("aria-invalid", "true")
    expect(fieldset.get_by_label("Credits left")).to_have_value(left)
    expect(fieldset.get_by_label("Refill amount")).to_have_value(amount)
    assert live.key(key, key_id) == before
    assert len(live.api(key, "GET", "/v1/api-keys").json()) == 2


def test_the_keyboard_alone_sets_credits_and_a_refill(page: Page, live: Live) -> None:
    _, key = live.account()
    sign_in(page, key)
    page.goto("/console/keys/new")
    page.get_by_label("Label").focus()
    page.keyboard.type("typed")

    def tab_to(name: str) -> None:
        for _ in range(40):
            page.keyboard.press("Tab")
            if (
                page.evaluate("document.activeElement.id || document.activeElement.textContent")
                == name
            ):
                return
        pytest.fail(f"Tab never reached {name}")

    tab_to("remaining")
    page.keyboard.type("300")
    tab_to("refill_amount")
    page.keyboard.type("250")
    tab_to("refill_interval")
    page.keyboard.press("ArrowDown")
    page.keyboard.press("ArrowDown")
    expect(page.get_by_label("Refill interval")).to_have_value("monthly")
    tab_to("Create key")
    page.keyboard.press("Enter")
    expect(page.get_by_label("Secret key")).to_be_visible()
    match = re.search(r"/console/keys/(\d+)/secret$", page.url)
    assert match is not None, page.url
    shown = live.key(key, int(match.group(1)))
    assert shown["refill"] == {"amount": 250, "interval": "monthly"}
    assert shown["remaining"] in (299, 300)


# -- usage ---------------------------------------------------------------------------------


def test_the_usage_page_shows_the_requests_sent_through_forward_auth(
    page: Page, live: Live
) -> None:
    _, key = live.account()
    body = {"label": "busy", "ratelimit": {"limit": 2, "duration": 3600}}
    busy = live.api(key, "POST", "/v1/api-keys", json=body).json()
    quiet = live.api(key, "POST", "/v1/api-keys", json={"label": "quiet"}).json()
    answers = [live.forward(busy["value"]) for _ in range(5)] + [live.forward(quiet["value"])]
    assert answers == [200, 200, 429, 429, 429, 200]
    sent = {**dict.fromkeys(OUTCOMES, 0), "allowed": 2, "rate_limited": 3}
    within(10 * FLUSH + 5, lambda: live.counted(key, busy["id"]) == sent)
    sign_in(page, key)

    expect(row(page, "busy").get_by_role("img")).to_have_accessible_name(
        "5 requests in the last 24 hours"
    )
    expect(row(page, "quiet").get_by_role("img")).to_have_accessible_name(
        "1 request in the last 24 hours"
    )
    row(page, "busy").get_by_role("link", name="Usage").click()
    expect(page.get_by_role("heading", level=1)).to_have_text("Usage of “busy”")
    for window, heading in (
        ("Last hour", "Last hour, per minute"),
        ("Last day", "Last day, per minute"),
        ("Last 7 days", "Last 7 days, per hour"),
        ("Last 90 days", "Last 90 days, per day"),
    ):
        page.get_by_role("navigation", name="Span").get_by_role("link", name=window).click()
        expect(page.get_by_role("heading", level=2)).to_have_text(heading)
        assert shown_totals(page) == {**sent, "total": 5}, window
        chart = page.get_by_role("img")
        expect(chart).to_have_accessible_name(re.compile(r"^Requests of busy per \w+"))
        expect(chart).to_have_accessible_description(
            re.compile("5 requests in all, 2 allowed, 0 unauthorized .* 3 rate limited")
        )
    page.get_by_text("Counts per day").click()
    cells = page.get_by_role("region", name="Counts per day").get_by_role("row").nth(1)
    expect(cells).to_contain_text(time.strftime("%Y-%m-%d 00:00:00 UTC", time.gmtime()))


def shown_totals(page: Page) -> dict[str, int]:
    cells = page.locator("table.totals td[data-outcome]")
    return {
        str(cell.get_attribute("data-outcome")): int(cell.inner_text().replace(",", ""))
        for cell in cells.all()
    }


def test_another_accounts_usage_page_is_not_found(page: Page, live: Live) -> None:
    _, owner = live.account()
    theirs = live.api(owner, "POST", "/v1/api-keys", json={"label": "theirs"}).json()
    _, key = live.account()
    sign_in(page, key)
    answer = page.goto(f"/console/keys/{theirs['id']}/usage")
    assert answer is not None
    assert answer.status == 404
    expect(page.get_by_role("alert")).to_have_text("This account has no such key.")
    assert "theirs" not in page.content()


def test_the_keyboard_alone_reaches_a_keys_usage_and_its_spans(page: Page, live: Live) -> None:
    _, key = live.account()
    sign_in(page, key)
    for _ in range(40):
        page.keyboard.press("Tab")
        if page.evaluate("document.activeElement.textContent") == "Usage":
            break
    page.keyboard.press("Enter")
    expect(page.get_by_role("heading", level=1)).to_contain_text("Usage of")
    for _ in range(20):
        page.keyboard.press("Tab")
        if page.evaluate("document.activeElement.textContent") == "Last 7 days":
            break
    page.keyboard.press("Enter")
    expect(page.get_by_role("heading", level=2)).to_have_text("Last 7 days, per hour")


# -- sign-in and sessions ------------------------------------------------------------------


def test_sign_in_then_create_with_scopes_and_ips_sets_what_the_api_returns(
    page: Page, live: Live
) -> None:
    _, key = live.account()
    sign_in(page, key)

    key_id, secret = create_in_console(
        page,
        "billing sync",
        ips=["203.0.113.7", "2001:db8::/48", "198.51.100.0/24"],
        scopes={"messages": "write", "numbers": "read"},
    )

    shown = live.key(key, key_id)
    assert shown["label"] == "billing sync"
    assert shown["active"] is True
    assert shown["restricted"] is True
    assert shown["permitted_ips"] == ["203.0.113.7", "2001:db8::/48", "198.51.100.0/24"]
    assert shown["scopes_enabled"] is True
    assert shown["messages"] == {"allow": "write"}
    assert shown["numbers"] == {"allow": "read"}
    assert shown["calls"] == {"allow": "none"}
    assert shown["value"] == secret


def test_the_secret_is_shown_once_and_copied_and_a_reload_does_not_create_again(
    page: Page, live: Live
) -> None:
    _, key = live.account()
    sign_in(page, key)
    key_id, secret = create_in_console(page, "shown once")
    expect(page.get_by_text("will not be shown again")).to_be_visible()

    page.get_by_role("button", name="Copy").click()
    expect(page.get_by_role("status")).to_have_text("Copied to the clipboard.")
    assert page.evaluate("navigator.clipboard.readText()") == secret

    page.reload()
    assert page.url.endswith("/console/keys?done=shown")
    assert secret not in page.content()
    expect(row(page, "shown once")).to_contain_text(secret[-4:])
    labels = [item["label"] for item in live.api(key, "GET", "/v1/api-keys").json()]
    assert labels.count("shown once") == 1
    page.go_back()
    assert secret not in page.content()
    assert live.key(key, key_id)["label"] == "shown once"


def test_validation_errors_appear_next_to_the_field_with_the_apis_message(
    page: Page, live: Live
) -> None:
    _, key = live.account()
    sign_in(page, key)
    page.get_by_role("link", name="Create key").click()
    page.get_by_label("Label").fill("bad ips")
    page.get_by_label("Restrict to IP addresses").check()
    page.get_by_label("Permitted IPs").fill("not-an-address")
    page.get_by_role("button", name="Create key").click()

    field = page.get_by_label("Permitted IPs")
    expect(field).to_have_attribute("aria-invalid", "true")
    expect(page.locator("#permitted_ips-error")).to_have_text("Ip has incorrect format")
    expect(page.get_by_label("Label")).to_have_value("bad ips")
    assert len(live.api(key, "GET", "/v1/api-keys").json()) == 1


def test_edit_then_deactivate_is_refused_by_forward_auth_within_a_second(
    page: Page, live: Live
) -> None:
    _, key = live.account()
    made = live.api(key, "POST", "/v1/api-keys", json={"label": "worker"}).json()
    sign_in(page, key)

    row(page, "worker").get_by_role("link", name="Edit").click()
    expect(page.get_by_label("Label")).to_have_value("worker")
    page.get_by_label("Label").fill("worker two")
    page.get_by_label("Limit scopes").check()
    page.get_by_role("group", name="calls", exact=True).get_by_label("read").check()
    page.get_by_role("button", name="Save key").click()
    expect(page.get_by_role("status")).to_have_text("The key was saved.")
    shown = live.key(key, made["id"])
    assert (shown["label"], shown["scopes_enabled"], shown["calls"]) == (
        "worker two",
        True,
        {"allow": "read"},
    )
    assert live.forward(made["value"]) == 403  # scoped: key listing needs full access

    row(page, "worker two").get_by_role("button", name="Deactivate").click()
    expect(page.get_by_role("status")).to_have_text("The key was deactivated.")
    within(PROPAGATION, lambda: live.forward(made["value"]) == 401)
    assert live.key(key, made["id"])["active"] is False
    row(page, "worker two").get_by_role("button", name="Activate").click()
    assert live.key(key, made["id"])["active"] is True


def test_roll_shows_the_new_secret_once_and_delete_asks_first(page: Page, live: Live) -> None:
    _, key = live.account()
    made = live.api(key, "POST", "/v1/api-keys", json={"label": "old one"}).json()
    sign_in(page, key)

    row(page, "old one").get_by_role("link", name="Roll").click()
    page.get_by_label("Grace period").select_option("0")
    page.get_by_role("button", name="Roll key").click()
    new_secret = page.get_by_label("Secret key").input_value()
    new_id = int(page.url.split("/")[-2])
    assert live.key(key, new_id)["rolled_from"] == made["id"]
    within(PROPAGATION, lambda: live.forward(made["value"]) == 401)
    assert live.forward(new_secret) == 200

    page.get_by_role("link", name="Done").click()
    row(page, "old one").filter(has_text="active").get_by_role("link", name="Delete").click()
    expect(page.get_by_role("heading")).to_contain_text("Delete key")
    page.get_by_role("button", name="Delete key").click()
    expect(page.get_by_role("status")).to_have_text("The key was deleted.")
    assert live.api(key, "GET", f"/v1/api-keys/{new_id}").status_code == 404
    within(PROPAGATION, lambda: live.forward(new_secret) == 401)


def test_sign_out_ends_the_session(page: Page, live: Live) -> None:
    _, key = live.account()
    sign_in(page, key)
    page.get_by_role("button", name="Sign out").click()
    expect(page.get_by_label("API key")).to_be_visible()
    page.goto("/console/keys")
    expect(page.get_by_role("button", name="Sign in")).to_be_visible()


@pytest.mark.parametrize("ending", ["deactivate", "delete", "roll", "suspend"])
def test_a_session_ends_within_a_second_when_its_key_stops_working(
    page: Page, live: Live, ending: str
) -> None:
    account_id, key = live.account()
    second = live.api(key, "POST", "/v1/api-keys", json={"label": "console"}).json()
    sign_in(page, second["value"])
    path = f"/v1/api-keys/{second['id']}"
    if ending == "deactivate":
        live.api(key, "PATCH", path, json={"active": False}).raise_for_status()
    elif ending == "delete":
        live.api(key, "DELETE", path).raise_for_status()
    elif ending == "roll":
        live.api(key, "POST", f"{path}/roll", json={"grace_seconds": 0}).raise_for_status()
    else:
        live.client.post(f"/admin/v1/accounts/{account_id}/suspend", headers=operator())

    def signed_out() -> bool:
        page.goto("/console/keys")
        return page.get_by_role("button", name="Sign in").count() == 1

    within(PROPAGATION, signed_out)


def test_a_session_ends_when_its_key_expires(page: Page, live: Live) -> None:
    _, key = live.account()
    expiry = int(time.time()) + 2
    soon = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(expiry))
    made = live.api(key, "POST", "/v1/api-keys", json={"label": "brief", "expires_at": soon})
    sign_in(page, made.json()["value"])
    time.sleep(max(0.0, expiry - time.time()))
    page.goto("/console/keys")
    expect(page.get_by_role("button", name="Sign in")).to_be_visible()


def test_only_a_full_access_key_signs_in_and_failures_count_toward_the_limit(live: Live) -> None:
    _, key = live.account()
    scoped = live.api(
        key, "POST", "/v1/api-keys", json={"label": "scoped", "scopes_enabled": True}
    ).json()
    address = {"X-Forwarded-For": "198.51.100.23"}
    with httpx.Client(base_url=live.base_url, headers=address) as client:
        shown = [client.get("/console/")]

        def attempt(api_key: str) -> int:
            # Each sign-in page carries a fresh token, matched by a cookie of its own.
            token = re.search(r'name="token" value="([^"]+)"', shown[-1].text)
            assert token is not None
            data = {"token": token.group(1), "api_key": api_key}
            shown.append(client.post("/console/sign-in", data=data))
            return shown[-1].status_code

        assert attempt(scoped["value"]) == 403
        assert "Only a full-access key" in shown[-1].text
        assert [attempt("kg_wrong") for _ in range(6)] == [401] * 5 + [429]
        assert "Too many failed authentications" in shown[-1].text
        assert attempt(key) == 303  # a valid key is never refused by the failure limit


def test_the_keyboard_alone_signs_in_and_reaches_create_key(page: Page, live: Live) -> None:
    _, key = live.account()
    page.goto("/console/")
    page.keyboard.press("Tab")  # the skip link
    page.keyboard.press("Tab")
    expect(page.get_by_label("API key")).to_be_focused()
    page.keyboard.type(key)
    page.keyboard.press("Enter")
    expect(page.get_by_role("heading", name="API keys")).to_be_visible()
    for _ in range(10):
        page.keyboard.press("Tab")
        if page.evaluate("document.activeElement.textContent") == "Create key":
            break
    page.keyboard.press("Enter")
    expect(page.get_by_role("heading", name="Create key")).to_be_visible()


def test_create_and_deactivate_work_without_javascript(browser: Browser, live: Live) -> None:
    _, key = live.account()
    context = browser.new_context(base_url=live.base_url, java_script_enabled=False)
    page = context.new_page()
    sign_in(page, key)
    key_id, secret = create_in_console(page, "no script", scopes={"numbers": "read"})
    assert live.key(key, key_id)["numbers"] == {"allow": "read"}
    page.get_by_role("link", name="Done").click()
    row(page, "no script").get_by_role("button", name="Deactivate").click()
    within(PROPAGATION, lambda: live.forward(secret) == 401)
    row(page, "no script").get_by_role("link", name="Usage").click()
    page.get_by_role("link", name="Last 90 days").click()
    expect(page.get_by_role("heading", level=2)).to_have_text("Last 90 days, per day")
    context.close()


# -- security ------------------------------------------------------------------------------


def test_a_forged_post_with_the_session_cookie_and_no_token_is_refused(
    page: Page, live: Live
) -> None:
    _, key = live.account()
    made = live.api(key, "POST", "/v1/api-keys", json={"label": "target"}).json()
    sign_in(page, key)
    cookies = {c["name"]: c["value"] for c in page.context.cookies()}
    forged = httpx.post(
        f"{live.base_url}/console/keys/{made['id']}/deactivate",
        cookies={"keyguard_console": cookies["keyguard_console"]},
        data={"back": "/console/keys"},
    )
    assert forged.status_code == 403
    wrong = httpx.post(
        f"{live.base_url}/console/keys/{made['id']}/deactivate",
        cookies={"keyguard_console": cookies["keyguard_console"]},
        data={"csrf": "x" * 43},
    )
    assert wrong.status_code == 403
    assert live.key(key, made["id"])["active"] is True


def test_pages_forbid_inline_scripts_and_the_cookie_is_strict(page: Page, live: Live) -> None:
    _, key = live.account()
    answer = page.goto("/console/")
    assert answer is not None
    policy = answer.headers["content-security-policy"]
    assert "script-src 'self'" in policy
    assert "unsafe-inline" not in policy
    assert answer.headers["cache-control"] == "no-store"
    sign_in(page, key)
    session = next(c for c in page.context.cookies() if c["name"] == "keyguard_console")
    assert session["httpOnly"] is True
    assert session["sameSite"] == "Strict"
    assert session["path"] == "/console"
    assert key not in page.content()
    assert "<script>" not in page.content()


def test_an_operators_link_signs_in_once(browser: Browser, page: Page, live: Live) -> None:
    account_id, _ = live.account()
    path = f"/admin/v1/accounts/{account_id}/console-link"
    assert live.client.post(path).status_code == 401
    link = live.client.post(path, headers=operator()).json()
    assert set(link) == {"url", "expires_at"}
    assert link["url"].startswith(f"{live.base_url}/console/link/")

    page.goto(link["url"])
    page.get_by_role("button", name="Sign in").click()
    expect(page.get_by_role("heading", name="API keys")).to_be_visible()
    assert page.get_by_role("rowheader").count() == 1

    other = browser.new_context(base_url=live.base_url)
    again = other.new_page()
    again.goto(link["url"])
    again.get_by_role("button", name="Sign in").click()
    expect(again.get_by_role("alert")).to_have_text(
        "This sign-in link was used already or expired."
    )
    other.close()
    assert (
        live.client.post("/admin/v1/accounts/999999/console-link", headers=operator()).status_code
        == 404
    )


# -- lists ---------------------------------------------------------------------------------


def test_search_by_label_and_pages(page: Page, live: Live) -> None:
    _, key = live.account()
    for number in range(30):
        live.api(key, "POST", "/v1/api-keys", json={"label": f"batch {number:02}"})
    sign_in(page, key)
    expect(page.get_by_text("31 keys")).to_be_visible()
    page.get_by_role("link", name="Next").click()
    expect(page.get_by_text("Page 2 of 2")).to_be_visible()
    assert page.get_by_role("rowheader").count() == 6

    page.get_by_label("Search by label").fill("BATCH 1")
    page.get_by_role("button", name="Search").click()
    labels = page.get_by_role("rowheader").all_inner_texts()
    assert labels == [f"batch 1{digit}" for digit in range(10)]


def test_audit_log_filters_by_action(page: Page, live: Live) -> None:
    _, key = live.account()
    made = live.api(key, "POST", "/v1/api-keys", json={"label": "audited"}).json()
    live.api(key, "PATCH", f"/v1/api-keys/{made['id']}", json={"label": "audited again"})
    sign_in(page, key)
    page.get_by_role("link", name="Audit log").click()
    expect(page.get_by_text("4 records")).to_be_visible()  # with the account's creation
    page.get_by_label("Action").select_option("key.update")
    page.get_by_role("button", name="Filter").click()
    expect(page.get_by_text("1 record", exact=True)).to_be_visible()
    expect(page.get_by_role("table")).to_contain_text("audited again")


# -- accessibility -------------------------------------------------------------------------


def serious_violations(page: Page) -> list[str]:
    results = Axe().run(page)
    return [
        f"{violation['id']} ({violation['impact']}): {violation['help']}"
        for violation in results.response["violations"]
        if violation["impact"] in ("serious", "critical")
    ]


def test_every_page_passes_axe_at_390_pixels(page: Page, live: Live) -> None:
    _, key = live.account()
    made = live.api(
        key,
        "POST",
        "/v1/api-keys",
        json={"label": "a fairly long label for a narrow screen", "restricted": True,
              "permitted_ips": ["203.0.113.0/24"], "scopes_enabled": True,
              "messages": {"allow": "write"}, "remaining": 1000,
              "refill": {"amount": 1000, "interval": "monthly"}},
    ).json()  # fmt: skip
    visited: dict[str, list[str]] = {}

    def check(name: str) -> None:
        visited[name] = serious_violations(page)
        width = page.evaluate("document.documentElement.scrollWidth")
        assert width <= NARROW["width"], f"{name} is {width} px wide"

    page.goto("/console/")
    check("sign in")
    sign_in(page, key)
    check("keys")
    page.get_by_role("link", name="Create key").click()
    check("create form")
    page.get_by_label("Label").fill("x" * 255)
    page.get_by_label("Restrict to IP addresses").check()
    page.get_by_label("Permitted IPs").fill("203.0.113.300")
    page.get_by_role("button", name="Create key").click()
    check("create form with an error")
    page.get_by_label("Permitted IPs").fill("203.0.113.3")
    page.locator("form.key-form").evaluate("form => form.noValidate = true")
    fill_credits(page, "-1", "5", "daily")
    page.get_by_role("button", name="Create key").click()
    expect(page.locator("#credits-error")).to_be_visible()
    check("create form with a credits error")
    fill_credits(page, "5", "5", "daily")
    page.get_by_role("button", name="Create key").click()
    check("secret")
    for action in ("edit", "roll", "delete"):
        page.goto(f"/console/keys/{made['id']}/{action}")
        check(action)
    page.goto("/console/audit")
    check("audit log")
    for _ in range(3):
        live.forward(made["value"])  # refused: not from 203.0.113.0/24
    live.forward(key)
    within(10 * FLUSH + 5, lambda: live.counted(key, made["id"])["forbidden"] == 3)
    for window in ("hour", "week"):
        page.goto(f"/console/keys/{made['id']}/usage?window={window}")
        page.locator("details").evaluate("details => details.open = true")
        check(f"usage by {window}")
    assert visited == {name: [] for name in visited}


def test_the_readme_screenshots_can_be_taken(browser: Browser, tmp_path: Path) -> None:
    from tests.screenshots import take

    taken = take(tmp_path, browser)
    assert [path.name for path in taken] == ["keys.png", "create.png", "usage.png"]
    assert all(path.read_bytes().startswith(b"\x89PNG") for path in taken)
