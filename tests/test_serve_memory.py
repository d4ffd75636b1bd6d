"""``KEYGUARD_DATABASE_URL=memory:// keyguard serve``: a throwaway keyguard in one process."""

import httpx
import pytest

from tests.conftest import bearer
from tests.server import Servers
from tests.test_serve import assert_private_key_file

pytestmark = pytest.mark.slow

MEMORY = {"KEYGUARD_DATABASE_URL": "memory://"}


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
    server = servers("memory", workers=2, secret_key=None, settings=MEMORY)
    server.spawn()  # the fixture ends it, and any worker it forked

    assert server.wait(30) == 1
    assert server.stderr == (
        "keyguard: memory:// keeps every key inside one process: serve it with --workers 1, "
        "or give the workers a database they share (sqlite:///path/to/keyguard.db or "
        "postgresql://…).\n"
    )
    assert not (server.folder / "data").exists()
