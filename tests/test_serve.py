"""``keyguard serve`` as an operator meets it: first start, restarts, workers."""

import re
import shlex
import stat
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.server import (
    HOST,
    START_TIMEOUT,
    KeyguardServer,
    Servers,
    free_port,
    keyguard_command,
)

pytestmark = pytest.mark.slow

# <prefix>_<32 base62 characters><6 base62 characters of checksum>
TOKEN = re.compile(r"\b[a-z0-9]{1,16}_[0-9A-Za-z]{38}\b")
IN_A_ROW = 20


@pytest.fixture
def servers(tmp_path: Path) -> Iterator[Servers]:
    with Servers(tmp_path) as started:
        yield started


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def printed_key(stdout: str) -> str:
    """The line that is nothing but a key."""
    [key] = [line.strip() for line in stdout.splitlines() if TOKEN.fullmatch(line.strip())]
    return key


def curl_request(stdout: str) -> httpx.Request:
    """The request that the printed ``curl`` line would send."""
    [line] = [line for line in stdout.splitlines() if line.startswith("curl ")]
    words = shlex.split(line)[1:]
    headers: dict[str, str] = {}
    urls: list[str] = []
    while words:
        word = words.pop(0)
        if word in ("-H", "--header"):
            name, _, value = words.pop(0).partition(":")
            headers[name.strip()] = value.strip()
        else:
            assert not word.startswith("-"), f"unexpected curl option {word} in {line!r}"
            urls.append(word)
    [url] = urls
    return httpx.Request("GET", url, headers=headers)


def test_first_serve_on_an_empty_database_prints_a_key_and_a_curl_line_that_works(
    servers: Servers,
) -> None:
    server = servers("fresh", secret_key=None).start()

    key = printed_key(server.stdout)
    with httpx.Client(timeout=10) as client:
        answer = client.send(curl_request(server.stdout))

    assert answer.status_code == 200, answer.text
    [listed] = answer.json()
    assert listed["value"] == key
    assert listed["active"] is True
    assert listed["scopes_enabled"] is False
    assert key not in server.stderr


def test_second_serve_on_the_same_database_prints_no_key(servers: Servers) -> None:
    server = servers("restarted", secret_key=None).start()
    key = printed_key(server.stdout)
    server.stop()

    server.start()
    answer = httpx.get(f"{server.base_url}/v1/api-keys", headers=bearer(key), timeout=10)

    assert TOKEN.search(server.stdout) is None, server.stdout
    assert "curl" not in server.stdout
    assert TOKEN.search(server.stderr) is None, server.stderr
    assert answer.status_code == 200, "the first key stopped working after a restart"


def test_generated_secret_file_is_beside_the_database_and_private(servers: Servers) -> None:
    server = servers("zero-config", secret_key=None).start()

    secret_file = server.database.with_name("keyguard.secret")

    assert secret_file.is_file()
    assert stat.S_IMODE(secret_file.stat().st_mode) == 0o600
    secret = secret_file.read_text().strip()
    assert len(secret) >= 32
    assert secret not in server.stdout
    assert secret not in server.stderr


def test_sqlite_database_its_wal_files_and_the_folder_made_for_them_are_private(
    servers: Servers, tmp_path: Path
) -> None:
    folder = tmp_path / "private" / "data"
    database = folder / "keyguard.db"
    server = servers("private", settings={"KEYGUARD_DATABASE_URL": f"sqlite:///{database}"})
    server.create_account("acme")
    server.start()

    def mode(path: Path) -> int:
        return stat.S_IMODE(path.stat().st_mode)

    assert mode(folder) == 0o700
    files = [database, database.with_name("keyguard.db-wal"), database.with_name("keyguard.db-shm")]
    assert {path.name: mode(path) for path in files} == dict.fromkeys(
        ["keyguard.db", "keyguard.db-wal", "keyguard.db-shm"], 0o600
    )


def keyguard_fails(server: KeyguardServer, *args: str) -> str:
    """Run a ``keyguard`` command that must stop at once with status 1; its stderr."""
    done = subprocess.run(
        [*keyguard_command(), *args],
        cwd=server.folder,
        env=server.env,
        capture_output=True,
        text=True,
        timeout=START_TIMEOUT,
        check=False,
    )
    assert done.returncode == 1, (done.returncode, done.stderr)
    return done.stderr


def serve_fails(server: KeyguardServer) -> str:
    return keyguard_fails(server, "serve", "--host", HOST, "--port", str(free_port()))


def test_if_the_secret_key_is_not_the_databases_then_every_command_stops_saying_so(
    servers: Servers,
) -> None:
    server = servers("wrong-secret")
    key = server.create_account("acme")["api_key"]["value"]
    right = server.env["KEYGUARD_SECRET_KEY"]
    server.env["KEYGUARD_SECRET_KEY"] = "another-secret-" + "fedcba9876543210" * 3

    stderr = {
        "serve": serve_fails(server),
        "migrate": keyguard_fails(server, "migrate"),
        "keys list": keyguard_fails(server, "keys", "list", "--account", "1"),
        "accounts create": keyguard_fails(server, "accounts", "create", "minted"),
    }

    sentence = (
        "keyguard: KEYGUARD_SECRET_KEY is not the server secret this database was set up "
        "with, and keys made under one secret cannot be used under another: set it to the "
        "original.\n"
    )
    assert stderr == dict.fromkeys(stderr, sentence)
    server.env["KEYGUARD_SECRET_KEY"] = right
    server.start()
    answer = httpx.get(f"{server.base_url}/v1/api-keys", headers=bearer(key), timeout=10)
    assert answer.status_code == 200, answer.text
    assert [item["label"] for item in answer.json()] == ["acme full access"]


def test_if_the_secret_file_went_missing_then_serve_stops_until_it_is_restored(
    servers: Servers,
) -> None:
    server = servers("lost-secret", secret_key=None).start()
    key = printed_key(server.stdout)
    server.stop()
    secret_file = server.database.with_name("keyguard.secret")
    backup = secret_file.read_bytes()
    secret_file.unlink()

    stderr = serve_fails(server)

    assert stderr == (
        f"keyguard: The secret file {secret_file} was missing and keyguard generated a new "
        "one, but this database was set up with another secret, and keys made under one "
        "secret cannot be used under another: restore the original file from a backup.\n"
    )
    secret_file.write_bytes(backup)
    server.start()
    answer = httpx.get(f"{server.base_url}/v1/api-keys", headers=bearer(key), timeout=10)
    assert answer.status_code == 200, answer.text


def answered_alike_by_every_worker(
    server: KeyguardServer, token: str, path: str, status: int
) -> None:
    """Send requests until ``IN_A_ROW`` in a row answer ``status``; fail after one second.

    Each request goes on a new connection, which the kernel may hand to any worker.
    """
    deadline = time.monotonic() + 1.0
    streak = 0
    answers: list[int] = []
    fresh = httpx.Limits(max_keepalive_connections=0)
    with httpx.Client(base_url=server.base_url, limits=fresh, timeout=5) as client:
        while streak < IN_A_ROW:
            assert time.monotonic() < deadline, f"not settled on {status} after 1 s: {answers}"
            answers.append(client.get(path, headers=bearer(token)).status_code)
            streak = streak + 1 if answers[-1] == status else 0


@pytest.fixture(scope="module")
def two_workers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[KeyguardServer, str]]:
    """A server with two workers, and the full-access key of its one account."""
    with Servers(tmp_path_factory.mktemp("workers")) as servers:
        server = servers(workers=2)
        admin: str = server.create_account("acme")["api_key"]["value"]
        yield server.start(), admin


def create_key(server: KeyguardServer, admin: str, **fields: Any) -> dict[str, Any]:
    answer = httpx.post(
        f"{server.base_url}/v1/api-keys",
        headers=bearer(admin),
        json={"label": "new", **fields},
        timeout=10,
    )
    assert answer.status_code == 200, answer.text
    key: dict[str, Any] = answer.json()
    return key


def test_with_two_workers_a_new_key_works_on_every_worker_within_one_second(
    two_workers: tuple[KeyguardServer, str],
) -> None:
    server, admin = two_workers

    key = create_key(server, admin)

    answered_alike_by_every_worker(server, key["value"], f"/v1/api-keys/{key['id']}", 200)


def test_with_two_workers_a_deleted_key_is_refused_by_every_worker_within_one_second(
    two_workers: tuple[KeyguardServer, str],
) -> None:
    server, admin = two_workers
    key = create_key(server, admin)
    path = f"/v1/api-keys/{key['id']}"
    answered_alike_by_every_worker(server, key["value"], path, 200)

    deleted = httpx.delete(f"{server.base_url}{path}", headers=bearer(admin), timeout=10)

    assert deleted.status_code == 200, deleted.text
    answered_alike_by_every_worker(server, key["value"], path, 401)


@pytest.mark.parametrize(
    "environment",
    [{}, {"FORWARDED_ALLOW_IPS": "*"}],
    ids=["uvicorn_defaults", "forwarded_allow_ips_everyone"],
)
def test_without_trusted_proxies_a_local_peer_claiming_another_address_is_judged_as_itself(
    servers: Servers, environment: dict[str, str]
) -> None:
    # uvicorn believes X-Forwarded-For from 127.0.0.1 (or FORWARDED_ALLOW_IPS) unless
    # told not to; keyguard must judge the peer it sees, since it trusts no proxy.
    server = servers("no-proxies", settings=environment)
    admin: str = server.create_account("acme")["api_key"]["value"]
    server.start()
    key = create_key(server, admin, restricted=True, permitted_ips=["198.51.100.7"])
    claiming = bearer(key["value"]) | {"X-Forwarded-For": "198.51.100.7"}

    with httpx.Client(base_url=server.base_url, headers=claiming, timeout=10) as client:
        managed = client.get(f"/v1/api-keys/{key['id']}")
        forwarded = client.get("/auth/forward", headers={"X-Original-URI": "/v1/numbers"})

    refusal = {
        "success": False,
        "message": "IP address 127.0.0.1 is not permitted for this API key",
    }
    assert (managed.status_code, managed.json()) == (403, refusal)
    assert (forwarded.status_code, forwarded.json()) == (403, refusal)
