import hmac
import stat
import threading
from pathlib import Path

import pytest
from cryptography.exceptions import InvalidTag

from keyguard.errors import ConfigurationError
from keyguard.vault import Vault, _derive, load_or_create_secret

SECRET = b"s" * 32


def test_digest_is_keyed_and_stable() -> None:
    assert Vault(SECRET).digest("kg_x") == Vault(SECRET).digest("kg_x")
    assert Vault(SECRET).digest("kg_x") != Vault(b"t" * 32).digest("kg_x")
    assert len(Vault(SECRET).digest("kg_x")) == 32


def test_sealed_value_opens_only_with_its_digest_and_secret() -> None:
    vault = Vault(SECRET)
    digest = vault.digest("kg_secret")
    sealed = vault.seal("kg_secret", digest)
    assert b"kg_secret" not in sealed
    assert vault.unseal(sealed, digest) == "kg_secret"
    with pytest.raises(InvalidTag):
        vault.unseal(sealed, vault.digest("kg_other"))
    with pytest.raises(InvalidTag):
        Vault(b"t" * 32).unseal(sealed, digest)


def test_sealing_twice_gives_different_ciphertexts() -> None:
    vault = Vault(SECRET)
    digest = vault.digest("kg_x")
    assert vault.seal("kg_x", digest) != vault.seal("kg_x", digest)


def test_short_secret_is_refused() -> None:
    with pytest.raises(ConfigurationError, match="at least 32 bytes"):
        Vault(b"short")


def test_secret_file_is_created_once_with_mode_0600(tmp_path: Path) -> None:
    path = tmp_path / "nested" / "keyguard.secret"
    first = load_or_create_secret(path)
    assert len(first) >= 32
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert load_or_create_secret(path) == first


def test_concurrent_first_starts_agree_on_one_secret(tmp_path: Path) -> None:
    path = tmp_path / "keyguard.secret"
    results: list[bytes] = []
    threads = [
        threading.Thread(target=lambda: results.append(load_or_create_secret(path)))
        for _ in range(8)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(set(results)) == 1
    assert [entry.name for entry in tmp_path.iterdir()] == ["keyguard.secret"]


def test_secret_file_readable_by_others_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "keyguard.secret"
    load_or_create_secret(path)
    path.chmod(0o644)
    with pytest.raises(ConfigurationError, match="chmod 600"):
        load_or_create_secret(path)


def test_digest_is_plain_hmac_sha256_under_the_derived_key() -> None:
    token = "kg_" + "x" * 38
    expected = hmac.digest(_derive(SECRET, b"keyguard key digest v1"), token.encode(), "sha256")
    assert Vault(SECRET).digest(token) == expected
