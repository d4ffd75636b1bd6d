import hmac
import stat
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from cryptography.exceptions import InvalidTag
from pydantic import SecretStr

from keyguard.config import Settings
from keyguard.errors import ConfigurationError
from keyguard.runtime import Keyguard
from keyguard.storage import Store, open_store
from keyguard.storage.sql import SQLStore
from keyguard.vault import Vault, _derive, load_or_create_secret
from tests.conftest import TEST_SECRET, downgrade

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


# -- the secret a database was set up with ---------------------------------------------

OTHER_SECRET = SecretStr("another-secret-" + "fedcba9876543210" * 3)


@contextmanager
def started(settings: Settings, store: Store | None = None) -> Iterator[Keyguard]:
    """keyguard started on the database as a server starts it; stopped afterwards."""
    runtime = Keyguard(settings, store)
    try:
        runtime.store.migrate()
        runtime.start()
        yield runtime
    finally:
        runtime.stop()


def start_and_stop(settings: Settings, store: Store | None = None) -> Keyguard:
    with started(settings, store) as runtime:
        return runtime


def with_secret(database_url: str, secret: SecretStr) -> Settings:
    return Settings(database_url=database_url, secret_key=secret)


def recorded_check(database_url: str) -> bytes | None:
    store = open_store(database_url)
    try:
        return store.secret_check()
    finally:
        store.close()


def test_first_start_records_a_check_value_that_is_not_the_secret(database_url: str) -> None:
    start_and_stop(with_secret(database_url, TEST_SECRET))
    start_and_stop(with_secret(database_url, TEST_SECRET))

    check = recorded_check(database_url)
    assert check == Vault(TEST_SECRET.get_secret_value().encode()).check_value
    assert len(check) == 32
    assert TEST_SECRET.get_secret_value().encode() not in check


def test_if_keyguard_secret_key_is_not_the_databases_then_the_start_is_refused(
    database_url: str,
) -> None:
    with started(with_secret(database_url, TEST_SECRET)) as runtime:
        runtime.service.create_account("acme")

    with pytest.raises(ConfigurationError) as caught:
        start_and_stop(with_secret(database_url, OTHER_SECRET))

    assert caught.value.message == (
        "KEYGUARD_SECRET_KEY is not the server secret this database was set up with, and "
        "keys made under one secret cannot be used under another: set it to the original."
    )
    assert recorded_check(database_url) == runtime.vault.check_value


def test_if_the_secret_file_went_missing_then_the_start_is_refused_until_it_is_restored(
    database_url: str, tmp_path: Path
) -> None:
    secret_file = tmp_path / "secrets" / "keyguard.secret"
    settings = Settings(database_url=database_url, secret_file=secret_file)
    with started(settings) as runtime:
        account, first_key = runtime.service.create_account("acme")
    backup = secret_file.read_bytes()
    secret_file.unlink()

    with pytest.raises(ConfigurationError) as caught:
        start_and_stop(settings)

    assert caught.value.message == (
        f"The secret file {secret_file} was missing and keyguard generated a new one, but "
        "this database was set up with another secret, and keys made under one secret "
        "cannot be used under another: restore the original file from a backup."
    )
    secret_file.write_bytes(backup)
    with started(settings) as restored:
        assert restored.service.list_keys(account.id)[0].value == first_key.value


def test_if_the_secret_file_was_replaced_then_the_start_is_refused(
    database_url: str, tmp_path: Path
) -> None:
    secret_file = tmp_path / "keyguard.secret"
    settings = Settings(database_url=database_url, secret_file=secret_file)
    start_and_stop(settings)
    secret_file.write_text(OTHER_SECRET.get_secret_value())

    with pytest.raises(ConfigurationError) as caught:
        start_and_stop(settings)

    assert caught.value.message == (
        f"The secret file {secret_file} does not hold the server secret this database was "
        "set up with, and keys made under one secret cannot be used under another: restore "
        "the original file from a backup."
    )


def database_from_before_the_check(database_url: str, secret: SecretStr, keys: int) -> None:
    """A database at the schema before the check value, with ``keys`` accounts made under
    ``secret``."""
    store = open_store(database_url)
    assert isinstance(store, SQLStore)
    store.migrate()
    runtime = Keyguard(with_secret(database_url, secret), store)
    for number in range(keys):
        runtime.service.create_account(f"account {number}")
    downgrade(store, "0003")
    store.close()


def test_a_database_from_before_the_check_is_judged_by_its_keys(database_url: str) -> None:
    database_from_before_the_check(database_url, TEST_SECRET, keys=2)

    with pytest.raises(ConfigurationError, match=r"^KEYGUARD_SECRET_KEY is not the server"):
        start_and_stop(with_secret(database_url, OTHER_SECRET))
    assert recorded_check(database_url) is None

    runtime = start_and_stop(with_secret(database_url, TEST_SECRET))
    assert recorded_check(database_url) == runtime.vault.check_value


def test_a_database_from_before_the_check_without_keys_takes_the_secret_it_starts_with(
    database_url: str,
) -> None:
    database_from_before_the_check(database_url, TEST_SECRET, keys=0)

    runtime = start_and_stop(with_secret(database_url, OTHER_SECRET))

    assert recorded_check(database_url) == runtime.vault.check_value
