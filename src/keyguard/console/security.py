"""What keeps the console's pages safe in a browser: headers, cookies, CSRF, forms.

* Every page is sent with a Content-Security-Policy that allows only keyguard's
  own scripts and styles (no inline script or style at all), is never cached and
  cannot be framed.
* The session cookie is httpOnly, ``SameSite=Strict``, limited to ``/console``,
  and ``Secure`` when the page was served over HTTPS.
* Every state-changing form carries a CSRF token derived from the session id
  (which the database does not hold); the sign-in forms, before any session,
  carry a double-submit token that matches a cookie of their own.
"""

import base64
import hmac
from urllib.parse import parse_qs

from starlette.requests import Request

from keyguard.console.sessions import derived

SESSION_COOKIE = "keyguard_console"
SIGN_IN_COOKIE = "keyguard_console_sign_in"
COOKIE_PATH = "/console"
MAX_FORM_BYTES = 64 * 1024
FORM_TYPE = "application/x-www-form-urlencoded"

CONTENT_SECURITY_POLICY = "; ".join(
    (
        "default-src 'none'",
        "script-src 'self'",
        "style-src 'self'",
        "img-src 'self'",
        "connect-src 'self'",
        "form-action 'self'",
        "frame-ancestors 'none'",
        "base-uri 'none'",
    )
)
PAGE_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "Cache-Control": "no-store",
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    # A one-time sign-in link is in the address bar of the page it opens.
    "Referrer-Policy": "no-referrer",
}


class FormRefused(Exception):  # noqa: N818 - a fact about a request, like httpx's
    """A POST that is not a form of this console's: too large, wrong type, or bad token."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def csrf_token(session_id: str) -> str:
    """The token a session's forms carry: only its browser can compute it."""
    return base64.urlsafe_b64encode(derived(session_id, b"csrf")).decode().rstrip("=")


def tokens_match(given: str, expected: str) -> bool:
    return hmac.compare_digest(given.encode(), expected.encode())


def is_https(request: Request) -> bool:
    return request.url.scheme == "https"


def cookie_header(name: str, value: str, *, secure: bool) -> str:
    """A Set-Cookie value that scripts cannot read and other sites cannot send."""
    attributes = [f"{name}={value}", f"Path={COOKIE_PATH}", "HttpOnly", "SameSite=Strict"]
    if secure:
        attributes.append("Secure")
    return "; ".join(attributes)


def expired_cookie_header(name: str, *, secure: bool) -> str:
    return cookie_header(name, "", secure=secure) + "; Max-Age=0"


async def read_form(request: Request) -> dict[str, list[str]]:
    """The urlencoded body of a POST, at most 64 KiB."""
    content_type = request.headers.get("content-type", "").partition(";")[0].strip().lower()
    if content_type != FORM_TYPE:
        raise FormRefused(415, "This console accepts its own forms only.")
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_FORM_BYTES:
            raise FormRefused(413, "The form is too large.")
    try:
        text = body.decode()
    except UnicodeDecodeError:
        raise FormRefused(400, "The form is not UTF-8.") from None
    try:
        return parse_qs(text, keep_blank_values=True, max_num_fields=1000)
    except ValueError:
        raise FormRefused(413, "The form has too many fields.") from None
