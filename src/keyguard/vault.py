"""The server secret and what it protects.

Three keys are derived from the server secret with HKDF-SHA256:

* a MAC key: ``digest(token)`` is HMAC-SHA256, the value keys are looked up by.
  Keys are random with ~190 bits of entropy, so a fast keyed hash is enough
  (NIST SP 800-63B); a password hash here would turn every request into a
  denial-of-service lever.
* an encryption key: ``seal(token)`` is AES-256-GCM, bound to the key's digest,
  so the secret can be shown again without being stored in plain text.
* a second MAC key for keys imported by the SHA-256 digest another system kept:
  ``sha256_digest(sha256(token))``. A key of its own, so that a digest, presented
  as a token, never matches such a key.
* a check key: ``check_value`` is HMAC-SHA256 of a fixed label, kept in the
  database so that a start with another secret is refused (:func:`verify_secret`).

A vault may also hold the *previous* secret while the server secret is rotated:
keys are then found and opened under either, and :func:`rotate` rewrites each
one from the previous secret to the current one (see the README, "The server
secret").
"""

import hashlib
import hmac
import os
import secrets
from collections.abc import Callable
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from keyguard.domain.records import StoredKey
from keyguard.errors import ConfigurationError
from keyguard.storage import KeyRewrite, Store

MIN_SECRET_BYTES = 32
_NONCE_BYTES = 12


def _derive(secret: bytes, purpose: bytes) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=purpose).derive(secret)


def _hmac_states(key: bytes) -> tuple["hashlib._Hash", "hashlib._Hash"]:
    """HMAC's (RFC 2104) two keyed SHA-256 states, computed once: each digest then
    costs two hash copies instead of a fresh HMAC setup, a third of the time on the
    request path. The result is plain HMAC-SHA256."""
    padded = key.ljust(64, b"\0")
    inner = hashlib.sha256(bytes(byte ^ 0x36 for byte in padded))
    return inner, hashlib.sha256(bytes(byte ^ 0x5C for byte in padded))


class Vault:
    """Digests and seals key values under the server secret.

    ``previous`` is the secret being rotated away from, if any: :meth:`unseal`
    opens values sealed under it too, and :attr:`previous` digests under it for
    a lookup that missed. Everything new is made under ``secret``.
    """

    def __init__(self, secret: bytes, previous: bytes | None = None) -> None:
        if len(secret) < MIN_SECRET_BYTES:
            raise ConfigurationError(
                f"The server secret must be at least {MIN_SECRET_BYTES} bytes long."
            )
        if previous is not None and len(previous) < MIN_SECRET_BYTES:
            raise ConfigurationError(
                f"The previous server secret must be at least {MIN_SECRET_BYTES} bytes long."
            )
        if previous is not None and hmac.compare_digest(previous, secret):
            raise ConfigurationError(
                "The previous server secret is the current one: set the current server "
                "secret to the new secret and the previous one to the secret it replaces."
            )
        self.previous = None if previous is None else Vault(previous)
        mac_key = _derive(secret, b"keyguard key digest v1")
        self._inner, self._outer = _hmac_states(mac_key)
        imported_key = _derive(secret, b"keyguard imported sha256 digest v1")
        self._imported_inner, self._imported_outer = _hmac_states(imported_key)
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

    def sha256_digest(self, sha256: bytes) -> bytes:
        """What a key imported by its SHA-256 digest is looked up by: HMAC-SHA256 of
        that digest (32 raw bytes) under the second MAC key."""
        inner = self._imported_inner.copy()
        inner.update(sha256)
        outer = self._imported_outer.copy()
        outer.update(inner.digest())
        return outer.digest()

    def imported_digest(self, token: str) -> bytes:
        """The digest a key imported by SHA-256 would be stored under, were ``token`` its secret."""
        return self.sha256_digest(hashlib.sha256(token.encode()).digest())

    def seal(self, token: str, digest: bytes) -> bytes:
        nonce = os.urandom(_NONCE_BYTES)
        return nonce + self._aead.encrypt(nonce, token.encode(), digest)

    def unseal(self, sealed: bytes, digest: bytes) -> str:
        """The token sealed under this secret or the previous one; ``InvalidTag`` if neither."""
        try:
            return self._open(sealed, digest)
        except InvalidTag:
            if self.previous is None:
                raise
            return self.previous._open(sealed, digest)

    def opens(self, sealed: bytes, digest: bytes) -> bool:
        """Whether the value was sealed under this secret itself (not the previous one)."""
        try:
            self._open(sealed, digest)
        except InvalidTag:
            return False
        return True

    def check_values(self) -> tuple[bytes, ...]:
        """The check values a database may hold: this secret's, then the previous one's."""
        if self.previous is None:
            return (self.check_value,)
        return (self.check_value, self.previous.check_value)

    def _open(self, sealed: bytes, digest: bytes) -> str:
        nonce, ciphertext = sealed[:_NONCE_BYTES], sealed[_NONCE_BYTES:]
        return self._aead.decrypt(nonce, ciphertext, digest).decode()


def verify_secret(vault: Vault, store: Store, wrong_secret: str) -> None:
    """Refuse, with the sentence ``wrong_secret``, a secret other than the database's.

    The database keeps the check value of the secret it was set up with; while a
    previous secret is configured, either secret's value is accepted, since a
    rotation changes the stored one only once every key has been rewritten. A
    database from before the check value is judged by a key instead, whose
    ciphertext opens only under the right secret, and then takes the check value
    of the secret that opened it.
    """
    stored = store.secret_check()
    if stored is None:
        opener = _secret_of_a_stored_key(vault, store)
        if opener is None:
            raise ConfigurationError(wrong_secret)
        stored = store.secret_check(opener.check_value)
    if stored is None or not any(
        hmac.compare_digest(stored, accepted) for accepted in vault.check_values()
    ):
        raise ConfigurationError(wrong_secret)


def wrong_secret(secret_file: Path | None, generated: bool, previous: str | None = None) -> str:
    """The sentence that stops a start whose secret is not the database's: from
    ``secret_file``, just ``generated`` there, or from KEYGUARD_SECRET_KEY (None).

    ``previous`` names where a previous secret came from, when one is configured.
    """
    consequence = "keys made under one secret cannot be used under another"
    if previous is not None:
        current = "KEYGUARD_SECRET_KEY" if secret_file is None else f"the secret file {secret_file}"
        return (
            f"Neither {current} nor {previous} holds the server secret this database was set "
            f"up with, and {consequence}: set one of them to the original."
        )
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


def _secret_of_a_stored_key(vault: Vault, store: Store) -> Vault | None:
    """The secret (current or previous) the first live key opens under: the current
    one if there is no key, None if the key opens under neither."""
    for key in store.changes_since(0).keys:
        if key.sealed_value:
            for candidate in (vault, vault.previous):
                if candidate is not None and candidate.opens(key.sealed_value, key.digest):
                    return candidate
            return None
    return vault


# -- rotation ------------------------------------------------------------------

ROTATION_BATCH = 500
ROTATION_PASSES = 3
_UNFINISHED = "rotate-secret stopped unfinished, and servers still need the previous secret."


def rotate(
    vault: Vault,
    store: Store,
    batch: int = ROTATION_BATCH,
    progress: Callable[[int], None] | None = None,
) -> int:
    """Rewrite every key still under the previous secret under the current one, then
    make the current secret the one the database expects; return how many keys moved.

    Each batch of ``batch`` keys is one transaction that moves the change revision,
    so every running instance takes the new digests in within its refresh interval;
    instances configured with both secrets find a key under either meanwhile. A key
    deleted or rewritten since it was read is left alone, and a rotation that was
    interrupted resumes where it stopped. Keys made under the previous secret while
    a pass runs are moved by the next pass; if they still appear after
    ``ROTATION_PASSES`` passes, some instance makes keys under the previous secret,
    and the rotation stops without changing the secret the database expects.
    ``progress`` receives the number of keys moved so far after each batch.
    """
    moved = 0
    for _pass in range(ROTATION_PASSES):
        pending = _pending(vault, store)
        if not pending:
            store.replace_secret_check(vault.check_value)
            return moved
        for start in range(0, len(pending), batch):
            moved += store.rewrite_keys(pending[start : start + batch])
            if progress is not None:
                progress(moved)
    raise ConfigurationError(
        f"Keys under the previous server secret kept appearing ({len(pending)} in the last "
        "pass): some instance still makes keys with the previous secret as its current one. "
        "Restart every instance with the new secret as current and the old one as previous, "
        f"then run rotate-secret again; {_UNFINISHED}"
    )


def _pending(vault: Vault, store: Store) -> list[KeyRewrite]:
    rewrites = (_rewrite(vault, key) for key in store.changes_since(0).keys)
    return [rewrite for rewrite in rewrites if rewrite is not None]


def _rewrite(vault: Vault, key: StoredKey) -> KeyRewrite | None:
    """The key's digest and sealed value under the current secret; None if it has them."""
    if not key.sealed_value:
        # Every key keyguard makes is sealed; one known by its digest alone (an
        # imported key) could not be derived again under another secret.
        raise ConfigurationError(
            f"Key {key.id} of account {key.account_id} is stored by its digest alone, so it "
            f"cannot be rewritten under the new secret; {_UNFINISHED}"
        )
    try:
        token = vault.unseal(key.sealed_value, key.digest)
    except InvalidTag:
        raise ConfigurationError(
            f"Key {key.id} of account {key.account_id} opens under neither the current nor "
            f"the previous server secret, so it cannot be rewritten; {_UNFINISHED}"
        ) from None
    digest = vault.digest(token)
    if hmac.compare_digest(digest, key.digest):
        return None
    return KeyRewrite(key.id, key.digest, digest, vault.seal(token, digest))


# -- secret files ----------------------------------------------------------------


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
    return read_secret(path)


def read_secret(path: Path, name: str = "secret file") -> bytes:
    """The secret in ``path``, a file only its owner may read; ``name`` names it in errors."""
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        raise ConfigurationError(f"The {name} {path} does not exist.") from None
    if mode & 0o077:
        raise ConfigurationError(
            f"The {name} {path} is readable by other users; run: chmod 600 {path}"
        )
    return path.read_text().strip().encode()
