"""The API-key token: ``<prefix>_<body><checksum>``.

* ``body`` is 32 base62 characters from a CSPRNG: about 190 bits of entropy.
* ``checksum`` is the CRC-32 of ``<prefix>_<body>`` in 6 base62 characters, so a
  mistyped or truncated token is refused before any lookup, and a secret scanner
  can tell a real keyguard key from random text.

Parsing is cheap and total: it returns ``None`` for anything that is not a
well-formed token, and never raises.
"""

import re
import secrets
import zlib

ALPHABET = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
BODY_LENGTH = 32
CHECKSUM_LENGTH = 6
MAX_PREFIX_LENGTH = 16
_SHAPE = re.compile(
    rf"[a-z0-9]{{1,{MAX_PREFIX_LENGTH}}}_[0-9A-Za-z]{{{BODY_LENGTH + CHECKSUM_LENGTH}}}"
)
_PAIRS = tuple(first + second for first in ALPHABET for second in ALPHABET)
_PREFIX_CHARS = frozenset("abcdefghijklmnopqrstuvwxyz0123456789")


def is_valid_prefix(prefix: str) -> bool:
    return 0 < len(prefix) <= MAX_PREFIX_LENGTH and set(prefix) <= _PREFIX_CHARS


def checksum(head: str) -> str:
    """The 6-character checksum of ``<prefix>_<body>``: its CRC-32 in base62."""
    # Two base62 digits at a time from a table: this runs for every request
    # that presents a key.
    number = zlib.crc32(head.encode("ascii"))
    number, low = divmod(number, 62 * 62)
    high, middle = divmod(number, 62 * 62)
    return _PAIRS[high] + _PAIRS[middle] + _PAIRS[low]


def generate(prefix: str) -> str:
    """A new token with the given prefix."""
    if not is_valid_prefix(prefix):
        raise ValueError(f"invalid key prefix {prefix!r}")
    body = "".join(secrets.choice(ALPHABET) for _ in range(BODY_LENGTH))
    head = f"{prefix}_{body}"
    return head + checksum(head)


def is_well_formed(token: str) -> bool:
    """True when ``token`` has the keyguard shape and a correct checksum.

    Any prefix of the allowed alphabet is accepted, so changing the configured
    prefix does not invalidate keys that were issued before.
    """
    if _SHAPE.fullmatch(token) is None:  # fails fast, however long the input
        return False
    return checksum(token[:-CHECKSUM_LENGTH]) == token[-CHECKSUM_LENGTH:]


def mask(token: str) -> str:
    """The display form of a secret: its prefix and last four characters."""
    prefix, _, tail = token.rpartition("_")
    return f"{prefix}_{'*' * 8}{tail[-4:]}"


def bearer_token(authorization: str | None) -> str | None:
    """The credential of an ``Authorization: Bearer`` header, if that is what it is.

    The scheme is case-insensitive (RFC 9110 §11.1); anything else yields ``None``.
    """
    if authorization is None:
        return None
    scheme, _, credential = authorization.strip().partition(" ")
    if scheme.lower() != "bearer":
        return None
    credential = credential.strip()
    return credential or None


def request_credential(authorizations: list[str], appids: list[str]) -> str | None:
    """The one credential a request presents, or ``None`` if it presents none or several.

    ``Authorization: Bearer`` wins over the legacy ``?appid=`` query parameter.
    Two ``Authorization`` headers, or two ``appid`` parameters, are ambiguous and
    yield ``None``: a proxy and an upstream might each pick a different one.
    """
    if authorizations:
        return bearer_token(authorizations[0]) if len(authorizations) == 1 else None
    if len(appids) == 1:
        return appids[0] or None
    return None
