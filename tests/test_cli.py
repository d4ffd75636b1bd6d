"""The CLI, run in-process against a real SQLite database."""

import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import click
import pytest
from click.testing import CliRunner, Result

from keyguard.cli import _announce_first_key, first_key_file, main
from keyguard.config import Settings, load_settings
from keyguard.domain import keys
from keyguard.domain.records import AccountStatus, Actor
from keyguard.runtime import Keyguard
from tests.conftest import TEST_SECRET
from tests.server import keyguard_command
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
        (["keys", "list", "--account", "999"], "keyguard: Record not found"),
        (["keys", "update", "1", "--account", "999", "--label", "x"], "keyguard: Record not found"),
        (["audit", "--account", "999"], "keyguard: Record not found"),
        (["accounts", "suspend", "999"], "keyguard: Record not found"),
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
        (["keys", "create", "--account", "1", "--label", "x", "--expires-at", "yesterday"],
         "keyguard: Expires at has incorrect format (UTC, as in 2027-01-31T00:00:00Z)"),
        (["keys", "create", "--account", "1", "--label", "x",
          "--expires-at", "2000-01-01T00:00:00Z"],
         "keyguard: Expires at must be in the future"),
        (["keys", "create", "--account", "1", "--label", "x",
          "--expires-at", "2099-01-01T00:00:00Z", "--expires-in", "1d"],
         "keyguard: Give --expires-at or --expires-in, not both"),
        (["keys", "roll", "1", "--account", "1", "--grace", "8d"],
         "keyguard: Grace seconds must be between 0 and 604800 (7 days)"),
        (["keys", "roll", "99", "--account", "1"], "keyguard: Record not found"),
        (["keys", "create", "--account", "1", "--label", "x", "--ratelimit", "0/60s"],
         "keyguard: Rate limit must be between 1 and 1000000000 requests"),
        (["keys", "create", "--account", "1", "--label", "x", "--ratelimit", "10/2d"],
         "keyguard: Rate limit duration must be between 1 and 86400 seconds (1 day)"),
        (["keys", "create", "--account", "1", "--label", "x", "--credits", "1000000000001"],
         "keyguard: Remaining must be between 0 and 1000000000000 credits"),
        (["keys", "create", "--account", "1", "--label", "x", "--refill", "0/daily"],
         "keyguard: Refill amount must be between 1 and 1000000000000 credits"),
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


def test_keys_expire_in_a_duration_or_at_a_time_and_never_on_update(run: Any) -> None:
    account = str(_json(run("accounts", "create", "acme", "--json"))["account"]["id"])
    before = datetime.now(UTC).replace(microsecond=0)

    soon = _json(run("keys", "create", "--account", account, "--label", "x", "--expires-in",
                     "90d", "--json"))  # fmt: skip
    fixed = _json(run("keys", "create", "--account", account, "--label", "y", "--expires-at",
                      "2099-01-31T00:00:00Z", "--json"))  # fmt: skip
    never = _json(run("keys", "update", str(fixed["id"]), "--account", account, "--expires-at",
                      "never", "--json"))  # fmt: skip

    expires = datetime.strptime(soon["expires_at"], "%Y-%m-%dT%H:%M:%S%z")
    assert before + timedelta(days=90) <= expires <= datetime.now(UTC) + timedelta(days=90)
    assert fixed["expires_at"] == "2099-01-31T00:00:00Z"
    assert never["expires_at"] is None
    table = run("keys", "list", "--account", account).stdout
    assert expires.strftime("%Y-%m-%d") in table
    assert "never" in table


def test_keys_get_a_rate_limit_and_lose_it_with_none(run: Any) -> None:
    account = str(_json(run("accounts", "create", "acme", "--json"))["account"]["id"])

    minute = _json(run("keys", "create", "--account", account, "--label", "x", "--ratelimit",
                       "100/60s", "--json"))  # fmt: skip
    hourly = _json(run("keys", "update", str(minute["id"]), "--account", account,
                       "--ratelimit", "5000/1h", "--json"))  # fmt: skip
    table = run("keys", "list", "--account", account).stdout
    seconds = _json(run("keys", "update", str(minute["id"]), "--account", account,
                        "--ratelimit", "10/30", "--json"))  # fmt: skip
    removed = _json(run("keys", "update", str(minute["id"]), "--account", account,
                        "--ratelimit", "none", "--json"))  # fmt: skip

    assert minute["ratelimit"] == {"limit": 100, "duration": 60}
    assert hourly["ratelimit"] == {"limit": 5000, "duration": 3600}
    assert "5000/3600s" in table
    assert seconds["ratelimit"] == {"limit": 10, "duration": 30}
    assert removed["ratelimit"] is None


def test_keys_get_credits_and_a_refill_and_lose_them_with_none(run: Any) -> None:
    account = str(_json(run("accounts", "create", "acme", "--json"))["account"]["id"])

    created = _json(run("keys", "create", "--account", account, "--label", "x", "--credits",
                        "1000", "--refill", "1000/daily", "--json"))  # fmt: skip
    monthly = _json(run("keys", "update", str(created["id"]), "--account", account,
                        "--credits", "20", "--refill", "50000/monthly", "--json"))  # fmt: skip
    table = run("keys", "list", "--account", account).stdout
    shown = run("keys", "show", str(created["id"]), "--account", account).stdout
    removed = _json(run("keys", "update", str(created["id"]), "--account", account,
                        "--credits", "none", "--json"))  # fmt: skip

    assert (created["remaining"], created["refill"]) == (
        1000,
        {"amount": 1000, "interval": "daily"},
    )
    assert (monthly["remaining"], monthly["refill"]) == (
        20,
        {"amount": 50000, "interval": "monthly"},
    )
    assert "20 (50000/monthly)" in table
    assert "20 (50000/monthly)" in shown
    assert (removed["remaining"], removed["refill"]) == (None, None)


NOT_A_DURATION = "is not a duration such as 90d, 12h, 30m or 45s"
NOT_A_RATE_LIMIT = "is not a rate limit such as 100/60s, 5000/1h or none"
NOT_CREDITS = "is not a number of credits such as 1000, or none"
NOT_A_REFILL = "is not a refill such as 1000/daily, 5000/monthly or none"


@pytest.mark.parametrize(
    ("option", "value", "message"),
    [
        *(("--expires-in", duration, NOT_A_DURATION)
          for duration in ["90", "d", "1.5h", "-1d", "1w", "1234567d", "\u0661d"]),
        *(("--ratelimit", limit, NOT_A_RATE_LIMIT)
          for limit in ["100", "100/", "/60s", "1.5/60s", "-1/60s", "100/60x", "ten/1m"]),
        *(("--credits", credits, NOT_CREDITS) for credits in ["-1", "1.5", "ten", "", "1e3"]),
        *(("--refill", refill, NOT_A_REFILL)
          for refill in ["1000", "1000/weekly", "-1/daily", "1.5/daily", "/daily", "ten/daily"]),
    ],
)  # fmt: skip
def test_an_option_value_that_does_not_parse_is_a_usage_error(
    run: Any, option: str, value: str, message: str
) -> None:
    run("accounts", "create", "acme", "--json")
    result = run("keys", "create", "--account", "1", "--label", "x", option, value)
    assert result.exit_code == 2
    assert message in result.stderr


def test_keys_roll_prints_the_new_secret_and_when_the_old_key_stops(run: Any) -> None:
    created = _json(run("accounts", "create", "acme", "--json"))
    old = created["api_key"]

    result = run("keys", "roll", str(old["id"]), "--account", "1", "--grace", "1h")

    assert result.exit_code == 0, result.output
    listed = _json(run("keys", "list", "--account", "1", "--json"))
    new = next(key for key in listed if key["rolled_from"] == old["id"])
    assert new["value"] in result.stdout
    ends = next(key for key in listed if key["id"] == old["id"])["expires_at"]
    assert ends is not None
    assert f"Key {old['id']} works until {ends.replace('T', ' ').rstrip('Z')}" in result.stdout


def test_keys_list_shows_one_page_when_asked(run: Any) -> None:
    run("accounts", "create", "acme", "--json")
    for number in range(4):
        run("keys", "create", "--account", "1", "--label", f"k{number}", "--json")

    second = _json(run("keys", "list", "--account", "1", "--page", "2", "--per-page", "2",
                       "--json"))  # fmt: skip
    table = run("keys", "list", "--account", "1", "--page", "3", "--per-page", "2").stdout

    assert [key["label"] for key in second] == ["k1", "k2"]
    assert "Page 3 of 3 (5 keys)." in table
    assert "k3" in table


def test_keys_usage_charts_the_counts_of_the_last_day(run: Any) -> None:
    created = _json(run("accounts", "create", "acme", "--json"))
    key = created["api_key"]
    runtime = Keyguard(load_settings())
    runtime.cache.refresh()
    for _ in range(3):
        assert runtime.decider.decide(key["value"], "192.0.2.1", "GET", "/v1/numbers").allowed
    runtime.usage.flush()
    runtime.store.close()

    points = _json(run("keys", "usage", str(key["id"]), "--account", "1", "--json"))
    chart = run("keys", "usage", str(key["id"]), "--account", "1", "--granularity", "minute",
                "--last", "5m").stdout  # fmt: skip

    assert len(points) in (24, 25)  # the buckets of the last day, the current one included
    assert sum(point["allowed"] for point in points) == 3
    assert "█" in chart
    assert "minute (UTC)" in chart


def test_accounts_list_shows_each_accounts_status(run: Any) -> None:
    run("accounts", "create", "acme", "--json")
    run("accounts", "create", "globex", "--json")
    assert run("accounts", "suspend", "1").exit_code == 0

    listed = _json(run("accounts", "list", "--json"))
    table = run("accounts", "list").stdout

    assert [(a["name"], a["status"]) for a in listed] == [
        ("acme", "suspended"),
        ("globex", "active"),
    ]
    assert re.search(r"\bacme\b.*\bsuspended\b", table)
    assert re.search(r"\bglobex\b.*\bactive\b", table)


# -- output that is not a terminal -----------------------------------------------------------

LONG_LABEL = "nightly export to the warehouse, " * 4 + "end"


def test_tables_written_to_a_file_keep_every_character(run: Any) -> None:
    account = _json(run("accounts", "create", "acme", "--json"))["account"]["id"]
    created = run("keys", "create", "--account", str(account), "--label", LONG_LABEL)
    masked = keys.mask(created.stdout.rpartition("Secret: ")[2].strip())

    listed = run("keys", "list", "--account", str(account)).stdout

    assert created.exit_code == 0
    assert LONG_LABEL in created.stdout
    assert LONG_LABEL in listed
    assert masked in listed
    assert "…" not in listed


def test_piped_output_keeps_every_character(tmp_path: Path) -> None:
    """The real command, its standard output a pipe, with no terminal anywhere to measure."""
    env = {name: value for name, value in os.environ.items() if not name.startswith("KEYGUARD_")}
    env.pop("COLUMNS", None)
    env["KEYGUARD_DATABASE_URL"] = f"sqlite:///{tmp_path}/cli.db"
    env["KEYGUARD_SECRET_KEY"] = TEST_SECRET.get_secret_value()

    def keyguard(*args: str) -> str:
        done = subprocess.run(
            [*keyguard_command(), *args],
            env=env,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        )
        return done.stdout

    keyguard("accounts", "create", LONG_LABEL)
    created = keyguard("keys", "create", "--account", "1", "--label", LONG_LABEL)
    secret = created.rpartition("Secret: ")[2].strip()
    listed = keyguard("keys", "list", "--account", "1")
    trail = keyguard("audit")

    assert keys.is_well_formed(secret)
    assert f"Secret: {secret}\n" in created
    assert LONG_LABEL in created
    assert LONG_LABEL in listed
    assert keys.mask(secret) in listed
    assert f"label: - -> {LONG_LABEL};" in trail


# -- the first key -------------------------------------------------------------------------


# How the first key's announcement reads in each KEYGUARD_SECRET_DISPLAY mode.
PROMISES = [
    pytest.param("masked", "shown only now", id="masked"),
    pytest.param(
        "full", "also shown in full by GET /v1/api-keys (KEYGUARD_SECRET_DISPLAY=full)", id="full"
    ),
]


@pytest.mark.parametrize(("display", "promise"), PROMISES)
def test_a_new_accounts_key_is_announced_as_the_display_mode_shows_it(
    run: Any, monkeypatch: pytest.MonkeyPatch, display: str, promise: str
) -> None:
    monkeypatch.setenv("KEYGUARD_SECRET_DISPLAY", display)

    created = run("accounts", "create", "acme")

    assert created.stdout.splitlines()[0] == f"Created account 1 (acme). Its key, {promise}:"


@pytest.mark.parametrize(("display", "promise"), PROMISES)
def test_the_first_key_on_a_terminal_is_announced_as_the_display_mode_shows_it(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    display: str,
    promise: str,
) -> None:
    settings = Settings(
        database_url=f"sqlite:///{tmp_path}/cli.db",
        secret_key=TEST_SECRET,
        secret_display=display,  # type: ignore[arg-type]
    )
    runtime = Keyguard(settings)
    runtime.store.migrate()
    monkeypatch.setattr(sys.stdout, "isatty", lambda: True)

    _announce_first_key(runtime, "127.0.0.1", 8080)

    shown = re.sub(r"\x1b\[[0-9;]*m", "", capsys.readouterr().out)
    assert shown.splitlines()[0] == (f"Created account 'default'. Its full-access key, {promise}:")
    runtime.store.close()


# -- audit -------------------------------------------------------------------------------------


def test_audit_takes_the_apis_times_as_from_and_to(run: Any) -> None:
    run("accounts", "create", "acme", "--json")
    [record] = _json(run("audit", "--account", "1", "--action", "account.create", "--json"))
    moment = datetime.strptime(record["occurred_at"], "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)
    second = timedelta(seconds=1)

    def found(*window: str) -> int:
        return len(_json(run("audit", "--action", "account.create", "--json", *window)))

    assert found("--from", record["occurred_at"]) == 1
    assert found("--from", (moment + second).strftime("%Y-%m-%dT%H:%M:%SZ")) == 0
    assert found("--to", record["occurred_at"]) == 0
    assert found("--to", (moment + second).isoformat()) == 1
    east = timezone(timedelta(hours=2))
    assert found("--from", moment.astimezone(east).isoformat()) == 1
    assert found("--from", moment.replace(tzinfo=None).isoformat()) == 1  # UTC
    # the older names still work, and are no longer shown
    assert found("--since", (moment + second).isoformat()) == 0
    assert found("--until", (moment + second).isoformat()) == 1
    help_text = run("audit", "--help").stdout
    assert "--from" in help_text
    assert "--since" not in help_text


@pytest.mark.parametrize(
    "value", ["yesterday", "2026-13-01T00:00:00Z", "9999-12-31T23:00:00-05:00"]
)
def test_audit_refuses_a_time_the_api_refuses(run: Any, value: str) -> None:
    result = run("audit", "--from", value)

    assert result.exit_code == 2
    assert f"Invalid value for '--from': {value!r} is not a time" in result.stderr


def test_audit_without_account_shows_every_accounts_records_operators_included(
    run: Any,
) -> None:
    run("accounts", "create", "acme", "--json")
    run("accounts", "create", "globex", "--json")
    with _runtime() as runtime:
        runtime.service.set_account_status(
            1, AccountStatus.SUSPENDED, Actor("operator", ip="192.0.2.9")
        )

    records = _json(run("audit", "--json"))
    table = run("audit").stdout

    assert [(r["account_id"], r["action"], r["actor"]["type"]) for r in records] == [
        (1, "account.suspend", "operator"),
        (2, "key.create", "cli"),
        (2, "account.create", "cli"),
        (1, "key.create", "cli"),
        (1, "account.create", "cli"),
    ]
    assert re.search(r"\baccount\.suspend\b.*\boperator\b.*192\.0\.2\.9", table)
    assert "5 records" in table


def test_audit_shows_a_deleted_accounts_trail(run: Any) -> None:
    run("accounts", "create", "acme", "--json")
    with _runtime() as runtime:
        runtime.service.set_account_status(1, AccountStatus.DELETED, Actor("operator"))

    result = run("audit", "--account", "1", "--json")

    assert [r["action"] for r in _json(result)] == [
        "account.delete", "key.create", "account.create",
    ]  # fmt: skip
    assert run("keys", "list", "--account", "1").exit_code == 1


@contextmanager
def _runtime() -> Iterator[Keyguard]:
    """The CLI's database, opened in-process as another keyguard process would."""
    runtime = Keyguard(load_settings())
    runtime.cache.refresh()
    try:
        yield runtime
    finally:
        runtime.store.close()


# -- help -----------------------------------------------------------------------------------


def test_every_command_and_option_has_help() -> None:
    commands: list[tuple[str, ...]] = [()]
    for path in commands:
        command: Any = main
        for name in path:
            command = command.commands[name]
        for name in getattr(command, "commands", {}):
            commands.append((*path, name))
        assert command.help, f"keyguard {' '.join(path)} has no help"
        for option in command.params:
            if isinstance(option, click.Option) and not option.hidden:
                assert option.help, f"keyguard {' '.join(path)} {option.opts[0]} has no help"
    assert sorted(" ".join(path) for path in commands[1:]) == sorted(COMMANDS)


COMMANDS = [
    "serve", "migrate", "rotate-secret", "import", "audit",
    "accounts", "accounts create", "accounts list", "accounts suspend", "accounts resume",
    "keys", "keys list", "keys show", "keys create", "keys update", "keys roll",
    "keys usage", "keys delete",
]  # fmt: skip


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
