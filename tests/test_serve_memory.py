"""``KEYGUARD_DATABASE_URL=memory:// keyguard serve``: a throwaway keyguard in one process."""

import os
import signal
import subprocess
from collections.abc import Iterator
from contextlib import suppress
from pathlib import Path

import httpx
import pytest

from tests.conftest import bearer
from tests.server import HOST, Servers, free_port, keyguard_command
from tests.test_serve import assert_private_key_file

pytestmark = pytest.mark.slow

MEMORY = {"KEYGUARD_DATABASE_URL": "memory://"}


@pytest.fixture
def servers(tmp_path: Path) -> Iterator[Servers]:
    with Servers(tmp_path) as started:
        yield started


def test_the_first_key_it_hands_out_is_one_the_server_has(servers: Servers) -> None:
    server = servers("memory", secret_key=None, settings=MEMORY).start()
    key = assert_private_key_file(server.folder / "data" / "first-key.txt")

    answer = httpx.get(f"{server.base_url}/v1/api-keys", headers=bearer(key), timeout=10)

    assert answer.status_code == 200, answer.text
    [listed] = answer.json()
    assert listed["value"] == key


def test_it_writes_no_secret_file(servers: Servers) -> None:
    server = servers("memory", secret_key=None, settings=MEMORY).start()

    assert not (server.folder / "data" / "keyguard.secret").exists()
    assert sorted(path.name for path in (server.folder / "data").iterdir()) == ["first-key.txt"]


def test_with_several_workers_it_refuses_in_one_sentence(servers: Servers) -> None:
    server = servers("memory", secret_key=None, settings=MEMORY)
    command = [*keyguard_command(), "serve", "--host", HOST, "--port", str(free_port())]
    process = subprocess.Popen(
        [*command, "--workers", "2"],
        cwd=server.folder,
        env=server.env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        _, stderr = process.communicate(timeout=30)
    finally:
        with suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)  # workers it may have forked, too

    assert process.returncode == 1
    assert stderr == (
        "keyguard: memory:// keeps every key inside one process: serve it with --workers 1, "
        "or give the workers a database they share (sqlite:///path/to/keyguard.db or "
        "postgresql://…).\n"
    )
    assert not (server.folder / "data").exists()
