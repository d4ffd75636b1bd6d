"""GitHub's secret scanning partner protocol, without I/O.

GitHub looks for a partner's token pattern in public code and POSTs what it finds
to the partner: a JSON array of ``{"token", "type", "url", "source"}``, signed
with ECDSA P-256 over SHA-256 of the raw body. The signature travels base64 DER
encoded in ``Github-Public-Key-Signature``, the id of the signing key in
``Github-Public-Key-Identifier``; GitHub publishes its keys at :data:`KEYS_URL`
as ``{"public_keys": [{"key_identifier", "key", "is_current"}]}``. The partner
answers, for each token, whether it was a real credential.
"""

import base64
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import load_pem_public_key

from keyguard.errors import InvalidInput

KEYS_URL = "https://api.github.com/meta/public_keys/secret_scanning"
KEY_ID_HEADER = "github-public-key-identifier"
SIGNATURE_HEADER = "github-public-key-signature"
# Where a token was found is recorded in the audit trail; a longer text is cut.
MAX_RECORDED_LENGTH = 2048

Label = Literal["true_positive", "false_positive"]


@dataclass(frozen=True, slots=True)
class PublicKeys:
    """GitHub's signing keys, by identifier."""

    by_id: Mapping[str, ec.EllipticCurvePublicKey]

    def verify(self, body: bytes, key_id: str | None, signature: str | None) -> bool:
        """Whether ``signature`` signs exactly ``body`` with the key named ``key_id``.

        Any listed key counts, current or not: GitHub names the one it used.
        """
        key = self.by_id.get(key_id) if key_id else None
        if key is None or not signature:
            return False
        try:
            key.verify(base64.b64decode(signature, validate=True), body, ec.ECDSA(hashes.SHA256()))
        except (ValueError, InvalidSignature):  # not base64, not DER, or not this body's
            return False
        return True


def parse_public_keys(text: str) -> PublicKeys:
    """GitHub's published key list; a ``ValueError`` that says what is wrong with it."""
    try:
        document = json.loads(text)
    except (ValueError, RecursionError):
        raise ValueError("it is not JSON") from None
    entries = document.get("public_keys") if isinstance(document, dict) else None
    if not isinstance(entries, list) or not entries:
        raise ValueError('it has no "public_keys" list with a key in it')
    keys: dict[str, ec.EllipticCurvePublicKey] = {}
    for number, entry in enumerate(entries, 1):
        identifier = entry.get("key_identifier") if isinstance(entry, dict) else None
        pem = entry.get("key") if isinstance(entry, dict) else None
        if not isinstance(identifier, str) or not identifier or not isinstance(pem, str):
            raise ValueError(f'public key {number} lacks "key_identifier" or "key"')
        keys[identifier] = _p256_key(pem, number)
    return PublicKeys(keys)


def _p256_key(pem: str, number: int) -> ec.EllipticCurvePublicKey:
    try:
        key = load_pem_public_key(pem.encode())
    except (ValueError, UnsupportedAlgorithm):
        raise ValueError(f"public key {number} is not a PEM public key") from None
    if not isinstance(key, ec.EllipticCurvePublicKey) or not isinstance(key.curve, ec.SECP256R1):
        raise ValueError(f"public key {number} is not an ECDSA P-256 key")
    return key


@dataclass(frozen=True, slots=True)
class Match:
    """One string GitHub found: the token, the name of the pattern it matched, and where."""

    token: str
    type: str
    url: str | None = None
    source: str | None = None

    def where(self) -> dict[str, str | None]:
        """Where it was found, as the audit trail records it: never the token."""
        return {"url": self.url, "source": self.source}


def parse_report(body: bytes) -> list[Match]:
    """The matches of a report whose signature was verified; ``InvalidInput`` if malformed."""
    try:
        document = json.loads(body)
    except (ValueError, RecursionError):
        raise InvalidInput.parameter("body") from None
    if not isinstance(document, list):
        raise InvalidInput.parameter("body")
    return [_match(item) for item in document]


def _match(item: object) -> Match:
    if not isinstance(item, dict):
        raise InvalidInput.parameter("body")
    token, kind = item.get("token"), item.get("type")
    if not isinstance(token, str) or not token:
        raise InvalidInput.parameter("token")
    if not isinstance(kind, str):
        raise InvalidInput.parameter("type")
    return Match(token, kind, _recorded(item, "url"), _recorded(item, "source"))


def _recorded(item: Mapping[str, object], name: str) -> str | None:
    """A text field kept as evidence: printable (PostgreSQL stores no NUL) and bounded."""
    value = item.get(name)
    if value is None:
        return None
    if not isinstance(value, str):
        raise InvalidInput.parameter(name)
    return "".join(char if char.isprintable() else "?" for char in value[:MAX_RECORDED_LENGTH])


def feedback(match: Match, real: bool) -> dict[str, str]:
    """GitHub's feedback format for one match: was its token a real credential?"""
    label: Label = "true_positive" if real else "false_positive"
    return {"token_raw": match.token, "token_type": match.type, "label": label}
