"""The README's console screenshots, taken from a running console: ``make screenshots``.

Starts keyguard in this process on an in-memory database, gives an account a few
keys a tenant might have and a day of their requests, signs in with Debian's
Chromium and saves the keys page, the create form and a key's usage page as PNG
files (``docs/console/`` by default). The README shows
them, and ``tests/test_console.py`` runs this too, so they stay takeable.
"""

import math
import random
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

from playwright.sync_api import Browser, ViewportSize, sync_playwright
from pydantic import SecretStr

from keyguard.api.app import create_app
from keyguard.config import Settings
from keyguard.runtime import Keyguard
from keyguard.storage import Store
from tests.test_differential import UvicornThread

CHROMIUM = "/usr/bin/chromium"
FOLDER = Path(__file__).resolve().parent.parent / "docs" / "console"
VIEWPORT: ViewportSize = {"width": 1280, "height": 720}
KEYS: tuple[dict[str, object], ...] = (
    {
        "label": "Billing sync",
        "scopes_enabled": True,
        "billing": {"allow": "read"},
        "ratelimit": {"limit": 600, "duration": 60},
        "remaining": 48_000,
        "refill": {"amount": 50_000, "interval": "monthly"},
    },
    {
        "label": "SMS campaigns (production)",
        "restricted": True,
        "permitted_ips": ["203.0.113.0/24", "2001:db8::/48"],
        "scopes_enabled": True,
        "messages": {"allow": "write"},
        "campaigns": {"allow": "write"},
    },
    {"label": "Contractor, until January", "expires_at": "2030-01-31T00:00:00Z"},
    {"label": "Old staging key", "active": False},
)


def traffic(store: Store, account_id: int, key_ids: list[int], at: datetime) -> None:
    """A day of made-up requests up to ``at``: a daily rhythm, with some refused."""
    rng = random.Random(13)
    for minutes in range(24 * 60, 0, -1):
        moment = at - timedelta(minutes=minutes)
        busy = 1 + math.sin((moment.hour - 9) / 24 * 2 * math.pi)
        counts = {
            key_id: (
                account_id,
                int(rng.uniform(5, 10) * busy * share),
                rng.randrange(9) // 8,
                rng.randrange(17) // 16,
                int(rng.uniform(0, 4) * max(0.0, busy - 1.4)) if share == 1 else 0,
                0,
            )
            for key_id, share in zip(key_ids, (1, 0.4, 0.1), strict=False)
        }
        store.record_counts(counts, moment)


def take(folder: Path = FOLDER, browser: Browser | None = None) -> list[Path]:
    """Save ``keys.png``, ``create.png`` and ``usage.png`` in ``folder``; their paths.

    Uses ``browser`` if given, else launches Debian's Chromium for the while.
    """
    if browser is None:
        with sync_playwright() as playwright:
            launched = playwright.chromium.launch(executable_path=CHROMIUM)
            try:
                return take(folder, launched)
            finally:
                launched.close()
    folder.mkdir(parents=True, exist_ok=True)
    settings = Settings(database_url="memory://", admin_token=SecretStr("screenshots-" + "0" * 32))
    runtime = Keyguard(settings)
    runtime.start()
    server = UvicornThread(create_app(keyguard=runtime)).start()
    try:
        account, first = runtime.service.create_account("Acme Telecom")
        made = [runtime.service.create_key(account.id, dict(body)).key.id for body in KEYS]
        traffic(runtime.store, account.id, made, datetime.now(UTC))
        page = browser.new_page(viewport=VIEWPORT)
        page.goto(f"http://{server.address}/console/")
        page.get_by_label("API key").fill(first.value)
        page.get_by_role("button", name="Sign in").click()
        page.get_by_role("heading", name="API keys").wait_for()
        keys = folder / "keys.png"
        page.screenshot(path=keys, full_page=True)
        page.get_by_role("link", name="Create key").click()
        page.get_by_label("Label").fill("Number porting bot")
        page.get_by_label("Limit scopes").check()
        page.get_by_role("group", name="numbers", exact=True).get_by_label("write").check()
        page.get_by_role("group", name="Rate limit").get_by_label("Requests").fill("100")
        page.get_by_role("group", name="Rate limit").get_by_label("Seconds").fill("60")
        credits = page.get_by_role("group", name="Credits")
        credits.get_by_label("Credits left").fill("10000")
        credits.get_by_label("Refill amount").fill("10000")
        credits.get_by_label("Refill interval").select_option("daily")
        create = folder / "create.png"
        page.screenshot(path=create, full_page=True)
        page.goto(f"http://{server.address}/console/keys/{made[0]}/usage?window=day")
        usage = folder / "usage.png"
        page.screenshot(path=usage, full_page=True)
        page.close()
    finally:
        server.stop()
        runtime.stop()
    return [keys, create, usage]


if __name__ == "__main__":
    for path in take(Path(sys.argv[1]) if len(sys.argv) > 1 else FOLDER):
        print(path)
