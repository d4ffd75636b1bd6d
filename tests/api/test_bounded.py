"""A bounded snapshot behind every entry point: forward auth, verify, the middleware."""

import threading
from typing import Any

import pytest
from starlette.testclient import TestClient

from keyguard.config import Settings
from keyguard.domain.keys import generate
from keyguard.runtime import Keyguard
from keyguard.workingset import WorkingSet
from tests.conftest import Tenant, settings_for

PROXY = "127.0.0.1"
HELD = 2


@pytest.fixture
def settings(database_url: str) -> Settings:
    return settings_for(database_url, snapshot_max_keys=HELD, trusted_proxies=[PROXY])


def _forward(client: TestClient, token: str, uri: str = "/v1/numbers") -> int:
    headers = {
        "X-Original-URI": uri,
        "X-Original-Method": "GET",
        "Authorization": f"Bearer {token}",
    }
    return client.get("/auth/forward", headers=headers).status_code


def test_every_entry_point_reads_keys_outside_the_working_set_off_the_event_loop(
    keyguard: Keyguard, tenant: Tenant, client_from: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    cache = keyguard.cache
    assert isinstance(cache, WorkingSet)
    tokens = [
        keyguard.service.create_key(tenant.account_id, {"label": f"k{n}"}).value for n in range(5)
    ]
    loop_threads: set[int] = set()
    read_threads: set[int] = set()
    decide, read = keyguard.decider.decide, keyguard.feed.key_states

    def deciding(*args: Any, **kwargs: Any) -> Any:
        loop_threads.add(threading.get_ident())
        return decide(*args, **kwargs)

    def reading(*args: Any, **kwargs: Any) -> Any:
        read_threads.add(threading.get_ident())
        return read(*args, **kwargs)

    monkeypatch.setattr(keyguard.decider, "decide", deciding)
    monkeypatch.setattr(keyguard.feed, "key_states", reading)
    proxy = client_from(PROXY)
    for token in tokens:
        assert _forward(proxy, token) == 200
    assert (len(cache), cache.evictions) == (HELD, len(tokens) - HELD)
    for token in tokens[:3]:  # the Wavix API, through the middleware
        response = proxy.get("/v1/api-keys", headers={"Authorization": f"Bearer {token}"})
        assert response.status_code == 200
    asked = {"key": tokens[3], "ip": "192.0.2.1", "method": "GET", "path": "/v1/numbers"}
    assert proxy.post("/auth/verify", json=asked).json()["allowed"] is True
    assert read_threads
    assert loop_threads
    assert not read_threads & loop_threads
    reads = cache.reads
    for _ in range(10):  # fewer than the failure limit allows
        assert _forward(proxy, generate("kg")) == 401
    assert cache.reads == reads  # no key, no read
    metrics = proxy.get("/metrics").text
    assert f"keyguard_snapshot_reads_total {float(reads)}" in metrics
    assert f"keyguard_snapshot_evictions_total {float(cache.evictions)}" in metrics


def test_a_key_revoked_in_the_api_is_refused_held_or_not(
    keyguard: Keyguard, tenant: Tenant, client_from: Any
) -> None:
    views = [keyguard.service.create_key(tenant.account_id, {"label": f"k{n}"}) for n in range(3)]
    proxy = client_from(PROXY)
    for view in views:
        assert _forward(proxy, view.value) == 200
    held, evicted = views[2], views[0]  # the first was evicted when the third came
    assert keyguard.cache.get(keyguard.vault.digest(evicted.value)) is None
    for view in (held, evicted):
        keyguard.service.set_active(tenant.account_id, view.key.id, False)
        assert _forward(proxy, view.value) == 401
    keyguard.service.delete_key(tenant.account_id, views[1].key.id)
    assert _forward(proxy, views[1].value) == 401


def test_a_key_with_credits_is_allowed_on_its_first_request_after_each_read(
    keyguard: Keyguard, tenant: Tenant, client_from: Any
) -> None:
    credited = keyguard.service.create_key(tenant.account_id, {"label": "c", "remaining": 50})
    others = [keyguard.service.create_key(tenant.account_id, {"label": f"k{n}"}) for n in "ab"]
    proxy = client_from(PROXY)
    for _ in range(3):
        assert _forward(proxy, credited.value) == 200  # its lease taken as it was read
        for other in others:  # evict it
            assert _forward(proxy, other.value) == 200
        assert keyguard.cache.get(keyguard.vault.digest(credited.value)) is None
