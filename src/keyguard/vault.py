"""The server secret and what it protects.

Three keys are derived from the server secret with HKDF-SHA256:

* a MAC key: ``digest(token)`` is HMAC-SHA256, the value keys are looked up by.
  Keys are random with ~190 bits of entropy, so a fast keyed hash is enough
  (NIST SP 800-63B); a password hash here would turn every request into a
  denial-of-service lever.
* an encryption key: ``seal(token)`` is AES-256-GCM, bound to the key's digest,
  so the secret can be shown again without being stored in plain text.
* a check key: ``check_value`` is HMAC-SHA256 of a fixed label, kept in the
  database so that a start with another secret is refused (:func:`verify_secret`).
"""

import hashlib
import hmac
import os
import secrets
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from keyguard.errors import ConfigurationError
from keyguard.storage import Store

MIN_SECRET_BYTES = 32
_NONCE_BYTES = 12


def _derive(secret: bytes, purpose: bytes) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=purpose).derive(secret)


class Vault:
    """Digests and seals key values under the server secret."""

    def __init__(self, secret: bytes) -> None:
        if len(secret) < MIN_SECRET_BYTES:
            raise ConfigurationError(
                f"The server secret must be at least {MIN_SECRET_BYTES} bytes long."
            )
        mac_key = _derive(secret, b"keyguard key digest v1")
        # HMAC (RFC 2104) with its two keyed SHA-256 states computed once: each
        # digest then costs two hash copies instead of a fresh HMAC setup, a
        # third of the time on the request path. The result is plain HMAC-SHA256.
        self._inner = hashlib.sha256(bytes(byte ^ 0x36 for byte in mac_key.ljust(64, b"\0")))
        self._outer = hashlib.sha256(bytes(byte ^ 0x5C for byte in mac_key.ljust(64, b"\0")))
        self._aead = AESGCM(_derive(secret, b"keyguard key display v1"))
        check_key = _derive(secret, b"keyguard secret check v1")
        self.check_value = hmac.digest(check_key, b"keyguard server secret", "sha256")

    def digest(self, token: str) -> bytes:
        """HMAC-SHA256 of the token under the derived MAC key."""
        inner = self._inner.copy()
        inner.update(token.encode())
        outer = self._outer.copy()
        outer.update(inner.digest())
        return outer.digest()

    def seal(self, token: str, digest: bytes) -> bytes:
        nonce = os.urandom(_NONCE_BYTES)
        return nonce + self._aead.encrypt(nonce, token.encode(), digest)

    def unseal(self, sealed: bytes, digest: bytes) -> str:
        nonce, ciphertext = sealed[:_NONCE_BYTES], sealed[_NONCE_BYTES:]
        return self._aead.decrypt(nonce, ciphertext, digest).decode()


def verify_secret(vault: Vault, store: Store, wrong_secret: str) -> None:
    """Refuse, with the sentence ``wrong_secret``, a secret other than the database's.

    The database keeps the check value of the secret it was set up with. One from
    before the check value is judged by a key instead, whose ciphertext opens only
    under the right secret, and then takes the check value of this secret.
    """
    stored = store.secret_check()
    if stored is None:
        if not _opens_a_stored_key(vault, store):
            raise ConfigurationError(wrong_secret)
        stored = store.secret_check(vault.check_value)
    if stored is None or not hmac.compare_digest(stored, vault.check_value):
        raise ConfigurationError(wrong_secret)


def wrong_secret(secret_file: Path | None, generated: bool) -> str:
    """The sentence that stops a start whose secret is not the database's: from
    ``secret_file``, just ``generated`` there, or from KEYGUARD_SECRET_KEY (None)."""
    consequence = "keys made under one secret cannot be used under another"
    if secret_file is None:
        return (
            "KEYGUARD_SECRET_KEY is not the server secret this database was set up with, "
            f"and {consequence}: set it to the original."
        )
    found = (
        "was missing and keyguard generated a new one, but this database was set up with "
        "another secret"
        if generated
        else "does not hold the server secret this database was set up with"
    )
    return (
        f"The secret file {secret_file} {found}, and {consequence}: "
        "restore the original file from a backup."
    )


def _opens_a_stored_key(vault: Vault, store: Store) -> bool:
    """Whether the first live key opens under this secret (True if there is none)."""
    for key in store.changes_since(0).keys:
        if key.sealed_value:
            try:
                vault.unseal(key.sealed_value, key.digest)
            except InvalidTag:
                return False
            return True
    return True


def load_or_create_secret(path: Path) -> bytes:
    """The secret in ``path``, created (mode 0600) on first use.

    Creation is atomic (write a temporary file, then hard-link it into place), so
    several workers starting at once agree on one secret.
    """
    if not path.exists():
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        temporary = path.with_name(f".{path.name}.{secrets.token_hex(8)}")
        descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(descriptor, "w") as handle:
            handle.write(secrets.token_urlsafe(48) + "\n")
            handle.flush()
            os.fsync(handle.fileno())
        try:
            os.link(temporary, path)
        except FileExistsError:
            pass  # another process won the race; use its secret
        finally:
            temporary.unlink()
    if path.stat().st_mode & 0o077:
        raise ConfigurationError(
            f"The secret file {path} is readable by other users; run: chmod 600 {path}"
        )
    return path.read_text().strip().encode()
