"""``/console/``: the tenant's pages, composed into one router.

Server-rendered forms that post and redirect, on the same
:class:`~keyguard.service.KeyService` as the HTTP API, so that what the console
does is what the API would have done. The pages are not API routes: no key is
presented with them, and the gate in front of ``/v1/`` never sees them; a
session cookie stands for the key that signed in (:mod:`keyguard.console.pages`).
"""

from importlib.resources import files
from pathlib import Path

from fastapi import APIRouter, HTTPException
from fastapi.responses import FileResponse

from keyguard.console.audit import add_audit
from keyguard.console.keys import add_keys
from keyguard.console.pages import PREFIX, Console, Pages
from keyguard.console.signin import add_sign_in, console_link_router
from keyguard.console.usage import add_usage

STATIC_TYPES = {"console.css": "text/css", "console.js": "text/javascript"}


def console_router(console: Console) -> APIRouter:
    """The console's pages and assets under ``/console/``."""
    router = APIRouter(prefix=PREFIX, include_in_schema=False)
    pages = Pages(console)
    add_sign_in(router, pages)
    add_keys(router, pages)
    add_audit(router, pages)
    add_usage(router, pages)

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


__all__ = ["Console", "console_link_router", "console_router"]
