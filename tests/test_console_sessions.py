"""Console sessions and sign-in links in the database, on every backend, without a browser."""

import subprocess
import sys
from datetime import timedelta

import pytest

from keyguard.console.security import cookie_header, csrf_token
from keyguard.console.sessions import (
    IDLE_TIMEOUT,
    MemorySessions,
    Session,
    SessionStore,
    hashed,
    new_secret,
    now,
    open_flash,
    open_sessions,
    seal_flash,
)
from keyguard.runtime import Keyguard


@pytest.fixture(params=["database", "memory"])
def sessions(request: pytest.FixtureRequest, keyguard: Keyguard) -> tuple[SessionStore, int]:
    account, _ = keyguard.service.create_account("Sessions")
    store = open_sessions(keyguard.store) if request.param == "database" else MemorySessions()
    return store, account.id


def test_a_session_is_found_by_its_ids_hash_only(sessions: tuple[SessionStore, int]) -> None:
    store, account_id = sessions
    session_id, at = new_secret(), now()
    store.create(hashed(session_id), Session(account_id, 7, "203.0.113.9", at, at))

    found = store.get(hashed(session_id))
    assert found is not None
    assert (found.account_id, found.key_id, found.client_ip) == (account_id, 7, "203.0.113.9")
    assert store.get(hashed(new_secret())) is None
    store.end(hashed(session_id))
    assert store.get(hashed(session_id)) is None


def test_idle_sessions_end_after_thirty_minutes(sessions: tuple[SessionStore, int]) -> None:
    store, account_id = sessions
    at = now()
    fresh, stale = new_secret(), new_secret()
    store.create(hashed(fresh), Session(account_id, None, None, at, at))
    old = at - IDLE_TIMEOUT
    store.create(hashed(stale), Session(account_id, None, None, old, old))
    stored = store.get(hashed(stale))
    assert stored is not None
    assert stored.idle(at)

    assert store.end_idle(at) == 1
    assert store.get(hashed(stale)) is None
    store.touch(hashed(fresh), at + IDLE_TIMEOUT - timedelta(seconds=1))
    assert store.end_idle(at + IDLE_TIMEOUT) == 0


def test_the_flash_is_taken_once_and_opens_with_its_session_id_only(
    sessions: tuple[SessionStore, int],
) -> None:
    store, account_id = sessions
    session_id, at = new_secret(), now()
    store.create(hashed(session_id), Session(account_id, 1, None, at, at))
    sealed = seal_flash(session_id, "12:kg_secret")
    assert b"kg_secret" not in sealed
    store.set_flash(hashed(session_id), sealed)

    taken = store.take_flash(hashed(session_id))
    assert taken is not None
    assert open_flash(session_id, taken) == "12:kg_secret"
    assert open_flash(new_secret(), taken) is None
    assert store.take_flash(hashed(session_id)) is None


def test_a_link_signs_in_once_and_not_after_it_expires(sessions: tuple[SessionStore, int]) -> None:
    store, account_id = sessions
    at = now()
    link, late = new_secret(), new_secret()
    store.create_link(hashed(link), account_id, at + timedelta(minutes=15))
    store.create_link(hashed(late), account_id, at + timedelta(minutes=15))

    assert store.use_link(hashed(link), at) == account_id
    assert store.use_link(hashed(link), at) is None
    assert store.use_link(hashed(late), at + timedelta(minutes=15)) is None
    assert store.use_link(hashed(new_secret()), at) is None


def test_the_cookie_is_secure_over_https_only_and_tokens_differ_per_session() -> None:
    assert cookie_header("c", "v", secure=True).endswith("; Secure")
    assert "Secure" not in cookie_header("c", "v", secure=False)
    assert "HttpOnly" in cookie_header("c", "v", secure=False)
    assert "SameSite=Strict" in cookie_header("c", "v", secure=False)
    assert csrf_token("a") != csrf_token("b")
    assert csrf_token("a") == csrf_token("a")


@pytest.mark.parametrize("package", ["keyguard.console", "keyguard.api", "keyguard.cli"])
def test_each_web_package_imports_on_its_own(package: str) -> None:
    """Whichever a program imports first, nothing is circular."""
    subprocess.run([sys.executable, "-c", f"import {package}"], check=True, timeout=60)
