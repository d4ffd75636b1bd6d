"""Tokens that keyguard's own callers present: operators, metrics scrapers, verify callers.

A configured token (``KEYGUARD_ADMIN_TOKEN``, ``KEYGUARD_METRICS_TOKEN``,
``KEYGUARD_VERIFY_TOKEN``) is
presented as the one ``Authorization: Bearer`` header of a request and compared
in constant time. Two ``Authorization`` headers are refused, as they are for
keys: a proxy and keyguard might each read a different one. A wrong token is a
failed authentication of the caller, counted against the same limit as a wrong
key, so that guessing a token is throttled like guessing a key. Routes ask for a
token with the :func:`token_holder` dependency. GitHub's signature on a secret
scanning report is checked under the same limit (:func:`admit`).
"""

import hashlib
import hmac
from collections.abc import Awaitable, Callable, Iterable

from fastapi import Request
from pydantic import SecretStr

from keyguard.decide import TOO_MANY_FAILURES, failure_unit
from keyguard.domain.keys import bearer_token
from keyguard.errors import RateLimited, Unauthorized
from keyguard.limits import WindowLimiter


def presented_token(headers: Iterable[tuple[bytes, bytes]]) -> str | None:
    """The bearer token of the one ``Authorization`` header; None if there are none or several."""
    found = [value for name, value in headers if name == b"authorization"]
    if len(found) != 1:
        return None
    return bearer_token(found[0].decode("latin-1"))


def matches(presented: str | None, expected: SecretStr) -> bool:
    """Whether ``presented`` is ``expected``, in time independent of both.

    Both are hashed first, so the comparison does not reveal the token's length either.
    """
    if presented is None:
        return False
    given = hashlib.sha256(presented.encode()).digest()
    wanted = hashlib.sha256(expected.get_secret_value().encode()).digest()
    return hmac.compare_digest(given, wanted)


def authenticate(
    headers: Iterable[tuple[bytes, bytes]],
    expected: SecretStr,
    client: str | None,
    failures: WindowLimiter | None,
) -> None:
    """Admit a caller that presents ``expected``, or raise as :func:`admit` does;
    a missing, wrong or doubled token is a failed authentication."""
    admit(client, failures, lambda: matches(presented_token(headers), expected))


def admit(client: str | None, failures: WindowLimiter | None, proof: Callable[[], bool]) -> None:
    """Admit a caller whose credential holds (``proof``), or raise.

    Raises :class:`RateLimited` while ``client`` is over the failed-authentication
    limit, before looking at the credential: a throttled caller learns nothing, even
    from the right one. Raises :class:`Unauthorized` when ``proof`` fails, and
    charges the failure to ``client``.
    """
    unit = failure_unit(client)
    if failures is not None and failures.blocked:
        wait = failures.retry_after(unit)
        if wait is not None:
            raise RateLimited(TOO_MANY_FAILURES.format(wait), wait)
    if proof():
        return
    if failures is not None:
        wait = failures.hit(unit)
        if wait is not None:
            raise RateLimited(TOO_MANY_FAILURES.format(wait), wait)
    raise Unauthorized()


def token_holder(
    expected: SecretStr,
    client: Callable[[Request], str | None],
    failures: WindowLimiter | None,
) -> Callable[[Request], Awaitable[str | None]]:
    """A dependency that admits only callers presenting ``expected`` (see
    :func:`authenticate`) and gives their address, as ``client`` finds it."""

    async def holder(request: Request) -> str | None:
        address = client(request)
        authenticate(request.scope["headers"], expected, address, failures)
        return address

    return holder
