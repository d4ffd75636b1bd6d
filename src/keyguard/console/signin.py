"""Signing in and out: with a full-access key, or with an operator's one-time link.

Sign-in asks the decider whether the key may list keys (``GET /v1/api-keys``):
the API's own test of a full-access key, its expiry, its account and its
allow-list, in the same words, with a wrong key counted toward the failure limit
like a wrong key on the API.
"""

from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Request
from fastapi import Path as PathParameter
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, Field, SecretStr
from starlette.concurrency import run_in_threadpool

from keyguard.api.schemas import ERROR_RESPONSES, ErrorResponse
from keyguard.api.tokens import authenticate
from keyguard.console import present
from keyguard.console.forms import Form, first
from keyguard.console.pages import PREFIX, Console, Pages, redirect
from keyguard.console.security import (
    SESSION_COOKIE,
    SIGN_IN_COOKIE,
    FormRefused,
    cookie_header,
    expired_cookie_header,
    is_https,
    read_form,
    tokens_match,
)
from keyguard.console.sessions import LINK_LIFETIME, Session, hashed, new_secret, now
from keyguard.decide import UNCACHED, Decision
from keyguard.limits import WindowLimiter

SIGN_IN_PROBE = ("GET", "/v1/api-keys")
FORM_EXPIRED = "The sign-in form expired. Please try again."
LINK_USED = "This sign-in link was used already or expired."


def sign_in_error(decision: Decision) -> str:
    """Why a key may not sign in, as the sign-in page says it."""
    if decision.status == 403 and decision.message.startswith("IP address"):
        return decision.message
    if decision.status == 403:
        return "Only a full-access key can sign in to the console."
    if decision.status == 429:
        return decision.message
    return (
        "This key cannot sign in: it is unknown, inactive, expired or rolled, "
        "or its account is suspended."
    )


class SignIn:
    """The sign-in pages, before any session: each form carries a double-submit token."""

    def __init__(self, pages: Pages) -> None:
        self.pages = pages
        self.console = pages.console

    def page(self, request: Request, template: str, status: int, **context: Any) -> Response:
        # A cross-site form cannot send the SameSite=Strict cookie that the token
        # must match, so it cannot sign a browser in to the sender's account.
        token = new_secret()
        response = self.pages.render(template, status, token=token, **context)
        cookie = cookie_header(SIGN_IN_COOKIE, token, secure=is_https(request))
        response.headers.append("set-cookie", cookie)
        return response

    def form(self, request: Request, status: int = 200, error: str | None = None) -> Response:
        return self.page(request, "sign_in.html", status, error=error)

    async def posted(self, request: Request) -> Form | Response:
        try:
            form = await read_form(request)
        except FormRefused as refused:
            return self.pages.refusal(refused.status, refused.message)
        expected = request.cookies.get(SIGN_IN_COOKIE, "")
        if not expected or not tokens_match(first(form, "token"), expected):
            return self.form(request, 403, FORM_EXPIRED)
        return form

    async def begin(self, request: Request, account_id: int, key_id: int | None) -> Response:
        """A new session for the browser, then the keys page."""
        session_id, at = new_secret(), now()
        session = Session(account_id, key_id, self.console.client(request), at, at)
        sessions = self.console.sessions
        await run_in_threadpool(sessions.end_idle, at)
        await run_in_threadpool(sessions.create, hashed(session_id), session)
        secure = is_https(request)
        return redirect(
            f"{PREFIX}/keys",
            cookie_header(SESSION_COOKIE, session_id, secure=secure),
            expired_cookie_header(SIGN_IN_COOKIE, secure=secure),
        )


def add_sign_in(router: APIRouter, pages: Pages) -> None:
    """``/console/``, sign-in, one-time links and sign-out."""
    sign_in = SignIn(pages)
    console = pages.console

    @router.get("/")
    async def home(request: Request) -> Response:
        if await pages.signed_in(request) is not None:
            return redirect(f"{PREFIX}/keys")
        return sign_in.form(request)

    @router.get("")
    async def bare() -> Response:
        return redirect(f"{PREFIX}/")

    @router.post("/sign-in")
    async def with_key(request: Request) -> Response:
        form = await sign_in.posted(request)
        if isinstance(form, Response):
            return form
        token = first(form, "api_key").strip() or None
        method, path = SIGN_IN_PROBE
        client, decider = console.client(request), console.decider
        decision = decider.decide(token, client, method, path, fetch=False)
        if decision is UNCACHED:  # a bounded snapshot's key: read it without blocking
            decision = await decider.decide_after_read(token, client, method, path)
        if decision.allowed and decision.account_id is not None:
            return await sign_in.begin(request, decision.account_id, decision.key_id)
        return sign_in.form(request, decision.status, sign_in_error(decision))

    @router.get("/link/{token}")
    async def link(request: Request, token: str) -> Response:
        # Opening the link only shows a button: a mail scanner that fetches every
        # link does not use it up, and the session cookie is set by a same-site
        # POST, which SameSite=Strict lets the next page see.
        return sign_in.page(request, "link.html", 200, link=token)

    @router.post("/link")
    async def with_link(request: Request) -> Response:
        # The token travels in the form, not the address: the request line, which
        # access logs and proxies write down, carries no secret.
        form = await sign_in.posted(request)
        if isinstance(form, Response):
            return form
        token = first(form, "link")
        account_id = await run_in_threadpool(console.sessions.use_link, hashed(token), now())
        if account_id is None or account_id in console.cache.blocked_accounts:
            return sign_in.form(request, 400, LINK_USED)
        return await sign_in.begin(request, account_id, None)

    @router.post("/sign-out")
    async def sign_out(request: Request) -> Response:
        checked = await pages.posted(request)
        if isinstance(checked, Response):
            return checked
        signed, _form = checked
        await run_in_threadpool(console.sessions.end, signed.id_hash)
        return pages.signed_out(request)


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
