"""What every console page shares: its dependencies, who is signed in, and rendering.

A session is checked against the key snapshot on every request: once its key is
deactivated, deleted, expired, rolled past its grace period or no longer full
access, or its account is suspended, the next request (on any worker of any
instance, each of which refreshes its snapshot every 0.25 s) ends it.
"""

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Annotated, Any, TypeVar
from urllib.parse import urlencode

from fastapi import Path as PathParameter
from fastapi import Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from jinja2 import Environment, PackageLoader, StrictUndefined, select_autoescape
from starlette.concurrency import run_in_threadpool

from keyguard.cache import Snapshot
from keyguard.console import charts, present
from keyguard.console.forms import Form, first, level_names
from keyguard.console.security import (
    PAGE_HEADERS,
    SESSION_COOKIE,
    FormRefused,
    csrf_token,
    expired_cookie_header,
    is_https,
    read_form,
    tokens_match,
)
from keyguard.console.sessions import SEEN_RESOLUTION, Session, SessionStore, hashed, now
from keyguard.decide import Decider
from keyguard.domain.network import ClientIPHeader, Network, parse_client
from keyguard.domain.records import Actor
from keyguard.edge import ProxiedRequest
from keyguard.errors import InvalidInput, NotFound, RateLimited
from keyguard.limits import WindowLimiter
from keyguard.service import KeyService

PREFIX = "/console"
MAX_PAGE = 1_000_000
NO_SUCH_KEY = "This account has no such key."
KeyId = Annotated[int, PathParameter(ge=1, le=2**63 - 1)]
T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Console:
    """What the console needs, handed over by the app factory."""

    service: KeyService
    decider: Decider
    cache: Snapshot
    sessions: SessionStore
    trusted_proxies: tuple[Network, ...] = ()
    client_ip_header: ClientIPHeader = ClientIPHeader.X_FORWARDED_FOR
    writes: WindowLimiter | None = None  # the API's per-account limit on key changes
    clock: Callable[[], float] = time.time

    def client(self, request: Request) -> str | None:
        facts = ProxiedRequest.scan(request.scope["headers"], self.client_ip_header)
        return facts.client(request.scope, self.trusted_proxies)

    def usable(self, session: Session, client: str | None) -> bool:
        """Whether the snapshot still lets this session act: its account active and,
        for a session begun with a key, that key active, unexpired, full access
        and permitted from ``client``."""
        if session.account_id in self.cache.blocked_accounts:
            return False
        if session.key_id is None:  # begun with an operator's link: the account only
            return True
        key = self.cache.by_id(session.key_id)
        if key is None or not key.active or key.scopes_enabled:
            return False
        if key.account_id != session.account_id:
            return False
        if key.expires is not None and self.clock() >= key.expires:
            return False
        if key.networks is not None:
            address = parse_client(client) if client else None
            return address is not None and key.networks.permits(address)
        return True


@dataclass(frozen=True, slots=True)
class Signed:
    """A request of a signed-in browser."""

    session_id: str
    session: Session
    client: str | None

    @property
    def account_id(self) -> int:
        return self.session.account_id

    @property
    def id_hash(self) -> bytes:
        return hashed(self.session_id)

    @property
    def csrf(self) -> str:
        return csrf_token(self.session_id)

    @property
    def actor(self) -> Actor:
        # A session begun with an operator's link acts for the operator who made it.
        if self.session.key_id is None:
            return Actor("operator", None, self.client)
        return Actor("key", self.session.key_id, self.client)


def redirect(location: str, *cookies: str) -> Response:
    """A 303 to ``location`` (POST-redirect-GET), setting ``cookies``."""
    response = RedirectResponse(location, 303, headers=PAGE_HEADERS)
    for cookie in cookies:
        response.headers.append("set-cookie", cookie)
    return response


def link(page: str, query: Mapping[str, object]) -> str:
    """The address of a console page with ``query``, leaving out empty values."""
    shown = {name: value for name, value in query.items() if value not in ("", None)}
    return f"{PREFIX}/{page}" + (f"?{urlencode(shown)}" if shown else "")


def page_number(text: str) -> int:
    return min(int(text), MAX_PAGE) if text.isdigit() and int(text) >= 1 else 1


def pager(
    page: str, query: Mapping[str, str], number: int, total: int, per_page: int
) -> dict[str, Any]:
    """What the pager of a listing shows: this page, how many, and links to the next ones."""
    pages = max(1, -(-total // per_page))
    return {
        "page": number,
        "pages": pages,
        "previous": link(page, {**query, "page": number - 1}) if number > 1 else None,
        "next": link(page, {**query, "page": number + 1}) if number < pages else None,
    }


class Pages:
    """Renders the console's pages and finds who is signed in."""

    def __init__(self, console: Console) -> None:
        self.console = console
        self.service = console.service
        self.sessions = console.sessions
        self.environment = Environment(
            loader=PackageLoader("keyguard.console", "templates"),
            autoescape=select_autoescape(("html",)),
            undefined=StrictUndefined,
        )
        self.environment.globals.update(
            present=present,
            charts=charts,
            levels=level_names(),
            groups=tuple(console.service.groups),
            scope_groups=console.service.groups,
        )

    def render(self, template: str, status: int = 200, **context: Any) -> HTMLResponse:
        html = self.environment.get_template(template).render(**context)
        return HTMLResponse(html, status, headers=PAGE_HEADERS)

    def refusal(self, status: int, message: str) -> HTMLResponse:
        return self.render("refused.html", status, message=message)

    async def signed_in(self, request: Request) -> Signed | None:
        """The browser's session if it is still good; an idle or unusable one is ended."""
        session_id = request.cookies.get(SESSION_COOKIE)
        if not session_id:
            return None
        id_hash = hashed(session_id)
        session = await run_in_threadpool(self.sessions.get, id_hash)
        if session is None:
            return None
        client = self.console.client(request)
        at = now()
        # In the threadpool: a bounded snapshot reads a key it does not hold.
        usable = await run_in_threadpool(self.console.usable, session, client)
        if session.idle(at) or not usable:
            await run_in_threadpool(self.sessions.end, id_hash)
            return None
        if at - session.seen_at >= SEEN_RESOLUTION:
            await run_in_threadpool(self.sessions.touch, id_hash, at)
        return Signed(session_id, session, client)

    def signed_out(self, request: Request) -> Response:
        cookie = expired_cookie_header(SESSION_COOKIE, secure=is_https(request))
        return redirect(f"{PREFIX}/", cookie)

    async def posted(self, request: Request) -> tuple[Signed, Form] | Response:
        """A signed-in browser's form, with its CSRF token checked; else the refusal."""
        signed = await self.signed_in(request)
        if signed is None:
            return self.signed_out(request)
        try:
            form = await read_form(request)
        except FormRefused as refused:
            return self.refusal(refused.status, refused.message)
        if not tokens_match(first(form, "csrf"), signed.csrf):
            return self.refusal(403, "This form was not sent by this console, or has expired.")
        return signed, form

    async def common(self, signed: Signed) -> dict[str, Any]:
        """What the layout of a signed-in page shows."""
        account = await run_in_threadpool(self.service.get_account, signed.account_id)
        return {"account": account, "csrf": signed.csrf, "now": now()}

    def limit(self, signed: Signed) -> None:
        """Count a change toward the account's write limit, as the API does; raise over it."""
        writes = self.console.writes
        wait = None if writes is None else writes.hit(signed.account_id)
        if wait is not None:
            raise RateLimited(f"Too many changes to API keys; retry in {wait} seconds", wait)

    async def change(self, signed: Signed, call: Callable[[], T]) -> T | Response:
        """Make a change within the account's write limit; a refusal page if refused."""
        try:
            self.limit(signed)
            return await run_in_threadpool(call)
        except NotFound:
            return self.refusal(404, NO_SUCH_KEY)
        except InvalidInput as refused:
            return self.refusal(refused.status, refused.message)
        except RateLimited as refused:
            return self.refusal(429, refused.message)
