"""Rotating the server secret: every key keeps working at every step, and afterwards
the new secret alone is needed.

The procedure (README, "The server secret"): 1. run every instance with the new
secret as current and the old one as previous; 2. ``keyguard rotate-secret``;
3. remove the previous secret.
"""

import stat
import threading
import time
from datetime import datetime
from pathlib import Path

import httpx
import pytest
from click.testing import CliRunner
from pydantic import SecretStr

from keyguard.cli import main
from keyguard.config import Settings, load_settings
from keyguard.domain.records import KeySettings
from keyguard.errors import ConfigurationError
from keyguard.runtime import Keyguard
from keyguard.storage import AuditQuery, open_store
from keyguard.storage.sql import SQLStore
from keyguard.vault import Vault, rotate
from tests.conftest import TEST_SECRET, downgrade
from tests.server import Servers
from tests.test_vault import recorded_check, started

OLD = TEST_SECRET
NEW = SecretStr("new-secret-" + "fedcba9876543210" * 3)
UNRELATED = SecretStr("unrelated-secret-" + "0123456789abcdef" * 3)
CLIENT = "203.0.113.10"

NOT_THE_DATABASES = (
    "KEYGUARD_SECRET_KEY is not the server secret this database was set up with, and "
    "keys made under one secret cannot be used under another: set it to the original."
)
UNFINISHED = "rotate-secret stopped unfinished, and servers still need the previous secret."


def settings_with(
    database_url: str, current: SecretStr, previous: SecretStr | None = None
) -> Settings:
    return Settings(
        database_url=database_url,
        secret_key=current,
        previous_secret_key=previous,
        refresh_interval=0.05,
        usage_flush_interval=0.05,
    )


def keys_made_under(database_url: str, secret: SecretStr, extra: int = 2) -> tuple[int, list[str]]:
    """An account with its first key and ``extra`` more, made under ``secret``: the
    account's id and the keys."""
    with started(settings_with(database_url, secret)) as runtime:
        account, first = runtime.service.create_account("acme")
        more = [
            runtime.service.create_key(account.id, {"label": f"key {number}"})
            for number in range(extra)
        ]
    return account.id, [first.value, *(view.value for view in more)]


def status(runtime: Keyguard, token: str) -> int:
    return runtime.decider.decide(token, CLIENT, "GET", "/v1/api-keys").status


def check_of(secret: SecretStr) -> bytes:
    return Vault(secret.get_secret_value().encode()).check_value


# -- step 1: both secrets accepted ---------------------------------------------------


def test_with_the_old_secret_as_previous_its_keys_are_allowed_and_shown_and_new_keys_use_the_new(
    database_url: str,
) -> None:
    account_id, tokens = keys_made_under(database_url, OLD)

    with started(settings_with(database_url, NEW, OLD)) as runtime:
        assert [status(runtime, token) for token in tokens] == [200] * len(tokens)
        shown = [view.value for view in runtime.service.list_keys(account_id)]
        created = runtime.service.create_key(account_id, {"label": "made during step 1"})
        assert status(runtime, created.value) == 200

    assert shown == tokens
    assert created.key.digest == Vault(NEW.get_secret_value().encode()).digest(created.value)
    assert recorded_check(database_url) == check_of(OLD)


def test_before_the_rotation_an_instance_without_the_previous_secret_refuses_to_start(
    database_url: str,
) -> None:
    keys_made_under(database_url, OLD)

    with pytest.raises(ConfigurationError) as caught, started(settings_with(database_url, NEW)):
        pass

    assert caught.value.message == NOT_THE_DATABASES


def test_while_a_previous_secret_is_set_either_secret_of_the_database_lets_keyguard_start(
    database_url: str,
) -> None:
    keys_made_under(database_url, OLD)

    for current, previous in ((NEW, OLD), (OLD, NEW)):
        with started(settings_with(database_url, current, previous)):
            pass

    assert recorded_check(database_url) == check_of(OLD)


def test_if_neither_secret_is_the_databases_then_the_start_is_refused_naming_both(
    database_url: str,
) -> None:
    keys_made_under(database_url, OLD)

    with (
        pytest.raises(ConfigurationError) as caught,
        started(settings_with(database_url, NEW, UNRELATED)),
    ):
        pass

    assert caught.value.message == (
        "Neither KEYGUARD_SECRET_KEY nor KEYGUARD_PREVIOUS_SECRET_KEY holds the server secret "
        "this database was set up with, and keys made under one secret cannot be used under "
        "another: set one of them to the original."
    )


def test_a_database_from_before_the_check_value_takes_the_check_of_the_secret_its_keys_open_under(
    database_url: str,
) -> None:
    store = open_store(database_url)
    assert isinstance(store, SQLStore)
    store.migrate()
    old = Keyguard(settings_with(database_url, OLD), store)
    _account, first = old.service.create_account("acme")
    downgrade(store, "0003")
    store.close()

    with started(settings_with(database_url, NEW, OLD)) as runtime:
        assert status(runtime, first.value) == 200

    assert recorded_check(database_url) == check_of(OLD)


def test_keys_made_under_the_new_secret_work_on_instances_that_accept_it_as_previous(
    database_url: str,
) -> None:
    """Step 0 for instances restarted one at a time: while some still run the old
    secret as current, they accept the new one as previous."""
    account_id, _tokens = keys_made_under(database_url, OLD)

    with (
        started(settings_with(database_url, OLD, NEW)) as not_yet_restarted,
        started(settings_with(database_url, NEW, OLD)) as restarted,
    ):
        created = restarted.service.create_key(account_id, {"label": "made under the new"})
        not_yet_restarted.cache.refresh()
        assert status(not_yet_restarted, created.value) == 200
        assert not_yet_restarted.service.get_key(account_id, created.key.id).value == created.value


# -- step 2: rotate-secret ------------------------------------------------------------


def test_rotation_moves_every_key_to_the_new_secret_and_then_the_new_secret_alone_is_needed(
    database_url: str,
) -> None:
    account_id, tokens = keys_made_under(database_url, OLD, extra=4)
    new_vault = Vault(NEW.get_secret_value().encode())

    with started(settings_with(database_url, NEW, OLD)) as runtime:
        before = runtime.store.list_keys(account_id)
        audited = runtime.store.list_audit(AuditQuery(account_id))
        moved = rotate(runtime.vault, runtime.store, batch=2)
        after = runtime.store.list_keys(account_id)
        assert runtime.store.list_audit(AuditQuery(account_id)) == audited

    assert moved == len(tokens)
    assert [key.digest for key in after] == [new_vault.digest(token) for token in tokens]
    assert [new_vault.unseal(key.sealed_value, key.digest) for key in after] == tokens
    assert [(key.id, key.settings, key.created_at) for key in after] == [
        (key.id, key.settings, key.created_at) for key in before
    ]
    assert recorded_check(database_url) == check_of(NEW)
    with started(settings_with(database_url, NEW)) as only_new:
        assert [status(only_new, token) for token in tokens] == [200] * len(tokens)
        assert [view.value for view in only_new.service.list_keys(account_id)] == tokens
    with pytest.raises(ConfigurationError) as caught, started(settings_with(database_url, OLD)):
        pass
    assert caught.value.message == NOT_THE_DATABASES


class RotationInterruptedError(Exception):
    pass


def test_an_interrupted_rotation_resumes_and_a_finished_one_moves_nothing(
    database_url: str,
) -> None:
    _account_id, tokens = keys_made_under(database_url, OLD, extra=3)

    def interrupt(_moved: int) -> None:
        raise RotationInterruptedError

    with started(settings_with(database_url, NEW, OLD)) as runtime:
        with pytest.raises(RotationInterruptedError):
            rotate(runtime.vault, runtime.store, batch=1, progress=interrupt)
        assert recorded_check(database_url) == check_of(OLD)
        assert [status(runtime, token) for token in tokens] == [200] * len(tokens)

        assert rotate(runtime.vault, runtime.store, batch=1) == len(tokens) - 1
        assert rotate(runtime.vault, runtime.store, batch=1) == 0

    assert recorded_check(database_url) == check_of(NEW)


def test_a_key_changed_after_the_rotation_is_judged_by_its_change_under_either_digest(
    database_url: str,
) -> None:
    """An instance's snapshot drops a key's old digest when the new one arrives: the old
    digest, still tried while a previous secret is set, must not answer for the key."""
    account_id, tokens = keys_made_under(database_url, OLD)
    deleted, deactivated = tokens[:2]

    with (
        started(settings_with(database_url, NEW, OLD)) as instance,
        started(settings_with(database_url, NEW, OLD)) as operator,
    ):
        rotate(operator.vault, operator.store)
        instance.cache.refresh()
        assert len(instance.cache) == len(tokens)
        views = {view.value: view.key.id for view in operator.service.list_keys(account_id)}
        operator.service.delete_key(account_id, views[deleted])
        operator.service.set_active(account_id, views[deactivated], active=False)
        instance.cache.refresh()

        assert [status(instance, token) for token in tokens] == [401, 401, 200]


def test_a_key_under_neither_secret_stops_the_rotation_before_it_changes_anything(
    database_url: str,
) -> None:
    account_id, _tokens = keys_made_under(database_url, OLD)
    stranger = Keyguard(settings_with(database_url, UNRELATED))
    odd = stranger.service.create_key(account_id, {"label": "under another secret"})
    stranger.store.close()

    with started(settings_with(database_url, NEW, OLD)) as runtime:
        before = runtime.store.list_keys(account_id)
        with pytest.raises(ConfigurationError) as caught:
            rotate(runtime.vault, runtime.store)
        assert runtime.store.list_keys(account_id) == before

    assert caught.value.message == (
        f"Key {odd.key.id} of account {account_id} opens under neither the current nor the "
        f"previous server secret, so it cannot be rewritten; {UNFINISHED}"
    )
    assert recorded_check(database_url) == check_of(OLD)


def test_a_key_stored_by_its_digest_alone_cannot_be_rotated(database_url: str) -> None:
    """keyguard makes no such key (every key it makes is sealed, and it imports none);
    one would need its value to be derived again under the new secret."""
    account_id, _tokens = keys_made_under(database_url, OLD)

    with started(settings_with(database_url, NEW, OLD)) as runtime:
        imported = runtime.store.create_key(
            account_id, b"\x07" * 32, b"", KeySettings(label="imported")
        )
        with pytest.raises(ConfigurationError) as caught:
            rotate(runtime.vault, runtime.store)

    assert caught.value.message == (
        f"Key {imported.id} of account {account_id} is stored by its digest alone, so it "
        f"cannot be rewritten under the new secret; {UNFINISHED}"
    )


def test_keys_still_made_under_the_old_secret_during_every_pass_stop_the_rotation(
    database_url: str,
) -> None:
    account_id, _tokens = keys_made_under(database_url, OLD)
    misconfigured = Keyguard(settings_with(database_url, OLD))

    def meanwhile(_moved: int) -> None:
        misconfigured.service.create_key(account_id, {"label": "made under the old secret"})

    with (
        started(settings_with(database_url, NEW, OLD)) as runtime,
        pytest.raises(ConfigurationError) as caught,
    ):
        rotate(runtime.vault, runtime.store, batch=1, progress=meanwhile)
    misconfigured.store.close()

    assert caught.value.message.startswith(
        "Keys under the previous server secret kept appearing (3 in the last pass): some "
        "instance still makes keys with the previous secret as its current one. Restart every "
        "instance with the new secret as current and the old one as previous, then run "
        f"rotate-secret again; {UNFINISHED}"
    )
    assert recorded_check(database_url) == check_of(OLD)


def test_a_secret_file_is_rotated_into_a_new_generated_file(
    database_url: str, tmp_path: Path
) -> None:
    secret_file = tmp_path / "secrets" / "keyguard.secret"
    previous_file = tmp_path / "secrets" / "keyguard.secret.previous"
    with started(Settings(database_url=database_url, secret_file=secret_file)) as runtime:
        _account, first = runtime.service.create_account("acme")
    secret_file.rename(previous_file)

    rotating = Settings(
        database_url=database_url, secret_file=secret_file, previous_secret_file=previous_file
    )
    with started(rotating) as runtime:
        assert status(runtime, first.value) == 200
        assert rotate(runtime.vault, runtime.store) == 1

    assert stat.S_IMODE(secret_file.stat().st_mode) == 0o600
    assert secret_file.read_bytes() != previous_file.read_bytes()
    with started(Settings(database_url=database_url, secret_file=secret_file)) as runtime:
        assert status(runtime, first.value) == 200


# -- settings and refusals --------------------------------------------------------------


def test_a_previous_secret_equal_to_the_current_one_is_refused() -> None:
    with pytest.raises(ConfigurationError) as caught:
        Vault(b"s" * 32, b"s" * 32)
    assert caught.value.message == (
        "The previous server secret is the current one: set the current server secret to "
        "the new secret and the previous one to the secret it replaces."
    )


@pytest.mark.parametrize(
    ("environ", "message"),
    [
        pytest.param(
            {"KEYGUARD_PREVIOUS_SECRET_KEY": "x" * 31},
            "Invalid settings: KEYGUARD_PREVIOUS_SECRET_KEY: Value error, must be at least "
            "32 bytes.",
            id="short",
        ),
        pytest.param(
            {"KEYGUARD_PREVIOUS_SECRET_KEY": "x" * 32, "KEYGUARD_PREVIOUS_SECRET_FILE": "p"},
            "Invalid settings: KEYGUARD_PREVIOUS_SECRET_FILE: Value error, set either "
            "KEYGUARD_PREVIOUS_SECRET_KEY or this, not both.",
            id="key_and_file",
        ),
    ],
)
def test_previous_secret_settings_are_refused_with_their_name(
    monkeypatch: pytest.MonkeyPatch, environ: dict[str, str], message: str
) -> None:
    for name, value in environ.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(ConfigurationError) as caught:
        load_settings()
    assert caught.value.message == message
    assert "x" * 31 not in caught.value.message


def test_a_previous_secret_file_must_exist_and_be_private(tmp_path: Path) -> None:
    previous = tmp_path / "keyguard.secret.previous"
    settings = Settings(
        database_url=f"sqlite:///{tmp_path}/keyguard.db",
        secret_key=NEW,
        previous_secret_file=previous,
    )
    with pytest.raises(ConfigurationError) as missing:
        Keyguard(settings)
    previous.write_text(OLD.get_secret_value())
    previous.chmod(0o644)
    with pytest.raises(ConfigurationError) as readable:
        Keyguard(settings)

    assert missing.value.message == f"The previous secret file {previous} does not exist."
    assert readable.value.message == (
        f"The previous secret file {previous} is readable by other users; run: chmod 600 {previous}"
    )


# -- the command ----------------------------------------------------------------------


@pytest.fixture
def run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> CliRunner:
    monkeypatch.setenv("KEYGUARD_DATABASE_URL", f"sqlite:///{tmp_path}/cli.db")
    monkeypatch.setenv("KEYGUARD_SECRET_KEY", OLD.get_secret_value())
    return CliRunner()


def test_rotate_secret_without_a_previous_secret_refuses_and_changes_nothing(
    run: CliRunner, tmp_path: Path
) -> None:
    assert run.invoke(main, ["accounts", "create", "acme"]).exit_code == 0

    result = run.invoke(main, ["rotate-secret"])

    assert result.exit_code == 1
    assert result.stderr == (
        "keyguard: rotate-secret moves keys from the previous server secret to the current "
        "one, and no previous secret is set: set KEYGUARD_PREVIOUS_SECRET_KEY (or "
        "KEYGUARD_PREVIOUS_SECRET_FILE) to the secret being replaced, and KEYGUARD_SECRET_KEY "
        "(or the secret file) to the new one, as on every instance.\n"
    )
    assert recorded_check(f"sqlite:///{tmp_path}/cli.db") == check_of(OLD)


def test_rotate_secret_says_what_it_did_and_what_comes_next_and_no_secret(
    run: CliRunner, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    run.invoke(main, ["accounts", "create", "acme"])
    run.invoke(main, ["keys", "create", "--account", "1", "--label", "second"])
    monkeypatch.setenv("KEYGUARD_SECRET_KEY", NEW.get_secret_value())
    monkeypatch.setenv("KEYGUARD_PREVIOUS_SECRET_KEY", OLD.get_secret_value())

    result = run.invoke(main, ["rotate-secret", "--batch-size", "1"])

    assert result.exit_code == 0, result.output
    assert result.stdout == (
        "Rewrote 2 keys under the current server secret; the database now expects it alone. "
        "Remove the previous secret from every instance and restart them.\n"
    )
    for secret in (OLD, NEW):
        assert secret.get_secret_value() not in result.output
    assert recorded_check(f"sqlite:///{tmp_path}/cli.db") == check_of(NEW)


# -- the whole procedure against real servers --------------------------------------------


class Caller(threading.Thread):
    """Asks each instance in turn, with each key in turn, until stopped: every answer
    and when it came."""

    def __init__(self, urls: list[str], tokens: list[str]) -> None:
        super().__init__(name="rotation-caller", daemon=True)
        self._urls = urls
        self._tokens = tokens
        self._finished = threading.Event()
        self.answers: list[tuple[float, str, int]] = []  # (time.time(), instance, status)

    def run(self) -> None:
        clients = [httpx.Client(base_url=url, timeout=5) for url in self._urls]
        turn = 0
        try:
            while not self._finished.is_set():
                client = clients[turn % len(clients)]
                token = self._tokens[turn % len(self._tokens)]
                asked = {"key": token, "ip": CLIENT, "method": "GET", "path": "/v1/api-keys"}
                answer = client.post("/auth/verify", json=asked)
                self.answers.append((time.time(), str(client.base_url), answer.status_code))
                turn += 1
        finally:
            for client in clients:
                client.close()

    def stop(self) -> None:
        self._finished.set()
        self.join(10)


@pytest.mark.slow
def test_keys_in_use_on_two_instances_are_never_refused_through_the_whole_procedure(
    database_url: str, tmp_path: Path
) -> None:
    account_id, tokens = keys_made_under(database_url, OLD, extra=119)
    both = {"KEYGUARD_DATABASE_URL": database_url, "KEYGUARD_SECRET_KEY": NEW.get_secret_value()}
    both["KEYGUARD_PREVIOUS_SECRET_KEY"] = OLD.get_secret_value()
    with Servers(tmp_path) as servers:
        # Step 1: every instance runs with the new secret as current, the old as previous.
        instances = [servers(name, settings=both).start() for name in ("a", "b")]
        caller = Caller([instance.base_url for instance in instances], tokens)
        caller.start()
        try:
            time.sleep(0.5)
            # Step 2, in small batches, so that instances catch many of them mid-way.
            printed = instances[0].cli("rotate-secret", "--batch-size", "3")
            time.sleep(1.5)  # every instance takes the last batch in within a second
        finally:
            caller.stop()
        first, last = rewrite_times(database_url, account_id)

        assert printed.startswith(f"Rewrote {len(tokens)} keys under the current server secret")
        refused = [answer for answer in caller.answers if answer[2] != 200]
        assert refused == []
        # From the first batch until every instance has taken the last one in, instances
        # hold some keys under the old digest and some under the new.
        during = [answer for answer in caller.answers if first <= answer[0] <= last + 1.0]
        assert {instance for _when, instance, _status in during} == {
            instance.base_url for instance in instances
        }, f"no answers while keys were rewritten ({len(caller.answers)} in all)"

        # Step 3: the previous secret removed, instance by instance.
        for instance in instances:
            instance.stop()
            del instance.env["KEYGUARD_PREVIOUS_SECRET_KEY"]
            instance.start()
            with httpx.Client(base_url=instance.base_url, timeout=5) as client:
                statuses = {
                    client.post(
                        "/auth/verify",
                        json={"key": token, "ip": CLIENT, "method": "GET", "path": "/v1/api-keys"},
                    ).status_code
                    for token in tokens
                }
            assert statuses == {200}


def rewrite_times(database_url: str, account_id: int) -> tuple[float, float]:
    """When the first and the last key were rewritten, as ``time.time()`` values."""
    store = open_store(database_url)
    try:
        changed = [key.changed_at for key in store.list_keys(account_id)]
    finally:
        store.close()
    times = [when.timestamp() for when in changed if isinstance(when, datetime)]
    assert len(times) == len(changed)
    return min(times), max(times)
