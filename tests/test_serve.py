"""``keyguard serve`` as an operator meets it: first start, restarts, workers."""

import os
import pty
import re
import select
import stat
import subprocess
import time
from collections.abc import Iterator
from contextlib import suppress
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest

from tests.conftest import POSTGRES_URL_VARIABLE, bearer, missing
from tests.postgres import postgres_schema
from tests.server import (
    HOST,
    START_TIMEOUT,
    KeyguardServer,
    Servers,
    Worker,
    create_key,
    free_port,
    keyguard_command,
    workers_of,
)

pytestmark = pytest.mark.slow

# <prefix>_<32 base62 characters><6 base62 characters of checksum>
TOKEN = re.compile(r"\b[a-z0-9]{1,16}_[0-9A-Za-z]{38}\b")
IN_A_ROW = 20


def printed_key(stdout: str) -> str:
    """The line that is nothing but a key."""
    [key] = [line.strip() for line in stdout.splitlines() if TOKEN.fullmatch(line.strip())]
    return key


def curl_request(stdout: str) -> httpx.Request:
    """The request that the printed ``curl`` line would send from a shell."""
    [line] = [line for line in stdout.splitlines() if line.startswith("curl ")]
    words = shell_words(line)[1:]
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


def shell_words(line: str) -> list[str]:
    """The arguments a POSIX shell would pass for ``line``, ``$(…)`` expanded."""
    done = subprocess.run(
        ["/bin/sh", "-c", f"set -- {line}; printf '%s\\0' \"$@\""],
        capture_output=True,
        text=True,
        timeout=10,
        check=True,
    )
    return done.stdout.split("\0")[:-1]


def key_file(server: KeyguardServer) -> Path:
    return server.database.with_name("first-key.txt")


def assert_private_key_file(path: Path) -> str:
    """The key in ``path``, a file only its owner may read or write."""
    assert path.is_file(), f"no first key at {path}"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    key = path.read_text().strip()
    assert TOKEN.fullmatch(key), key
    return key


def test_first_serve_writes_the_key_to_a_private_file_and_prints_only_its_path(
    servers: Servers,
) -> None:
    """A service's standard output goes to its log: the key must not."""
    server = servers("fresh", secret_key=None).start()

    key = assert_private_key_file(key_file(server))

    assert str(key_file(server)) in server.stdout
    assert key not in server.stdout
    assert key not in server.stderr
    assert TOKEN.search(server.stdout) is None, server.stdout


def test_first_serve_prints_a_curl_line_that_works_without_showing_the_key(
    servers: Servers,
) -> None:
    server = servers("fresh", secret_key=None).start()
    key = assert_private_key_file(key_file(server))

    with httpx.Client(timeout=10) as client:
        answer = client.send(curl_request(server.stdout))

    assert answer.status_code == 200, answer.text
    [listed] = answer.json()
    assert listed["value"] == key
    assert listed["active"] is True
    assert listed["scopes_enabled"] is False


def test_second_serve_on_the_same_database_writes_and_prints_no_key(servers: Servers) -> None:
    server = servers("restarted", secret_key=None).start()
    key = assert_private_key_file(key_file(server))
    server.stop()
    key_file(server).unlink()

    server.start()
    answer = httpx.get(f"{server.base_url}/v1/api-keys", headers=bearer(key), timeout=10)

    assert not key_file(server).exists()
    assert TOKEN.search(server.stdout) is None, server.stdout
    assert "curl" not in server.stdout
    assert "first-key" not in server.stdout
    assert TOKEN.search(server.stderr) is None, server.stderr
    assert answer.status_code == 200, "the first key stopped working after a restart"


def test_if_a_first_key_file_is_left_over_then_it_is_replaced_and_stays_private(
    servers: Servers,
) -> None:
    server = servers("left-over", secret_key=None)
    key_file(server).write_text("an older key\n")
    key_file(server).chmod(0o644)

    server.start()

    key = assert_private_key_file(key_file(server))
    assert httpx.get(f"{server.base_url}/v1/api-keys", headers=bearer(key)).status_code == 200


def test_on_postgresql_the_first_key_file_is_beside_the_secret_file(
    servers: Servers, tmp_path: Path
) -> None:
    database = os.environ.get(POSTGRES_URL_VARIABLE)
    if not database:
        missing(f"PostgreSQL: set {POSTGRES_URL_VARIABLE} to run this test on PostgreSQL")
    secrets = tmp_path / "secrets"
    with postgres_schema(database) as url:
        settings = {
            "KEYGUARD_DATABASE_URL": url,
            "KEYGUARD_SECRET_FILE": str(secrets / "keyguard.secret"),
        }
        server = servers("postgres", secret_key=None, settings=settings).start()

        key = assert_private_key_file(secrets / "first-key.txt")
        answer = httpx.get(f"{server.base_url}/v1/api-keys", headers=bearer(key), timeout=10)
        server.stop()

    assert str(secrets / "first-key.txt") in server.stdout
    assert key not in server.stdout
    assert answer.status_code == 200, answer.text


def test_first_serve_on_a_terminal_prints_the_key_and_writes_no_file(tmp_path: Path) -> None:
    """Someone watching a terminal reads the key there, once."""
    server = KeyguardServer(tmp_path / "terminal", secret_key=None)
    controller, terminal = pty.openpty()
    process = server.spawn(stdout=terminal)
    os.close(terminal)
    try:
        shown = read_terminal_until(controller, "curl ", process)
        wait_until_answering(server.base_url)
        answer = httpx.get(
            f"{server.base_url}/v1/api-keys", headers=bearer(printed_key(shown)), timeout=10
        )
    finally:
        server.kill()
        os.close(controller)

    assert answer.status_code == 200, answer.text
    assert not key_file(server).exists()
    assert "first-key" not in shown


def wait_until_answering(base_url: str) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        with suppress(httpx.TransportError):
            if httpx.get(f"{base_url}/healthz", timeout=1).status_code == 200:
                return
        time.sleep(0.02)
    raise AssertionError(f"{base_url} did not answer within {START_TIMEOUT:g} s")


def read_terminal_until(controller: int, marker: str, process: subprocess.Popen[bytes]) -> str:
    """What the process wrote to its terminal, once a line starts with ``marker`` and the
    server answers; fails after the start timeout."""
    shown = b""
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        assert process.poll() is None, f"keyguard serve exited: {shown.decode(errors='replace')}"
        ready, _, _ = select.select([controller], [], [], 0.1)
        if ready:
            shown += os.read(controller, 65536)
        text = re.sub(r"\x1b\[[0-9;]*m", "", shown.decode(errors="replace"))
        if any(line.startswith(marker) for line in text.splitlines()):
            return text.replace("\r", "")
    raise AssertionError(f"no line starting with {marker!r}: {shown.decode(errors='replace')}")


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
    key = assert_private_key_file(key_file(server))
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
    workers: list[Worker], token: str, path: str, status: int
) -> None:
    """Ask every worker, each on its own pinned connection, until each has answered
    ``status`` ``IN_A_ROW`` times in a row; fail after one second.

    New connections would not do: the kernel hands them to whichever worker
    accepts first, and one worker often takes every one of them.
    """
    deadline = time.monotonic() + 1.0
    answers: dict[str, list[int]] = {worker.pid: [] for worker in workers}
    streaks = dict.fromkeys(answers, 0)
    while min(streaks.values()) < IN_A_ROW:
        assert time.monotonic() < deadline, f"not settled on {status} after 1 s: {answers}"
        for worker in workers:
            if streaks[worker.pid] < IN_A_ROW:
                answer = worker.client.get(path, headers=bearer(token)).status_code
                answers[worker.pid].append(answer)
                streaks[worker.pid] = streaks[worker.pid] + 1 if answer == status else 0
    for worker in workers:
        worker.still_same()


@pytest.fixture(scope="module")
def two_workers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[KeyguardServer, str]]:
    """A server with two workers, and the full-access key of its one account."""
    with Servers(tmp_path_factory.mktemp("workers")) as servers:
        server = servers(workers=2)
        admin: str = server.create_account("acme")["api_key"]["value"]
        yield server.start(), admin


def test_with_two_workers_a_new_key_works_on_every_worker_within_one_second(
    two_workers: tuple[KeyguardServer, str],
) -> None:
    server, admin = two_workers
    with workers_of(server) as workers:
        assert len(workers) == 2

        with server.client(admin) as api:
            key = create_key(api)

        answered_alike_by_every_worker(workers, key["value"], f"/v1/api-keys/{key['id']}", 200)


def test_with_two_workers_a_deleted_key_is_refused_by_every_worker_within_one_second(
    two_workers: tuple[KeyguardServer, str],
) -> None:
    server, admin = two_workers
    with workers_of(server) as workers:
        assert len(workers) == 2
        with server.client(admin) as api:
            key = create_key(api)
            path = f"/v1/api-keys/{key['id']}"
            answered_alike_by_every_worker(workers, key["value"], path, 200)

            deleted = api.delete(path)

        assert deleted.status_code == 200, deleted.text
        answered_alike_by_every_worker(workers, key["value"], path, 401)


def test_with_two_workers_an_expired_key_is_refused_by_every_worker_within_one_second(
    two_workers: tuple[KeyguardServer, str],
) -> None:
    server, admin = two_workers
    expires = (datetime.now(UTC) + timedelta(seconds=3)).replace(microsecond=0)
    with workers_of(server) as workers:
        with server.client(admin) as api:
            key = create_key(api, expires_at=expires.strftime("%Y-%m-%dT%H:%M:%SZ"))
        path = f"/v1/api-keys/{key['id']}"
        answered_alike_by_every_worker(workers, key["value"], path, 200)

        time.sleep(max(0.0, expires.timestamp() - time.time()))

        answered_alike_by_every_worker(workers, key["value"], path, 401)


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
    with server.client(admin) as api:
        key = create_key(api, restricted=True, permitted_ips=["198.51.100.7"])
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
