"""What survives when the server dies: a crash, or a supervisor's stop."""

import threading
from datetime import UTC, datetime
from typing import Any, Self

import httpx
import pytest

from keyguard.credits import MAX_LEASE
from tests.conftest import bearer
from tests.server import KeyguardServer, Servers, create_key, list_keys

pytestmark = pytest.mark.slow

WRITERS = 4
ACKNOWLEDGED_BEFORE_KILL = 40


def first_key(server: KeyguardServer) -> str:
    token: str = server.create_account("acme")["api_key"]["value"]
    return token


class CreateBurst:
    """Threads that create keys as fast as the server answers, until it stops answering."""

    def __init__(self, server: KeyguardServer, token: str) -> None:
        self._url = f"{server.base_url}/v1/api-keys"
        self._headers = bearer(token)
        self._lock = threading.Lock()
        self.acknowledged: dict[int, dict[str, Any]] = {}
        self.reached = threading.Event()
        self._stop = threading.Event()
        self.failures: list[Exception] = []
        self.refusals: list[httpx.Response] = []
        self._threads = [
            threading.Thread(target=self._create, args=(writer,)) for writer in range(WRITERS)
        ]

    def __enter__(self) -> Self:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=30)

    def _create(self, writer: int) -> None:
        with httpx.Client(headers=self._headers, timeout=10) as client:
            number = 0
            while not self._stop.is_set():
                number += 1
                try:
                    answer = client.post(self._url, json={"label": f"burst {writer}-{number}"})
                except httpx.TransportError as error:
                    with self._lock:
                        self.failures.append(error)
                    return
                if answer.status_code != 200:
                    with self._lock:
                        self.refusals.append(answer)
                    return
                key = answer.json()
                with self._lock:
                    self.acknowledged[key["id"]] = key
                    if len(self.acknowledged) >= ACKNOWLEDGED_BEFORE_KILL:
                        self.reached.set()


def test_every_acknowledged_create_survives_sigkill(servers: Servers) -> None:
    server = servers("crash")
    admin = first_key(server)
    server.start()

    with CreateBurst(server, admin) as burst:
        assert burst.reached.wait(timeout=20), "the burst of creates did not get going"
        server.kill()
    server.start()
    with server.client(admin) as api:
        listed = {key["id"]: key for key in list_keys(api)}

    assert not burst.refusals, [answer.text for answer in burst.refusals]
    assert burst.failures, "the kill did not land in the middle of the burst"
    assert burst.acknowledged.keys() <= listed.keys()
    for key_id, acknowledged in burst.acknowledged.items():
        assert listed[key_id]["label"] == acknowledged["label"]
        answer = httpx.get(
            f"{server.base_url}/v1/api-keys/{key_id}",
            headers=bearer(acknowledged["value"]),
            timeout=10,
        )
        assert answer.status_code == 200, f"key {key_id}: {answer.status_code} {answer.text}"


def test_sigterm_flushes_last_used_at(servers: Servers) -> None:
    # Usage is otherwise flushed hourly, so only the shutdown flush can write it.
    server = servers("graceful", settings={"KEYGUARD_USAGE_FLUSH_INTERVAL": "3600"})
    admin = first_key(server)
    server.start()
    with server.client(admin) as api:
        used, unused = create_key(api, label="used"), create_key(api, label="unused")

    answer = httpx.get(f"{server.base_url}/v1/api-keys", headers=bearer(used["value"]), timeout=10)
    server.stop()
    after = datetime.now(UTC)
    server.start()
    with server.client(admin) as api:
        listed = {key["id"]: key for key in list_keys(api)}

    assert answer.status_code == 200
    assert listed[unused["id"]]["last_used_at"] is None
    last_used = listed[used["id"]]["last_used_at"]
    assert last_used is not None, "the use before SIGTERM was not flushed"
    assert datetime.fromisoformat(last_used) <= after


def test_sigkill_loses_at_most_the_last_interval_of_uses(servers: Servers) -> None:
    interval = 0.5
    server = servers("usage-crash", settings={"KEYGUARD_USAGE_FLUSH_INTERVAL": str(interval)})
    admin = first_key(server)
    server.start()
    with server.client(admin) as api:
        earlier, latest = create_key(api, label="earlier"), create_key(api, label="latest")
    url = f"{server.base_url}/v1/api-keys"

    before = datetime.now(UTC).replace(microsecond=0)
    assert httpx.get(url, headers=bearer(earlier["value"]), timeout=10).status_code == 200
    after = datetime.now(UTC)
    threading.Event().wait(2 * interval + 0.2)  # a full interval and its flush have passed
    assert httpx.get(url, headers=bearer(latest["value"]), timeout=10).status_code == 200
    server.kill()
    server.start()
    with server.client(admin) as api:
        listed = {key["id"]: key for key in list_keys(api)}

    recorded = listed[earlier["id"]]["last_used_at"]
    assert recorded is not None, "a use older than one flush interval was lost by SIGKILL"
    assert before <= datetime.fromisoformat(recorded) <= after


def forward_statuses(server: KeyguardServer, token: str, requests: int) -> list[int]:
    headers = {**bearer(token), "X-Original-Method": "GET", "X-Original-URI": "/v1/trunks"}
    with httpx.Client(base_url=server.base_url, timeout=10) as client:
        return [client.get("/auth/forward", headers=headers).status_code for _ in range(requests)]


def test_sigkill_loses_at_most_the_last_interval_of_request_counts(servers: Servers) -> None:
    interval = 0.5
    server = servers("counts-crash", settings={"KEYGUARD_USAGE_FLUSH_INTERVAL": str(interval)})
    admin = first_key(server)
    server.start()
    with server.client(admin) as api:
        key = create_key(api, label="counted")

    earlier = forward_statuses(server, key["value"], 30)
    threading.Event().wait(2 * interval + 0.2)  # a full interval and its flush have passed
    latest = forward_statuses(server, key["value"], 20)
    server.kill()
    server.start()
    with server.client(admin) as api:
        series = api.get(f"/v1/api-keys/{key['id']}/usage", params={"granularity": "hour"})
    counted = sum(point["allowed"] for point in series.json()["items"])

    assert earlier == [200] * 30
    assert latest == [200] * 20
    assert 30 <= counted <= 30 + 20  # only the last interval's may be lost


def test_sigkill_of_a_server_holding_a_lease_never_grants_more_credits_than_exist(
    servers: Servers,
) -> None:
    credits = 300
    server = servers("credits-crash")
    admin = first_key(server)
    server.start()
    with server.client(admin) as api:
        key = create_key(api, label="metered", remaining=credits)
    allowed = 0
    for _ in range(20):  # a steady load grows the lease this process holds
        allowed += forward_statuses(server, key["value"], 5).count(200)
        threading.Event().wait(0.02)
    server.kill()
    server.start()
    refused_since = None
    while True:
        statuses = forward_statuses(server, key["value"], 10)
        allowed += statuses.count(200)
        if 200 in statuses:
            refused_since = None
            continue
        refused_since = (refused_since or 0) + 1
        if refused_since >= 30:  # refused for about 1.5 s: nothing left anywhere
            break
        threading.Event().wait(0.05)

    assert credits - MAX_LEASE <= allowed <= credits
