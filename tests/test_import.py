"""``keyguard import``: keys of another system, by value or by SHA-256 digest, from JSON
Lines or CSV, on SQLite and PostgreSQL; the command runs in-process on a real database."""

import csv
import hashlib
import io
import json
import os
import signal
import subprocess
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from click.testing import CliRunner, Result

from keyguard.cli import main
from keyguard.domain.records import timestamp
from keyguard.runtime import Keyguard
from keyguard.storage import AuditQuery
from keyguard.wire import key_object
from tests.conftest import TEST_SECRET
from tests.server import Servers, bearer, keyguard_command
from wavix import ApiKey, Wavix

Run = Callable[..., Result]

# Keys as another system issued them: none has keyguard's shape or checksum.
WAVIX_TOKEN = "wvx_live_9f8e7d6c5b4a39281706f5e4d3c2b1a0"
UNKEY_TOKEN = "uk_3ZbXk9JpWq2mTn4RvL8sYc"
LATER = (datetime.now(UTC) + timedelta(days=30)).replace(microsecond=0)


def sha256_hex(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


@pytest.fixture
def run(keyguard: Keyguard, monkeypatch: pytest.MonkeyPatch) -> Run:
    """``keyguard …`` in this process, on the test's database."""
    monkeypatch.setenv("KEYGUARD_DATABASE_URL", keyguard.settings.database_url)
    monkeypatch.setenv("KEYGUARD_SECRET_KEY", TEST_SECRET.get_secret_value())
    runner = CliRunner()

    def invoke(*args: str) -> Result:
        return runner.invoke(main, list(args), catch_exceptions=False)

    return invoke


@pytest.fixture
def account(keyguard: Keyguard) -> int:
    created, _view = keyguard.service.create_account("acme")
    return created.id


def jsonl(path: Path, *records: object) -> Path:
    path.write_text("".join(json.dumps(record) + "\n" for record in records))
    return path


def csv_file(path: Path, columns: Sequence[str], *rows: Sequence[str]) -> Path:
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(columns)
    writer.writerows(rows)
    path.write_text(buffer.getvalue())
    return path


def imported(keyguard: Keyguard, account: int) -> dict[str, dict[str, Any]]:
    """The account's imported keys as key objects, by label."""
    views = keyguard.service.list_keys(account)
    groups = keyguard.service.groups
    return {
        view.key.settings.label: key_object(view, groups) for view in views if view.key.imported
    }


def imported_values(keyguard: Keyguard, account: int) -> list[str]:
    views = keyguard.service.list_keys(account)
    return sorted(view.value for view in views if view.key.imported)


def decide(keyguard: Keyguard, token: str, ip: str = "10.1.2.3") -> int:
    keyguard.cache.refresh()
    return keyguard.decider.decide(token, ip, "POST", "/v3/messages").status


def key_imports(keyguard: Keyguard, account: int) -> list[dict[str, Any]]:
    records, _total = keyguard.store.list_audit(AuditQuery(account, action="key.import"))
    return [dict(record.after or {}) for record in records]


SCOPED = {
    "label": "Messaging bot",
    "scopes_enabled": True,
    "messages": {"allow": "write"},
    "restricted": True,
    "permitted_ips": ["10.0.0.0/8"],
    "expires_at": timestamp(LATER),
}


def test_keys_by_value_and_by_sha256_come_from_json_lines_with_their_settings(
    keyguard: Keyguard, account: int, run: Run, tmp_path: Path
) -> None:
    source = jsonl(
        tmp_path / "keys.jsonl",
        {"value": WAVIX_TOKEN, **SCOPED},
        {"sha256": sha256_hex(UNKEY_TOKEN), **SCOPED, "label": "From Unkey"},
        # a seed-era Wavix key object, as Wavix lists it
        {"id": 7, "label": "Old", "value": "wvx_old_0001", "is_active": False, "calls": {}},
    )

    result = run("import", "--account", str(account), str(source))

    assert result.exit_code == 0, result.output
    assert "Imported 3 keys" in result.stdout
    keys = imported(keyguard, account)
    by_value, by_digest, old = keys["Messaging bot"], keys["From Unkey"], keys["Old"]
    for key in (by_value, by_digest):
        assert (key["scopes_enabled"], key["messages"], key["calls"]) == (
            True,
            {"allow": "write"},
            {"allow": "none"},
        )
        assert (key["restricted"], key["permitted_ips"]) == (True, ["10.0.0.0/8"])
        assert key["expires_at"] == timestamp(LATER)
    assert (by_value["value"], by_value["imported"]) == (WAVIX_TOKEN, "value")
    assert (by_digest["value"], by_digest["imported"]) == ("", "sha256")
    assert (old["active"], old["value"], old["id"] != 7) == (False, "wvx_old_0001", True)
    assert decide(keyguard, WAVIX_TOKEN) == 200
    assert decide(keyguard, UNKEY_TOKEN) == 200
    assert decide(keyguard, UNKEY_TOKEN, ip="192.0.2.1") == 403
    assert decide(keyguard, "wvx_old_0001") == 401


def test_a_key_imported_by_sha256_parses_in_the_official_client_and_cannot_be_shown(
    keyguard: Keyguard, account: int, run: Run, tmp_path: Path
) -> None:
    source = jsonl(tmp_path / "keys.jsonl", {"sha256": sha256_hex(UNKEY_TOKEN), "label": "u"})
    assert run("import", "--account", str(account), str(source)).exit_code == 0

    key = ApiKey.model_validate(imported(keyguard, account)["u"])

    assert key.value == ""
    assert key.model_extra is not None
    assert key.model_extra["imported"] == "sha256"
    table = run("keys", "list", "--account", str(account)).stdout
    assert "(SHA-256 digest only)" in table


def test_csv_columns_carry_the_same_fields(
    keyguard: Keyguard, account: int, run: Run, tmp_path: Path
) -> None:
    source = csv_file(
        tmp_path / "keys.csv",
        ["label", "value", "sha256", "active", "restricted", "permitted_ips", "scopes_enabled",
         "messages", "numbers", "expires_at"],
        ["By value", WAVIX_TOKEN, "", "true", "yes", "10.0.0.0/8; 192.0.2.7", "1", "write",
         "read", timestamp(LATER) or ""],
        ["By digest", "", sha256_hex(UNKEY_TOKEN), "false", "", "", "", "", "", ""],
    )  # fmt: skip

    result = run("import", "--account", str(account), str(source))

    assert result.exit_code == 0, result.output
    keys = imported(keyguard, account)
    by_value, by_digest = keys["By value"], keys["By digest"]
    assert by_value["permitted_ips"] == ["10.0.0.0/8", "192.0.2.7"]
    assert (by_value["restricted"], by_value["scopes_enabled"]) == (True, True)
    assert (by_value["messages"], by_value["numbers"]) == ({"allow": "write"}, {"allow": "read"})
    assert by_value["expires_at"] == timestamp(LATER)
    assert (by_digest["active"], by_digest["restricted"], by_digest["imported"]) == (
        False,
        False,
        "sha256",
    )
    assert decide(keyguard, WAVIX_TOKEN) == 200
    assert decide(keyguard, UNKEY_TOKEN) == 401  # imported inactive


def test_a_sha256_digest_is_accepted_in_base64_as_unkey_encodes_it(
    keyguard: Keyguard, account: int, run: Run, tmp_path: Path
) -> None:
    import base64

    encoded = base64.b64encode(hashlib.sha256(UNKEY_TOKEN.encode()).digest()).decode()
    source = jsonl(tmp_path / "keys.jsonl", {"sha256": encoded})

    assert run("import", "--account", str(account), str(source)).exit_code == 0

    assert decide(keyguard, UNKEY_TOKEN) == 200


def test_the_digest_itself_presented_as_a_token_is_refused(
    keyguard: Keyguard, account: int, run: Run, tmp_path: Path
) -> None:
    digest = sha256_hex(UNKEY_TOKEN)
    source = jsonl(tmp_path / "keys.jsonl", {"sha256": digest})
    assert run("import", "--account", str(account), str(source)).exit_code == 0

    assert decide(keyguard, digest) == 401
    assert decide(keyguard, UNKEY_TOKEN + "x") == 401
    assert decide(keyguard, UNKEY_TOKEN) == 200


def test_the_same_file_twice_adds_nothing(
    keyguard: Keyguard, account: int, run: Run, tmp_path: Path
) -> None:
    source = jsonl(
        tmp_path / "keys.jsonl",
        *({"value": f"wvx_{index:04d}", "label": f"k{index}"} for index in range(5)),
        {"sha256": sha256_hex(UNKEY_TOKEN)},
        {"value": "wvx_0000", "label": "the first again"},
    )
    first = run("import", "--account", str(account), str(source), "--batch-size", "4")
    revision = keyguard.store.changes_since(0).revision

    again = run("import", "--account", str(account), str(source), "--batch-size", "4")

    assert "Imported 6 keys; skipped 1 already there" in first.stdout
    assert "Imported 0 keys; skipped 7 already there" in again.stdout
    assert again.exit_code == 0
    assert len(imported_values(keyguard, account)) == 6
    assert keyguard.store.count_keys(account) == 7
    assert keyguard.store.changes_since(0).revision == revision
    assert len(key_imports(keyguard, account)) == 2  # two batches, the first time only


def test_a_key_of_another_account_is_skipped_reported_and_never_moved(
    keyguard: Keyguard, account: int, run: Run, tmp_path: Path
) -> None:
    other, _view = keyguard.service.create_account("globex")
    theirs = jsonl(tmp_path / "theirs.jsonl", {"value": WAVIX_TOKEN, "label": "theirs"})
    run("import", "--account", str(other.id), str(theirs))
    mine = jsonl(tmp_path / "mine.jsonl", {"value": "wvx_mine"}, {"value": WAVIX_TOKEN})

    result = run("import", "--account", str(account), str(mine))

    assert result.exit_code == 0
    assert "line 2: a key of another account; skipped" in result.stderr
    assert "Imported 1 keys; skipped 0 already there and 1 of other accounts" in result.stdout
    assert list(imported(keyguard, other.id)) == ["theirs"]
    keyguard.cache.refresh()
    assert keyguard.decider.decide(WAVIX_TOKEN, None, "GET", "/v1/numbers").account_id == other.id


BAD_LINES = [
    ({"label": "no secret"}, "line 2: Exactly one of value and sha256 is required"),
    ({"value": "a", "sha256": sha256_hex("a")}, "line 3: Exactly one of value and sha256"),
    ({"sha256": "abc"}, "line 4: Missing or invalid parameter sha256"),
    ({"value": "has space"}, "line 5: Missing or invalid parameter value"),
    ({"value": "x1", "permitted_ips": ["nope"]}, "line 6: Ip has incorrect format"),
    ({"value": "x2", "restricted": True}, "line 7: Missing or invalid parameter permitted_ips"),
    ({"value": "x3", "calls": {"allow": "all"}}, "line 8: API key scope calls: allow must be one"),
    ({"value": "x4", "active": "yes"}, "line 9: Missing or invalid parameter active"),
    ({"value": "x5", "expires_at": "soon"}, "line 10: Expires at has incorrect format"),
    (["not", "an", "object"], "line 11: Not a JSON object"),
]


def test_bad_lines_are_reported_by_number_and_the_rest_imported(
    keyguard: Keyguard, account: int, run: Run, tmp_path: Path
) -> None:
    source = jsonl(
        tmp_path / "keys.jsonl",
        {"value": "good_first"},
        *(record for record, _message in BAD_LINES),
    )
    with source.open("a") as handle:
        handle.write("\n{not json\n")  # line 12 is blank; 13 is no JSON
        handle.write(json.dumps({"value": "good_last"}) + "\n")

    result = run("import", "--account", str(account), str(source))

    assert result.exit_code == 1
    reported = result.stderr.splitlines()
    for _record, message in BAD_LINES:
        assert any(line.startswith(message) for line in reported), message
    assert "line 13: Not valid JSON" in reported
    assert "good_first" not in result.output  # no secret in any report
    assert "has space" not in result.output
    assert "11 bad lines" in result.stdout
    assert imported_values(keyguard, account) == [
        "good_first",
        "good_last",
    ]


def test_bad_csv_rows_are_reported_by_the_line_they_start_on(
    keyguard: Keyguard, account: int, run: Run, tmp_path: Path
) -> None:
    source = tmp_path / "keys.csv"
    source.write_text(
        "label,value,active,restricted,permitted_ips\n"
        'two lines,csv_one,true,true,"10.0.0.1\n10.0.0.2"\n'  # lines 2-3
        "bad,csv_two,maybe,,\n"  # line 4
        "short\n"  # line 5
        "fine,csv_three,false,,\n"
    )

    result = run("import", "--account", str(account), str(source))

    assert result.exit_code == 1
    assert "line 4: Missing or invalid parameter active" in result.stderr
    assert "line 5: Not as many cells as the header has columns" in result.stderr
    assert imported_values(keyguard, account) == ["csv_one", "csv_three"]


def test_strict_stops_at_the_first_bad_line_before_its_batch_is_written(
    keyguard: Keyguard, account: int, run: Run, tmp_path: Path
) -> None:
    source = jsonl(
        tmp_path / "keys.jsonl",
        {"value": "s1"},
        {"value": "s2"},  # the first batch of two is written
        {"value": "s3"},
        {"label": "no secret"},  # line 4: stops here; s3 shares its batch
        {"value": "s5"},
    )

    result = run("import", "--account", str(account), str(source), "--strict", "--batch-size", "2")

    assert result.exit_code == 1
    assert "line 4: Exactly one of value and sha256 is required" in result.stderr
    assert "stopped at line 4 (--strict)" in result.stdout
    assert imported_values(keyguard, account) == ["s1", "s2"]


def test_each_batch_is_audited_once_with_counts_and_the_ids_and_no_secret(
    keyguard: Keyguard, account: int, run: Run, tmp_path: Path
) -> None:
    source = jsonl(
        tmp_path / "keys.jsonl",
        *({"value": f"audited_{index}"} for index in range(5)),
        {"sha256": sha256_hex(UNKEY_TOKEN)},
    )

    run("import", "--account", str(account), str(source), "--batch-size", "4")

    ids = [view.key.id for view in keyguard.service.list_keys(account) if view.key.imported]
    assert list(reversed(key_imports(keyguard, account))) == [
        {"imported": 4, "first_key_id": ids[0], "last_key_id": ids[3], "skipped": 0,
         "skipped_elsewhere": 0},
        {"imported": 2, "first_key_id": ids[4], "last_key_id": ids[5], "skipped": 0,
         "skipped_elsewhere": 0},
    ]  # fmt: skip
    trail = json.dumps([record.after for record in keyguard.store.list_audit(
        AuditQuery(account, limit=100))[0]])  # fmt: skip
    assert "audited_" not in trail
    assert sha256_hex(UNKEY_TOKEN) not in trail


def test_the_format_comes_from_the_extension_or_the_option(
    account: int, run: Run, tmp_path: Path
) -> None:
    source = tmp_path / "keys.txt"
    source.write_text(json.dumps({"value": "by_option"}) + "\n")

    unknown = run("import", "--account", str(account), str(source))
    given = run("import", "--account", str(account), str(source), "--format", "jsonl")

    assert unknown.exit_code == 1
    assert "--format jsonl or --format csv" in unknown.stderr
    assert given.exit_code == 0, given.output


def test_an_unknown_account_is_refused_before_reading(run: Run, tmp_path: Path) -> None:
    source = jsonl(tmp_path / "keys.jsonl", {"value": "nobody"})

    result = run("import", "--account", "999", str(source))

    assert result.exit_code == 1
    assert "Record not found" in result.stderr


# -- real processes ---------------------------------------------------------------------


def forward(client: httpx.Client, token: str) -> int:
    """``/auth/forward``'s status for ``GET /v1/numbers``, asked as nginx asks."""
    headers = {**bearer(token), "X-Original-Method": "GET", "X-Original-URI": "/v1/numbers"}
    return client.get("/auth/forward", headers=headers).status_code


@pytest.mark.slow
def test_a_running_server_enforces_imported_keys_within_a_second(
    servers: Servers, database_url: str, tmp_path: Path
) -> None:
    server = servers("import", settings={"KEYGUARD_DATABASE_URL": database_url})
    tenant = server.create_tenant("acme")
    server.start()
    source = jsonl(
        tmp_path / "keys.jsonl",
        {"value": WAVIX_TOKEN, "label": "from Wavix"},
        {"sha256": sha256_hex(UNKEY_TOKEN), "label": "from Unkey"},
        {"value": "wvx_elsewhere_only", "restricted": True, "permitted_ips": ["192.0.2.1"]},
    )
    with server.client() as client:
        assert forward(client, WAVIX_TOKEN) == forward(client, UNKEY_TOKEN) == 401

        server.cli("import", "--account", str(tenant.account_id), str(source))
        imported_at = time.monotonic()
        while not forward(client, WAVIX_TOKEN) == forward(client, UNKEY_TOKEN) == 200:
            assert time.monotonic() - imported_at < 1.0, "imported keys refused for 1 s"
            time.sleep(0.02)
        assert forward(client, "wvx_elsewhere_only") == 403  # its allow-list came along
        assert forward(client, sha256_hex(UNKEY_TOKEN)) == 401

    with httpx.Client(timeout=10) as http:
        wavix = Wavix(token=tenant.token, base_url=server.base_url, httpx_client=http)
        listed = {key.label: key for key in wavix.api_keys.list()}
    assert listed["from Wavix"].value == WAVIX_TOKEN
    assert listed["from Unkey"].value == ""
    extra = listed["from Unkey"].model_extra
    assert extra is not None
    assert extra["imported"] == "sha256"


KILL_KEYS = 60_000
KILL_BATCH = 500


@pytest.mark.slow
def test_a_killed_import_leaves_whole_batches_and_a_second_run_completes_it(
    keyguard: Keyguard, account: int, tmp_path: Path
) -> None:
    source = jsonl(
        tmp_path / "many.jsonl",
        *({"value": f"killed_{index:06d}", "label": f"k{index}"} for index in range(KILL_KEYS)),
    )
    environment = {
        **os.environ,
        "KEYGUARD_DATABASE_URL": keyguard.settings.database_url,
        "KEYGUARD_SECRET_KEY": TEST_SECRET.get_secret_value(),
    }
    command = [*keyguard_command(), "import", "--account", str(account), str(source),
               "--batch-size", str(KILL_BATCH)]  # fmt: skip
    process = subprocess.Popen(command, env=environment, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        while keyguard.store.count_keys(account) < 1 + 2 * KILL_BATCH:
            assert process.poll() is None, "the import ended before it could be killed"
            assert time.monotonic() < deadline, "no batch was written in 60 s"
            time.sleep(0.005)
        process.send_signal(signal.SIGKILL)
    finally:
        process.kill()
        process.wait()

    assert process.returncode == -signal.SIGKILL
    written = len(imported_values(keyguard, account))
    assert 0 < written < KILL_KEYS
    assert written % KILL_BATCH == 0  # every batch all or nothing
    batches = key_imports(keyguard, account)
    assert [batch["imported"] for batch in batches] == [KILL_BATCH] * (written // KILL_BATCH)
    assert keyguard.store.count_keys(account) == 1 + written

    again = subprocess.run(command, env=environment, capture_output=True, text=True, check=False)

    assert again.returncode == 0, again.stderr
    assert f"Imported {KILL_KEYS - written} keys; skipped {written} already there" in again.stdout
    assert keyguard.store.count_keys(account) == 1 + KILL_KEYS
    assert len(set(imported_values(keyguard, account))) == KILL_KEYS


def test_progress_goes_to_stderr_as_plain_lines_when_not_a_terminal(
    account: int, run: Run, tmp_path: Path
) -> None:
    source = jsonl(tmp_path / "keys.jsonl", *({"value": f"progress_{n}"} for n in range(5)))

    result = run("import", "--account", str(account), str(source), "--batch-size", "2")

    progress = [line for line in result.stderr.splitlines() if "lines/s" in line]
    assert progress[-1].startswith("5/5 lines, 5 imported, ")
    assert progress[-1].endswith(" s left")
    assert "\x1b[" not in result.stderr  # no terminal codes
    assert result.stdout.startswith("Imported 5 keys")
    assert "keys/s" in result.stdout
