"""The CLI, run in-process against a real SQLite database."""

import json
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result

from keyguard.cli import first_key_file, main
from keyguard.config import Settings
from tests.conftest import TEST_SECRET
from tests.wavix import GROUPS


@pytest.fixture
def run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Any:
    monkeypatch.setenv("KEYGUARD_DATABASE_URL", f"sqlite:///{tmp_path}/cli.db")
    monkeypatch.setenv("KEYGUARD_SECRET_KEY", TEST_SECRET.get_secret_value())
    runner = CliRunner()

    def invoke(*args: str) -> Result:
        return runner.invoke(main, list(args), catch_exceptions=False)

    return invoke


def _json(result: Result) -> Any:
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def test_accounts_create_json_prints_account_and_key_object(run: Any) -> None:
    created = _json(run("accounts", "create", "acme", "--json"))
    assert set(created) == {"account", "api_key"}
    assert created["account"]["name"] == "acme"
    key = created["api_key"]
    assert key["value"].startswith("kg_")
    assert key["scopes_enabled"] is False
    assert list(key)[:3] == ["id", "label", "value"]


def test_accounts_list_shows_created_accounts(run: Any) -> None:
    run("accounts", "create", "acme", "--json")
    run("accounts", "create", "globex", "--json")
    listed = _json(run("accounts", "list", "--json"))
    assert [account["name"] for account in listed] == ["acme", "globex"]
    table = run("accounts", "list").stdout
    assert "acme" in table
    assert "globex" in table


def test_keys_commands_mirror_the_api(run: Any) -> None:
    account = _json(run("accounts", "create", "acme", "--json"))["account"]["id"]
    created = _json(
        run("keys", "create", "--account", str(account), "--label", "Bot", "--scopes-enabled",
            "--scope", "messages=write", "--restricted", "--permitted-ip", "10.0.0.0/8",
            "--permitted-ip", "2001:db8::1", "--json")
    )  # fmt: skip
    assert created["messages"] == {"allow": "write"}
    assert created["permitted_ips"] == ["10.0.0.0/8", "2001:db8::1"]
    assert created["restricted"] is True
    assert created["scopes_enabled"] is True

    updated = _json(
        run("keys", "update", str(created["id"]), "--account", str(account), "--inactive",
            "--scopes-enabled", "--scope", "messages=read", "--json")
    )  # fmt: skip
    assert (updated["active"], updated["messages"], updated["label"]) == (
        False,
        {"allow": "read"},
        "Bot",
    )
    assert [key["label"] for key in _json(run("keys", "list", "--account", str(account),
                                                "--label", "bo", "--json"))] == ["Bot"]  # fmt: skip

    deleted = run("keys", "delete", str(created["id"]), "--account", str(account))
    assert deleted.exit_code == 0
    remaining = _json(run("keys", "list", "--account", str(account), "--json"))
    assert created["id"] not in [key["id"] for key in remaining]


def test_key_table_masks_secrets(run: Any) -> None:
    created = _json(run("accounts", "create", "acme", "--json"))
    table = run("keys", "list", "--account", str(created["account"]["id"])).stdout
    assert created["api_key"]["value"] not in table
    assert "kg_" in table


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["keys", "list", "--account", "1"], None),
        (["keys", "delete", "99", "--account", "1"], "keyguard: Record not found"),
        (["keys", "create", "--account", "1", "--label", "x", "--scopes-enabled",
          "--scope", "calls=admin"],
         "keyguard: API key scope calls: allow must be one of: none, read, write"),
        (["keys", "create", "--account", "1", "--label", "x", "--restricted",
          "--permitted-ip", "nope"],
         "keyguard: Ip has incorrect format"),
        (["keys", "create", "--account", "1", "--label", "x", "--scope", "messages=write"],
         "keyguard: --scope needs --scopes-enabled: without it the key has full access"),
        (["keys", "create", "--account", "1", "--label", "x", "--full-access",
          "--scope", "messages=write"],
         "keyguard: --scope needs --scopes-enabled: without it the key has full access"),
        (["keys", "update", "1", "--account", "1", "--scope", "messages=write"],
         "keyguard: --scope needs --scopes-enabled: without it the key has full access"),
        (["keys", "create", "--account", "1", "--label", "x", "--permitted-ip", "10.0.0.1"],
         "keyguard: --permitted-ip needs --restricted: without it any address may use the key"),
        (["keys", "create", "--account", "1", "--label", "x", "--unrestricted",
          "--permitted-ip", "10.0.0.1"],
         "keyguard: --permitted-ip needs --restricted: without it any address may use the key"),
        (["keys", "create", "--account", "1", "--label", "x", "--scopes-enabled",
          "--scope", "mesages=write"],
         "keyguard: --scope: unknown scope group 'mesages'; the groups are " + ", ".join(GROUPS)),
        (["keys", "create", "--account", "1", "--label", "x", "--scopes-enabled",
          "--scope", "messages"],
         "keyguard: --scope 'messages' is not GROUP=LEVEL"),
        (["keys", "create", "--account", "404", "--label", "x"], "keyguard: Record not found"),
        (["accounts", "create", ""], "keyguard: Missing or invalid parameter name"),
    ],
)  # fmt: skip
def test_refusals_print_one_sentence_and_exit_1(
    run: Any, args: list[str], message: str | None
) -> None:
    run("accounts", "create", "acme", "--json")
    before = run("keys", "list", "--account", "1", "--json").stdout
    result = run(*args)
    if message is None:
        assert result.exit_code == 0
        return
    assert result.exit_code == 1
    assert result.stderr.strip() == message
    assert "Traceback" not in result.output
    assert run("keys", "list", "--account", "1", "--json").stdout == before


def test_migrate_is_idempotent(run: Any) -> None:
    assert run("migrate").exit_code == 0
    assert run("migrate").stdout.strip() == "Database schema is up to date."


def test_bad_settings_stop_with_a_sentence(run: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KEYGUARD_KEY_PREFIX", "Not Valid")
    result = run("accounts", "list")
    assert result.exit_code == 1
    assert result.stderr.startswith("keyguard: Invalid settings: KEYGUARD_KEY_PREFIX:")


def test_unsupported_database_url_is_explained(run: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KEYGUARD_DATABASE_URL", "mysql://localhost/keyguard")
    result = run("accounts", "list")
    assert result.exit_code == 1
    assert "Unsupported database URL scheme 'mysql'" in result.stderr


@pytest.mark.parametrize(
    ("settings", "folder"),
    [
        pytest.param({"database_url": "sqlite:///{tmp}/db/keyguard.db"}, "db", id="sqlite"),
        pytest.param(
            {"database_url": "sqlite:///{tmp}/db/keyguard.db",
             "secret_file": "{tmp}/secrets/keyguard.secret"},
            "db",
            id="sqlite_with_its_secret_elsewhere",
        ),
        pytest.param(
            {"database_url": "postgresql://db.internal/keyguard",
             "secret_file": "{tmp}/secrets/keyguard.secret"},
            "secrets",
            id="postgresql",
        ),
        pytest.param({"database_url": "postgresql://db.internal/keyguard"}, "data",
                     id="postgresql_default_secret_file"),
    ],
)  # fmt: skip
def test_first_key_file_is_beside_the_sqlite_database_else_beside_the_secret_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, settings: dict[str, str], folder: str
) -> None:
    monkeypatch.chdir(tmp_path)
    given = {name: value.format(tmp=tmp_path) for name, value in settings.items()}

    path = first_key_file(Settings(**given))  # type: ignore[arg-type]

    assert path == tmp_path / folder / "first-key.txt"
