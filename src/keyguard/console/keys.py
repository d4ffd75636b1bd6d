"""The keys pages: the table, the create and edit form, the secret once, row actions.

Every change goes through :class:`~keyguard.service.KeyService` with the body the
API would have received, and answers with a redirect (POST-redirect-GET): a
reload never submits a form again. A new secret travels from the POST to the page
that shows it sealed in the session's row (:func:`~keyguard.console.sessions.seal_flash`),
and that page takes it out as it shows it.
"""

from collections.abc import Callable, Mapping
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import Response
from starlette.concurrency import run_in_threadpool

from keyguard.console.forms import KeyForm, field_of, first
from keyguard.console.pages import (
    NO_SUCH_KEY,
    PREFIX,
    KeyId,
    Pages,
    Signed,
    link,
    page_number,
    pager,
    redirect,
)
from keyguard.console.sessions import open_flash, seal_flash
from keyguard.console.usage import sparklines
from keyguard.errors import InvalidInput, NotFound, RateLimited

PER_PAGE = 25
GRACE_CHOICES = (
    ("0", "None: the old key stops now"),
    ("3600", "1 hour"),
    ("86400", "1 day"),
    ("604800", "7 days"),
)
DONE = {
    "updated": "The key was saved.",
    "activated": "The key was activated.",
    "deactivated": "The key was deactivated.",
    "deleted": "The key was deleted.",
    "shown": "The secret was shown once already; only its masked value is shown now.",
}


class KeyPages:
    """The pages of one account's keys."""

    def __init__(self, pages: Pages) -> None:
        self.pages = pages
        self.service = pages.service
        self.sessions = pages.sessions

    async def form(
        self,
        signed: Signed,
        form: KeyForm,
        key_id: int | None,
        *,
        errors: Mapping[str, str] | None = None,
        status: int = 200,
    ) -> Response:
        context = await self.pages.common(signed)
        return self.pages.render(
            "key_form.html", status, **context, form=form, key_id=key_id, errors=errors or {}
        )

    async def save(self, request: Request, key_id: int | None) -> Response:
        """Create (``key_id`` None) or update a key from the posted form."""
        checked = await self.pages.posted(request)
        if isinstance(checked, Response):
            return checked
        signed, posted = checked
        form = KeyForm.posted(posted, self.service.groups)
        body = form.body(editing=key_id is not None)
        service, account_id, actor = self.service, signed.account_id, signed.actor
        try:
            self.pages.limit(signed)
            if key_id is None:
                view = await run_in_threadpool(service.create_key, account_id, body, actor)
            else:
                view = await run_in_threadpool(service.update_key, account_id, key_id, body, actor)
        except (InvalidInput, RateLimited) as refused:
            status = refused.status if isinstance(refused, InvalidInput) else 429
            where = field_of(refused.message, service.groups) or "form"
            errors = {where: refused.message}
            return await self.form(signed, form, key_id, errors=errors, status=status)
        except NotFound:
            return self.pages.refusal(404, NO_SUCH_KEY)
        if key_id is not None:
            return redirect(link("keys", {"done": "updated"}))
        return await self.reveal_next(signed, view.key.id, view.value)

    async def reveal_next(self, signed: Signed, key_id: int, secret: str) -> Response:
        sealed = seal_flash(signed.session_id, f"{key_id}:{secret}")
        await run_in_threadpool(self.sessions.set_flash, signed.id_hash, sealed)
        return redirect(f"{PREFIX}/keys/{key_id}/secret")

    async def act(self, request: Request, action: Callable[[Signed], None], done: str) -> Response:
        """A row action, then back to the page of the table it was taken on."""
        checked = await self.pages.posted(request)
        if isinstance(checked, Response):
            return checked
        signed, form = checked
        refused = await self.pages.change(signed, lambda: action(signed))
        if isinstance(refused, Response):
            return refused
        back = first(form, "back")
        if not back.startswith(f"{PREFIX}/keys"):  # never a redirect elsewhere
            back = f"{PREFIX}/keys"
        separator = "&" if "?" in back else "?"
        return redirect(f"{back}{separator}done={done}")

    async def with_key(
        self, request: Request, key_id: int, template: str, **context: Any
    ) -> Response:
        """A page about one key of the account: edit, roll or delete."""
        signed = await self.pages.signed_in(request)
        if signed is None:
            return self.pages.signed_out(request)
        try:
            view = await run_in_threadpool(self.service.get_key, signed.account_id, key_id)
        except NotFound:
            return self.pages.refusal(404, NO_SUCH_KEY)
        if template == "key_form.html":
            return await self.form(signed, KeyForm.of(view, self.service.groups), key_id)
        common = await self.pages.common(signed)
        return self.pages.render(template, **common, view=view, **context)


def add_keys(router: APIRouter, pages: Pages) -> None:
    """``/console/keys`` and the pages below it."""
    keys = KeyPages(pages)
    service = pages.service

    @router.get("/keys")
    async def table(request: Request, label: str = "", page: str = "1", done: str = "") -> Response:
        signed = await pages.signed_in(request)
        if signed is None:
            return pages.signed_out(request)
        number = page_number(page)
        try:
            found = await run_in_threadpool(
                service.page_of_keys, signed.account_id, label or None, number, PER_PAGE
            )
            views, total, error = found.views, found.total, None
        except InvalidInput as refused:
            views, total, error = [], 0, refused.message
        lines = await run_in_threadpool(sparklines, service, signed.account_id, views)
        here = {"label": label} if label else {}
        return pages.render(
            "keys.html",
            **await pages.common(signed),
            **pager("keys", here, number, total, PER_PAGE),
            views=views,
            sparklines=lines,
            total=total,
            label=label,
            back=link("keys", {**here, "page": number}),
            done=DONE.get(done),
            error=error,
        )

    @router.get("/keys/new")
    async def new(request: Request) -> Response:
        signed = await pages.signed_in(request)
        if signed is None:
            return pages.signed_out(request)
        return await keys.form(signed, KeyForm.blank(service.groups), None)

    @router.post("/keys")
    async def create(request: Request) -> Response:
        return await keys.save(request, None)

    @router.get("/keys/{key_id}/secret")
    async def secret(request: Request, key_id: KeyId) -> Response:
        signed = await pages.signed_in(request)
        if signed is None:
            return pages.signed_out(request)
        sealed = await run_in_threadpool(pages.sessions.take_flash, signed.id_hash)
        opened = None if sealed is None else open_flash(signed.session_id, sealed)
        flashed_id, _, value = (opened or "").partition(":")
        if flashed_id != str(key_id):
            return redirect(link("keys", {"done": "shown"}))  # shown once, already
        try:
            view = await run_in_threadpool(service.get_key, signed.account_id, key_id)
        except NotFound:
            return redirect(f"{PREFIX}/keys")
        return pages.render("secret.html", **await pages.common(signed), view=view, value=value)

    @router.get("/keys/{key_id}/edit")
    async def edit(request: Request, key_id: KeyId) -> Response:
        return await keys.with_key(request, key_id, "key_form.html")

    @router.post("/keys/{key_id}")
    async def update(request: Request, key_id: KeyId) -> Response:
        return await keys.save(request, key_id)

    for name, active in (("activate", True), ("deactivate", False)):
        _add_toggle(router, keys, name, active)

    @router.get("/keys/{key_id}/delete")
    async def confirm_delete(request: Request, key_id: KeyId) -> Response:
        return await keys.with_key(request, key_id, "delete.html")

    @router.post("/keys/{key_id}/delete")
    async def delete(request: Request, key_id: KeyId) -> Response:
        def remove(signed: Signed) -> None:
            service.delete_key(signed.account_id, key_id, signed.actor)

        return await keys.act(request, remove, "deleted")

    @router.get("/keys/{key_id}/roll")
    async def confirm_roll(request: Request, key_id: KeyId) -> Response:
        return await keys.with_key(request, key_id, "roll.html", grace=GRACE_CHOICES)

    @router.post("/keys/{key_id}/roll")
    async def roll(request: Request, key_id: KeyId) -> Response:
        checked = await pages.posted(request)
        if isinstance(checked, Response):
            return checked
        signed, form = checked
        grace = first(form, "grace_seconds", "86400")
        body = {"grace_seconds": int(grace) if grace.isdigit() else grace}
        rolled = await pages.change(
            signed, lambda: service.roll_key(signed.account_id, key_id, body, signed.actor)
        )
        if isinstance(rolled, Response):
            return rolled
        _old, new = rolled
        return await keys.reveal_next(signed, new.key.id, new.value)


def _add_toggle(router: APIRouter, keys: KeyPages, name: str, active: bool) -> None:
    async def toggle(request: Request, key_id: KeyId) -> Response:
        def change(signed: Signed) -> None:
            keys.service.set_active(signed.account_id, key_id, active, signed.actor)

        return await keys.act(request, change, f"{name}d")

    router.add_api_route(f"/keys/{{key_id}}/{name}", toggle, methods=["POST"])
