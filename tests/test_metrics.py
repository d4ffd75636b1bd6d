"""``/metrics`` and ``/healthz``: what a process tells about itself, and to whom.

Metrics count every account's keys and decisions: with ``KEYGUARD_METRICS_TOKEN``
set, only a caller presenting it sees them. ``/healthz`` answers anyone, so it
carries no count at all.
"""

import os
import re
import signal
import time
from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path

import httpx
import httpx2
import pytest
from pydantic import SecretStr
from starlette.testclient import TestClient

from keyguard.config import Settings, load_settings
from keyguard.errors import ConfigurationError
from tests.conftest import TEST_SECRET, ClientFactory, Tenant, bearer, settings_for
from tests.server import KeyguardServer, Servers

METRICS_TOKEN = "prometheus-" + "5" * 32
LIMIT = 3  # failed authentications per address per minute
OTHER_IP = "198.51.100.20"
UNAUTHORIZED = {"success": False, "error": True, "message": "Unauthorized"}
SNAPSHOT_KEYS = re.compile(r'^keyguard_snapshot_keys\{pid="\d+"\} (\S+)$', re.MULTILINE)
GAUGES = (
    "keyguard_snapshot_keys",
    "keyguard_snapshot_age_seconds",
    "keyguard_snapshot_revision",
    "keyguard_usage_backlog",
    "keyguard_database_up",
)


@pytest.fixture
def settings(database_url: str) -> Settings:
    return settings_for(
        database_url, metrics_token=SecretStr(METRICS_TOKEN), auth_failures_per_minute=LIMIT
    )


def assert_unauthorized(response: httpx2.Response) -> None:
    assert (response.status_code, response.json()) == (401, UNAUTHORIZED)
    assert response.headers["www-authenticate"] == "Bearer"
    assert "keyguard_" not in response.text


def assert_too_many(response: httpx2.Response) -> None:
    assert response.status_code == 429, response.text
    assert response.json() == {
        "success": False,
        "message": "Too many failed authentications from this address; "
        f"retry in {response.headers['retry-after']} seconds",
    }
    assert 1 <= int(response.headers["retry-after"]) <= 60


# -- /metrics ------------------------------------------------------------------------------


@pytest.mark.usefixtures("tenant", "other_tenant")
def test_if_metrics_token_is_presented_then_metrics_are_shown(client: TestClient) -> None:
    response = client.get("/metrics", headers=bearer(METRICS_TOKEN))

    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    assert SNAPSHOT_KEYS.findall(response.text) == ["2.0"]


@pytest.mark.parametrize(
    "headers",
    [
        pytest.param({}, id="missing"),
        pytest.param(bearer("prometheus-" + "6" * 32), id="wrong_token"),
        pytest.param(bearer(METRICS_TOKEN[:-1]), id="token_less_its_last_character"),
        pytest.param(bearer(METRICS_TOKEN + "5"), id="token_and_one_more_character"),
        pytest.param({"Authorization": f"Basic {METRICS_TOKEN}"}, id="other_scheme"),
        pytest.param({"Authorization": METRICS_TOKEN}, id="no_scheme"),
        pytest.param({"X-Metrics-Token": METRICS_TOKEN}, id="other_header"),
    ],
)
def test_if_metrics_token_is_missing_or_wrong_then_401_wavix_body(
    client: TestClient, headers: dict[str, str]
) -> None:
    assert_unauthorized(client.get("/metrics", headers=headers))


@pytest.mark.parametrize(
    "tokens",
    [
        pytest.param([METRICS_TOKEN, METRICS_TOKEN], id="right_twice"),
        pytest.param([METRICS_TOKEN, "wrong"], id="right_first"),
        pytest.param(["wrong", METRICS_TOKEN], id="right_second"),
    ],
)
def test_if_two_authorization_headers_are_sent_then_metrics_answer_401(
    client: TestClient, tokens: list[str]
) -> None:
    headers = [("Authorization", f"Bearer {token}") for token in tokens]

    assert_unauthorized(client.get("/metrics", headers=headers))


def test_if_a_tenants_key_is_presented_then_metrics_answer_401(
    client: TestClient, tenant: Tenant
) -> None:
    assert_unauthorized(client.get("/metrics", headers=tenant.headers))


def test_if_wrong_metrics_tokens_pass_the_failure_limit_then_429_even_for_the_right_one(
    client_from: ClientFactory, tenant: Tenant
) -> None:
    guesser, bystander = client_from("203.0.113.77"), client_from(OTHER_IP)
    for _attempt in range(LIMIT):
        assert_unauthorized(guesser.get("/metrics", headers=bearer("guess-" + "0" * 32)))

    assert_too_many(guesser.get("/metrics", headers=bearer("guess-" + "1" * 32)))
    assert_too_many(guesser.get("/metrics", headers=bearer(METRICS_TOKEN)))
    # One limit for keys and tokens alike: the guesser's wrong keys are throttled too,
    # and, as for anyone, a valid key is never refused by the limit.
    assert_too_many(guesser.get("/v1/api-keys", headers=bearer("kg_nonsense")))
    assert guesser.get("/v1/api-keys", headers=tenant.headers).status_code == 200
    assert bystander.get("/metrics", headers=bearer(METRICS_TOKEN)).status_code == 200


def test_if_wrong_keys_pass_the_failure_limit_then_the_metrics_token_gets_429(
    client_from: ClientFactory,
) -> None:
    guesser = client_from("203.0.113.78")
    for _attempt in range(LIMIT + 1):
        guesser.get("/v1/api-keys", headers=bearer("kg_nonsense"))

    assert_too_many(guesser.get("/metrics", headers=bearer(METRICS_TOKEN)))


def samples(text: str, name: str) -> dict[str, float]:
    """The samples of one metric, by their labels as written."""
    found = re.findall(rf"^{name}(\{{.*\}})? (\S+)$", text, re.MULTILINE)
    return {labels: float(value) for labels, value in found}


@pytest.mark.usefixtures("tenant")
def test_decisions_are_counted_by_outcome_and_gauges_name_the_process(
    client: TestClient, tenant: Tenant
) -> None:
    for token in (tenant.token, tenant.token, "kg_nonsense"):
        client.get("/auth/forward", headers=bearer(token) | {"X-Original-URI": "/v1/numbers"})

    response = client.get("/metrics", headers=bearer(METRICS_TOKEN))

    pid = str(os.getpid())
    assert response.headers["x-keyguard-worker"] == pid
    decisions = samples(response.text, "keyguard_decisions_total")
    assert decisions['{outcome="allowed"}'] >= 2  # the management calls of fixtures count too
    assert decisions['{outcome="unauthorized"}'] == 1
    for gauge in GAUGES:
        assert list(samples(response.text, gauge)) == [f'{{pid="{pid}"}}'], gauge
    assert samples(response.text, "keyguard_decision_seconds_count") == {"": 0.0}  # 1 in 64


class TestWithoutMetricsToken:
    @pytest.fixture
    def settings(self, database_url: str) -> Settings:
        return Settings(database_url=database_url, secret_key=TEST_SECRET)

    @pytest.mark.usefixtures("tenant")
    def test_metrics_are_open_to_every_caller(self, client: TestClient) -> None:
        response = client.get("/metrics")

        assert response.status_code == 200
        assert SNAPSHOT_KEYS.findall(response.text) == ["1.0"]


@pytest.mark.parametrize("token", ["", "x" * 31])
def test_if_metrics_token_is_shorter_than_32_characters_then_keyguard_does_not_start(
    monkeypatch: pytest.MonkeyPatch, token: str
) -> None:
    monkeypatch.setenv("KEYGUARD_METRICS_TOKEN", token)

    with pytest.raises(ConfigurationError, match=r"KEYGUARD_METRICS_TOKEN: .*at least 32"):
        load_settings()


# -- /healthz ------------------------------------------------------------------------------


@pytest.mark.usefixtures("tenant", "other_tenant")
def test_health_tells_anyone_whether_the_process_can_serve_but_no_counts(
    client: TestClient,
) -> None:
    response = client.get("/healthz")

    assert response.status_code == 200
    body = response.json()
    assert set(body) == {"success", "database", "snapshot_age_seconds"}
    assert (body["success"], body["database"]) == (True, "ok")
    assert 0 <= body["snapshot_age_seconds"] < 1


def test_health_schema_documents_no_counts(client: TestClient) -> None:
    schema = client.get("/openapi.json").json()["components"]["schemas"]["HealthResponse"]

    assert set(schema["properties"]) == {
        "success",
        "database",
        "snapshot_age_seconds",
        "replica",  # with a read replica only, as the replica's lag
        "replica_lag_seconds",
    }
    assert schema["required"] == ["success", "database", "snapshot_age_seconds"]


# -- several workers ------------------------------------------------------------------------


def pinned_workers(server: KeyguardServer, stack: ExitStack) -> dict[str, httpx.Client]:
    """A keep-alive connection to each worker, by the pid that answers on it.

    The kernel hands each new connection to some worker, often the same one;
    connections are opened until every worker has one.
    """
    found: dict[str, httpx.Client] = {}
    deadline = time.monotonic() + 5.0
    while len(found) < server.workers:
        assert time.monotonic() < deadline, f"reached only workers {sorted(found)}"
        client = stack.enter_context(
            httpx.Client(
                base_url=server.base_url, limits=httpx.Limits(max_connections=1), timeout=5
            )
        )
        found.setdefault(client.get("/metrics").headers["x-keyguard-worker"], client)
    return found


def scrape_until(client: httpx.Client, done: Callable[[str], bool], timeout: float = 5.0) -> str:
    """Scrape until ``done(text)`` holds: other workers export every second."""
    deadline = time.monotonic() + timeout
    while True:
        text = client.get("/metrics").text
        if done(text) or time.monotonic() > deadline:
            return text
        time.sleep(0.1)


def forward(client: httpx.Client, token: str) -> int:
    headers = bearer(token) | {"X-Original-URI": "/v1/numbers"}
    return client.get("/auth/forward", headers=headers).status_code


@pytest.mark.slow
def test_one_scrape_covers_every_worker_of_the_server(servers: Servers, tmp_path: Path) -> None:
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    server = servers(workers=2, settings={"TMPDIR": str(scratch)})
    token = server.create_account("acme")["api_key"]["value"]
    server.start()
    with ExitStack() as stack:
        (first, one), (second, other) = pinned_workers(server, stack).items()
        assert [forward(one, token) for _ in range(3)] == [200] * 3
        assert [forward(other, "kg_nonsense") for _ in range(5)] == [401] * 5

        def both_counted(text: str) -> bool:
            decisions = samples(text, "keyguard_decisions_total")
            return decisions.get('{outcome="unauthorized"}') == 5

        text = scrape_until(one, both_counted)

        assert samples(text, "keyguard_decisions_total") == {
            '{outcome="allowed"}': 3.0,
            '{outcome="unauthorized"}': 5.0,
        }
        for gauge in GAUGES:
            assert set(samples(text, gauge)) == {f'{{pid="{first}"}}', f'{{pid="{second}"}}'}
        assert set(samples(text, "keyguard_snapshot_keys").values()) == {1.0}
        [folder] = scratch.iterdir()
        assert folder.name.startswith("keyguard-metrics-")

        # A worker that dies takes its gauges along; its counts stay in the totals.
        os.kill(int(second), signal.SIGKILL)
        text = scrape_until(one, lambda text: f'pid="{second}"' not in text)

        assert f'pid="{second}"' not in text
        assert samples(text, "keyguard_decisions_total")['{outcome="unauthorized"}'] == 5.0
    server.stop()
    assert list(scratch.iterdir()) == []  # the metrics folder goes with the server
