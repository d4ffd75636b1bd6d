"""``/console/``: the tenant's pages, and the operator's one-time sign-in links.

Server-rendered forms that post and redirect (POST-redirect-GET), on the same
:class:`~keyguard.service.KeyService` as the HTTP API, so that what the console
does is what the API would have done. The pages are not API routes: no key is
presented with them, and the gate in front of ``/v1/`` never sees them; a
session cookie stands for the key that signed in.

A session is checked against the key snapshot on every request: once its key is
deactivated, deleted, expired, rolled past its grace period or no longer full
access, or its account is suspended, the next request (on any worker of any
instance, each of which refreshes its snapshot every 0.25 s) ends it.
"""

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from importlib.resources import files
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import urlencode

from fastapi import APIRouter, HTTPException, Request
from fastapi import Path as PathParameter
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, RedirectResponse, Response
from jinja2 import Environment, PackageLoader, StrictUndefined, select_autoescape
from pydantic import BaseModel, Field, SecretStr
from starlette.concurrency import run_in_threadpool

from keyguard.api.schemas import ERROR_RESPONSES, ErrorResponse
from keyguard.api.tokens import authenticate
from keyguard.cache import KeyCache
from keyguard.console import present
from keyguard.console.forms import Form, KeyForm, field_of, first, level_names
from keyguard.console.security import (
    PAGE_HEADERS,
    SESSION_COOKIE,
    SIGN_IN_COOKIE,
    FormRefused,
    cookie_header,
    csrf_token,
    expired_cookie_header,
    is_https,
    read_form,
    tokens_match,
)
from keyguard.console.sessions import (
    LINK_LIFETIME,
    SEEN_RESOLUTION,
    Session,
    SessionStore,
    hashed,
    new_secret,
    now,
    open_flash,
    seal_flash,
)
from keyguard.decide import Decider
from keyguard.domain.audit import ACTIONS, utc_bound
from keyguard.domain.network import ClientIPHeader, Network, parse_client
from keyguard.domain.records import Actor
from keyguard.edge import ProxiedRequest
from keyguard.errors import InvalidInput, NotFound, RateLimited
from keyguard.limits import WindowLimiter
from keyguard.service import KeyService
from keyguard.storage import AuditQuery

PREFIX = "/console"
PER_PAGE = 25
AUDIT_PER_PAGE = 25
MAX_PAGE = 1_000_000
# Sign-in asks the decider whether the key may list keys: the API's own test of a
# full-access key, its account and its allow-list, in the same words.
SIGN_IN_PROBE = ("GET", "/v1/api-keys")
GRACE_CHOICES = (("0", "None: the old key stops now"), ("3600", "1 hour"),
                 ("86400", "1 day"), ("604800", "7 days"))  # fmt: skip
STATIC_TYPES = {"console.css": "text/css", "console.js": "text/javascript"}
KeyId = Annotated[int, PathParameter(ge=1, le=2**63 - 1)]


@dataclass(frozen=True, slots=True)
class Console:
    """What the console needs, handed over by the app factory."""

    service: KeyService
    decider: Decider
    cache: KeyCache
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
    def csrf(self) -> str:
        return csrf_token(self.session_id)

    @property
    def actor(self) -> Actor:
        # A session begun with an operator's link acts for the operator who made it.
        if self.session.key_id is None:
            return Actor("operator", None, self.client)
        return Actor("key", self.session.key_id, self.client)


class Pages:
    """Renders templates into pages with the console's headers."""

    def __init__(self, console: Console) -> None:
        self.environment = Environment(
            loader=PackageLoader("keyguard.console", "templates"),
            autoescape=select_autoescape(("html",)),
            undefined=StrictUndefined,
        )
        self.environment.globals.update(
            present=present,
            levels=level_names(),
            groups=tuple(console.service.groups),
            scope_groups=console.service.groups,
        )

    def render(self, template: str, status: int = 200, **context: Any) -> HTMLResponse:
        html = self.environment.get_template(template).render(**context)
        return HTMLResponse(html, status, headers=PAGE_HEADERS)


def redirect(location: str, *cookies: str) -> Response:
    response = RedirectResponse(location, 303, headers=PAGE_HEADERS)
    for cookie in cookies:
        response.headers.append("set-cookie", cookie)
    return response


def console_router(console: Console) -> APIRouter:
    """The console's pages under ``/console/``."""
    router = APIRouter(prefix=PREFIX, include_in_schema=False)
    pages = Pages(console)
    service = console.service
    sessions = console.sessions

    async def signed_in(request: Request) -> Signed | None:
        session_id = request.cookies.get(SESSION_COOKIE)
        if not session_id:
            return None
        id_hash = hashed(session_id)
        session = await run_in_threadpool(sessions.get, id_hash)
        if session is None:
            return None
        client = console.client(request)
        at = now()
        if session.idle(at) or not console.usable(session, client):
            await run_in_threadpool(sessions.end, id_hash)
            return None
        if at - session.seen_at >= SEEN_RESOLUTION:
            await run_in_threadpool(sessions.touch, id_hash, at)
        return Signed(session_id, session, client)

    def signed_out(request: Request) -> Response:
        cookie = expired_cookie_header(SESSION_COOKIE, secure=is_https(request))
        return redirect(f"{PREFIX}/", cookie)

    async def posted(request: Request) -> tuple[Signed, Form] | Response:
        """A signed-in browser's form, with its CSRF token checked; else the refusal."""
        signed = await signed_in(request)
        if signed is None:
            return signed_out(request)
        try:
            form = await read_form(request)
        except FormRefused as refused:
            return refusal(refused.status, refused.message)
        if not tokens_match(first(form, "csrf"), signed.csrf):
            return refusal(403, "This form was not sent by this console, or has expired.")
        return signed, form

    def refusal(status: int, message: str) -> HTMLResponse:
        return pages.render("refused.html", status, message=message)

    def with_sign_in_token(
        request: Request, template: str, status: int, **context: Any
    ) -> Response:
        token = new_secret()
        response = pages.render(template, status, token=token, **context)
        cookie = cookie_header(SIGN_IN_COOKIE, token, secure=is_https(request))
        response.headers.append("set-cookie", cookie)
        return response

    def sign_in_page(request: Request, status: int = 200, error: str | None = None) -> Response:
        return with_sign_in_token(request, "sign_in.html", status, error=error)

    def check_sign_in_form(request: Request, form: Form) -> bool:
        # Before any session, a double-submit token: a cross-site form cannot send
        # the SameSite=Strict cookie, so it cannot sign a browser into its account.
        expected = request.cookies.get(SIGN_IN_COOKIE, "")
        return bool(expected) and tokens_match(first(form, "token"), expected)

    async def begin(request: Request, account_id: int, key_id: int | None) -> Response:
        session_id = new_secret()
        at = now()
        session = Session(account_id, key_id, console.client(request), at, at)
        await run_in_threadpool(sessions.end_idle, at)
        await run_in_threadpool(sessions.create, hashed(session_id), session)
        secure = is_https(request)
        return redirect(
            f"{PREFIX}/keys",
            cookie_header(SESSION_COOKIE, session_id, secure=secure),
            expired_cookie_header(SIGN_IN_COOKIE, secure=secure),
        )

    @router.get("/")
    async def home(request: Request) -> Response:
        if await signed_in(request) is not None:
            return redirect(f"{PREFIX}/keys")
        return sign_in_page(request)

    @router.get("")
    async def bare() -> Response:
        return redirect(f"{PREFIX}/")

    @router.post("/sign-in")
    async def sign_in(request: Request) -> Response:
        try:
            form = await read_form(request)
        except FormRefused as refused:
            return refusal(refused.status, refused.message)
        if not check_sign_in_form(request, form):
            return sign_in_page(request, 403, "The sign-in form expired. Please try again.")
        token = first(form, "api_key").strip() or None
        client = console.client(request)
        method, path = SIGN_IN_PROBE
        decision = console.decider.decide(token, client, method, path)
        if decision.allowed and decision.account_id is not None:
            return await begin(request, decision.account_id, decision.key_id)
        if decision.status == 403 and decision.message.startswith("IP address"):
            error = decision.message
        elif decision.status == 403:
            error = "Only a full-access key can sign in to the console."
        elif decision.status == 429:
            error = decision.message
        else:
            error = (
                "This key cannot sign in: it is unknown, inactive, expired or rolled, "
                "or its account is suspended."
            )
        return sign_in_page(request, decision.status, error)

    @router.get("/link/{token}")
    async def link(request: Request, token: str) -> Response:
        # Opening the link only shows a button: a mail scanner that fetches every
        # link does not use it up, and the session cookie is set by a same-site
        # POST, which SameSite=Strict lets the next page see.
        return with_sign_in_token(request, "link.html", 200, link=token)

    @router.post("/link/{token}")
    async def use_link(request: Request, token: str) -> Response:
        try:
            form = await read_form(request)
        except FormRefused as refused:
            return refusal(refused.status, refused.message)
        if not check_sign_in_form(request, form):
            return sign_in_page(request, 403, "The sign-in form expired. Please try again.")
        account_id = await run_in_threadpool(sessions.use_link, hashed(token), now())
        if account_id is None or account_id in console.cache.blocked_accounts:
            return sign_in_page(request, 400, "This sign-in link was used already or expired.")
        return await begin(request, account_id, None)

    @router.post("/sign-out")
    async def sign_out(request: Request) -> Response:
        checked = await posted(request)
        if isinstance(checked, Response):
            return checked
        signed, _form = checked
        await run_in_threadpool(sessions.end, hashed(signed.session_id))
        return signed_out(request)

    # -- keys ---------------------------------------------------------------------

    async def common(signed: Signed) -> dict[str, Any]:
        account = await run_in_threadpool(service.get_account, signed.account_id)
        return {"account": account, "csrf": signed.csrf, "now": now()}

    @router.get("/keys")
    async def key_list(
        request: Request, label: str = "", page: str = "1", done: str = ""
    ) -> Response:
        signed = await signed_in(request)
        if signed is None:
            return signed_out(request)
        number = _page_number(page)
        try:
            views, total = await run_in_threadpool(
                service.key_page,
                signed.account_id,
                label or None,
                (number - 1) * PER_PAGE,
                PER_PAGE,
            )
            error = None
        except InvalidInput as refused:
            views, total, error = [], 0, refused.message
        here = {"label": label} if label else {}
        return pages.render(
            "keys.html",
            **await common(signed),
            **_pager("keys", here, number, total, PER_PAGE),
            views=views,
            total=total,
            label=label,
            back=_link("keys", {**here, "page": number}),
            done=DONE.get(done),
            error=error,
        )

    def key_form(common_context: dict[str, Any], form: KeyForm, *,
                 key_id: int | None, errors: Mapping[str, str] | None = None,
                 status: int = 200) -> Response:  # fmt: skip
        return pages.render(
            "key_form.html",
            status,
            **common_context,
            form=form,
            key_id=key_id,
            errors=errors or {},
        )

    @router.get("/keys/new")
    async def new_key(request: Request) -> Response:
        signed = await signed_in(request)
        if signed is None:
            return signed_out(request)
        return key_form(await common(signed), KeyForm.blank(service.groups), key_id=None)

    def limit_writes(account_id: int) -> None:
        if console.writes is not None:
            wait = console.writes.hit(account_id)
            if wait is not None:
                raise RateLimited(f"Too many changes to API keys; retry in {wait} seconds", wait)

    async def save(request: Request, key_id: int | None) -> Response:
        checked = await posted(request)
        if isinstance(checked, Response):
            return checked
        signed, posted_form = checked
        form = KeyForm.posted(posted_form, service.groups)
        body = form.body(editing=key_id is not None)
        try:
            limit_writes(signed.account_id)
            if key_id is None:
                view = await run_in_threadpool(
                    service.create_key, signed.account_id, body, signed.actor
                )
            else:
                view = await run_in_threadpool(
                    service.update_key, signed.account_id, key_id, body, signed.actor
                )
        except (InvalidInput, RateLimited) as refused:
            status = refused.status if isinstance(refused, InvalidInput) else 429
            where = field_of(refused.message, service.groups) or "form"
            return key_form(await common(signed), form, key_id=key_id,
                            errors={where: refused.message}, status=status)  # fmt: skip
        except NotFound:
            return refusal(404, "This account has no such key.")
        if key_id is not None:
            return redirect(_link("keys", {"done": "updated"}))
        return await reveal_next(signed, view.key.id, view.value)

    async def reveal_next(signed: Signed, key_id: int, secret: str) -> Response:
        sealed = seal_flash(signed.session_id, f"{key_id}:{secret}")
        await run_in_threadpool(sessions.set_flash, hashed(signed.session_id), sealed)
        return redirect(f"{PREFIX}/keys/{key_id}/secret")

    @router.post("/keys")
    async def create_key(request: Request) -> Response:
        return await save(request, None)

    @router.get("/keys/{key_id}/secret")
    async def secret(request: Request, key_id: KeyId) -> Response:
        signed = await signed_in(request)
        if signed is None:
            return signed_out(request)
        sealed = await run_in_threadpool(sessions.take_flash, hashed(signed.session_id))
        opened = None if sealed is None else open_flash(signed.session_id, sealed)
        flashed_id, _, value = (opened or "").partition(":")
        if flashed_id != str(key_id):
            return redirect(_link("keys", {"done": "shown"}))  # shown once, already
        try:
            view = await run_in_threadpool(service.get_key, signed.account_id, key_id)
        except NotFound:
            return redirect(f"{PREFIX}/keys")
        return pages.render("secret.html", **await common(signed), view=view, value=value)

    @router.get("/keys/{key_id}/edit")
    async def edit_key(request: Request, key_id: KeyId) -> Response:
        signed = await signed_in(request)
        if signed is None:
            return signed_out(request)
        try:
            view = await run_in_threadpool(service.get_key, signed.account_id, key_id)
        except NotFound:
            return refusal(404, "This account has no such key.")
        form = KeyForm.of(view, service.groups)
        return key_form(await common(signed), form, key_id=key_id)

    @router.post("/keys/{key_id}")
    async def update_key(request: Request, key_id: KeyId) -> Response:
        return await save(request, key_id)

    async def act(request: Request, action: Callable[[Signed, Form], Any],
                  done: str) -> Response:  # fmt: skip
        checked = await posted(request)
        if isinstance(checked, Response):
            return checked
        signed, form = checked
        try:
            limit_writes(signed.account_id)
            result = await run_in_threadpool(action, signed, form)
        except NotFound:
            return refusal(404, "This account has no such key.")
        except (InvalidInput, RateLimited) as refused:
            status = refused.status if isinstance(refused, InvalidInput) else 429
            return refusal(status, refused.message)
        if isinstance(result, Response):
            return result
        back = first(form, "back")
        if not back.startswith(f"{PREFIX}/keys"):
            back = f"{PREFIX}/keys"
        separator = "&" if "?" in back else "?"
        return redirect(f"{back}{separator}done={done}")

    for name, active in (("activate", True), ("deactivate", False)):
        _add_toggle(router, act, service, name, active)

    async def confirm(request: Request, key_id: int, template: str) -> Response:
        signed = await signed_in(request)
        if signed is None:
            return signed_out(request)
        try:
            view = await run_in_threadpool(service.get_key, signed.account_id, key_id)
        except NotFound:
            return refusal(404, "This account has no such key.")
        return pages.render(template, **await common(signed), view=view, grace=GRACE_CHOICES)

    @router.get("/keys/{key_id}/delete")
    async def confirm_delete(request: Request, key_id: KeyId) -> Response:
        return await confirm(request, key_id, "delete.html")

    @router.post("/keys/{key_id}/delete")
    async def delete_key(request: Request, key_id: KeyId) -> Response:
        def delete(signed: Signed, _form: Form) -> None:
            service.delete_key(signed.account_id, key_id, signed.actor)

        return await act(request, delete, "deleted")

    @router.get("/keys/{key_id}/roll")
    async def confirm_roll(request: Request, key_id: KeyId) -> Response:
        return await confirm(request, key_id, "roll.html")

    @router.post("/keys/{key_id}/roll")
    async def roll_key(request: Request, key_id: KeyId) -> Response:
        checked = await posted(request)
        if isinstance(checked, Response):
            return checked
        signed, form = checked
        grace = first(form, "grace_seconds", "86400")
        body = {"grace_seconds": int(grace) if grace.isdigit() else grace}
        try:
            limit_writes(signed.account_id)
            _old, new = await run_in_threadpool(
                service.roll_key, signed.account_id, key_id, body, signed.actor
            )
        except NotFound:
            return refusal(404, "This account has no such key.")
        except (InvalidInput, RateLimited) as refused:
            status = refused.status if isinstance(refused, InvalidInput) else 429
            return refusal(status, refused.message)
        return await reveal_next(signed, new.key.id, new.value)

    # -- audit --------------------------------------------------------------------

    @router.get("/audit")
    async def audit(request: Request) -> Response:
        signed = await signed_in(request)
        if signed is None:
            return signed_out(request)
        given = {name: request.query_params.get(name, "").strip()
                 for name in ("key_id", "action", "from", "to")}  # fmt: skip
        number = _page_number(request.query_params.get("page", "1"))
        try:
            query = _audit_query(signed.account_id, given, number)
            records, total = await run_in_threadpool(service.audit, query)
            error = None
        except InvalidInput as refused:
            records, total, error = [], 0, refused.message
        filters = {name: value for name, value in given.items() if value}
        return pages.render(
            "audit.html",
            **await common(signed),
            **_pager("audit", filters, number, total, AUDIT_PER_PAGE),
            records=records,
            total=total,
            given=given,
            actions=ACTIONS,
            error=error,
        )

    @router.get("/static/{name}")
    async def static(name: str) -> FileResponse:
        if name not in STATIC_TYPES:
            raise HTTPException(404)
        folder = Path(str(files("keyguard.console").joinpath("static")))
        return FileResponse(
            folder / name,
            media_type=STATIC_TYPES[name],
            headers={"X-Content-Type-Options": "nosniff", "Cache-Control": "no-cache"},
        )

    return router


DONE = {
    "updated": "The key was saved.",
    "activated": "The key was activated.",
    "deactivated": "The key was deactivated.",
    "deleted": "The key was deleted.",
    "shown": "The secret was shown once already; only its masked value is shown now.",
}


def _add_toggle(router: APIRouter, act: Callable[..., Any], service: KeyService,
                name: str, active: bool) -> None:  # fmt: skip
    async def toggle(request: Request, key_id: KeyId) -> Response:
        def change(signed: Signed, _form: Form) -> None:
            service.set_active(signed.account_id, key_id, active, signed.actor)

        response: Response = await act(request, change, f"{name}d")
        return response

    router.add_api_route(f"/keys/{{key_id}}/{name}", toggle, methods=["POST"])


def _page_number(text: str) -> int:
    return min(int(text), MAX_PAGE) if text.isdigit() and int(text) >= 1 else 1


def _pager(
    page: str, query: Mapping[str, str], number: int, total: int, per_page: int
) -> dict[str, Any]:
    """What the pager of a listing shows: this page, how many, and links to the next ones."""
    pages = max(1, -(-total // per_page))
    return {
        "page": number,
        "pages": pages,
        "previous": _link(page, {**query, "page": number - 1}) if number > 1 else None,
        "next": _link(page, {**query, "page": number + 1}) if number < pages else None,
    }


def _link(page: str, query: Mapping[str, object]) -> str:
    shown = {name: value for name, value in query.items() if value not in ("", None)}
    return f"{PREFIX}/{page}" + (f"?{urlencode(shown)}" if shown else "")


def _audit_query(account_id: int, given: Mapping[str, str], number: int) -> AuditQuery:
    key_id = given["key_id"]
    if key_id and (not key_id.isdigit() or not 1 <= int(key_id) <= 2**63 - 1):
        raise InvalidInput.parameter("key_id")
    action = given["action"] or None
    if action is not None and action not in ACTIONS:
        raise InvalidInput.parameter("action")
    return AuditQuery(
        account_id=account_id,
        key_id=int(key_id) if key_id else None,
        action=action,
        since=_time(given["from"], "from"),
        until=_time(given["to"], "to"),
        offset=(number - 1) * AUDIT_PER_PAGE,
        limit=AUDIT_PER_PAGE,
    )


def _time(text: str, name: str) -> datetime | None:
    if not text:
        return None
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise InvalidInput.parameter(name) from None
    return utc_bound(moment, name)


# -- the operator's one-time links ------------------------------------------------------


class ConsoleLink(BaseModel):
    url: str = Field(description="Opens the sign-in page; works once.")
    expires_at: datetime = Field(description="15 minutes after it was made, UTC.")


def console_link_router(
    console: Console, admin_token: SecretStr, failures: WindowLimiter | None
) -> APIRouter:
    """``POST /admin/v1/accounts/{id}/console-link``: a sign-in link for one account."""
    router = APIRouter(prefix="/admin/v1", tags=["Operator"], responses=ERROR_RESPONSES)

    @router.post(
        "/accounts/{account_id}/console-link",
        operation_id="admin_console_link",
        summary="A one-time console sign-in link for the account",
        description="A link that signs its first user in to the account's web console, "
        "once, within 15 minutes. Changes made in that session are recorded as the "
        "operator's.",
        responses={
            200: {"model": ConsoleLink},
            404: {"model": ErrorResponse, "description": "No such account."},
        },
    )
    async def console_link(
        request: Request, account_id: Annotated[int, PathParameter(ge=1, le=2**63 - 1)]
    ) -> JSONResponse:
        client = console.client(request)
        authenticate(request.scope["headers"], admin_token, client, failures)
        await run_in_threadpool(console.service.get_account, account_id)  # 404 if none
        token = new_secret()
        expires = now().replace(microsecond=0) + LINK_LIFETIME
        await run_in_threadpool(console.sessions.create_link, hashed(token), account_id, expires)
        url = str(request.base_url).rstrip("/") + f"{PREFIX}/link/{token}"
        return JSONResponse({"url": url, "expires_at": present.iso(expires)})

    return router


__all__ = ["Console", "console_link_router", "console_router"]
