"""nginx in front of an API, with keyguard deciding every request.

The configuration is ``examples/nginx/nginx.conf`` itself, with only its three
addresses moved to free ports: what a reader copies is what these tests run.
Every request goes through nginx; the API behind it echoes what it received and
counts the requests that reached it.
"""

import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import suppress
from pathlib import Path
from typing import Any

import httpx
import pytest

from keyguard.domain.keys import generate
from tests.conftest import missing
from tests.proxied import EchoAPI, bearer, known_account, with_addresses
from tests.server import HOST, KeyguardServer, Servers, free_port

pytestmark = pytest.mark.slow

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "nginx" / "nginx.conf"
# The example's addresses for keyguard, the API and nginx itself.
KEYGUARD_ADDRESS = "127.0.0.1:8080"
API_ADDRESS = "127.0.0.1:9000"
NGINX_ADDRESS = "127.0.0.1:8000"
START_TIMEOUT = 10.0
STOP_TIMEOUT = 10.0

UNAUTHORIZED = {"success": False, "error": True, "message": "Unauthorized"}
OUTSIDE_127_0_0_1 = "10.0.0.0/8"


def nginx_binary() -> str:
    # /usr/sbin is not on every user's PATH, but it is where Debian installs nginx.
    path = os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/sbin"])
    found = shutil.which("nginx", path=path)
    if found is None:
        missing(
            "nginx is not installed, and these tests run the example configuration in a real"
            " nginx: install it with `apt-get install nginx` (as root), or run .ci/run."
        )
    return found


def example_config(keyguard: str, api: str, nginx: str) -> str:
    """The example configuration, with its three addresses and nothing else changed."""
    return with_addresses(
        EXAMPLE, {KEYGUARD_ADDRESS: keyguard, API_ADDRESS: api, NGINX_ADDRESS: nginx}
    )


class Nginx:
    """``nginx -p PREFIX -c PREFIX/nginx.conf -g "daemon off;"`` in the foreground."""

    def __init__(self, prefix: Path, config: str, port: int) -> None:
        self.prefix = prefix
        self.port = port
        (prefix / "temp").mkdir(parents=True)
        (prefix / "nginx.conf").write_text(config)
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def base_url(self) -> str:
        return f"http://{HOST}:{self.port}"

    @property
    def stderr(self) -> str:
        return (self.prefix / "nginx.stderr").read_text(errors="replace")

    @property
    def access_log(self) -> str:
        path = self.prefix / "access.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def start(self) -> "Nginx":
        command = [nginx_binary(), "-p", str(self.prefix), "-c", str(self.prefix / "nginx.conf")]
        with (self.prefix / "nginx.stderr").open("wb") as stderr:
            self._process = subprocess.Popen(
                [*command, "-g", "daemon off;"],
                cwd=self.prefix,
                stdin=subprocess.DEVNULL,
                stdout=stderr,
                stderr=stderr,
                start_new_session=True,  # its workers share its process group
            )
        self._wait_until_listening()
        return self

    def _wait_until_listening(self) -> None:
        process = self._require_process()
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise AssertionError(
                    f"nginx exited with status {process.returncode} before it listened on"
                    f" port {self.port}.\n--- stderr ---\n{self.stderr}"
                )
            with suppress(OSError), socket.create_connection((HOST, self.port), timeout=0.5):
                return
            time.sleep(0.02)
        self.stop()
        raise AssertionError(
            f"nginx did not listen on port {self.port} within {START_TIMEOUT:g} s."
            f"\n--- stderr ---\n{self.stderr}"
        )

    def stop(self) -> None:
        """SIGQUIT (graceful), then SIGTERM (fast), then SIGKILL to every nginx process."""
        process = self._require_process()
        for stop in (signal.SIGQUIT, signal.SIGTERM):
            with suppress(ProcessLookupError):
                process.send_signal(stop)
            with suppress(subprocess.TimeoutExpired):
                process.wait(STOP_TIMEOUT / 2)
                break
        # The master leads its own process group: no worker outlives it.
        with suppress(ProcessLookupError, PermissionError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait(STOP_TIMEOUT)

    def _require_process(self) -> "subprocess.Popen[bytes]":
        assert self._process is not None, "nginx was never started"
        return self._process


@pytest.fixture(scope="module")
def keyguard(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KeyguardServer]:
    with Servers(tmp_path_factory.mktemp("keyguard")) as servers:
        yield servers(settings={"KEYGUARD_TRUSTED_PROXIES": "127.0.0.1"}).start()


@pytest.fixture(scope="module")
def api() -> Iterator[EchoAPI]:
    started = EchoAPI().start()
    try:
        yield started
    finally:
        started.stop()


@pytest.fixture(scope="module")
def nginx(
    tmp_path_factory: pytest.TempPathFactory, keyguard: KeyguardServer, api: EchoAPI
) -> Iterator[Nginx]:
    port = free_port()
    config = example_config(f"{HOST}:{keyguard.port}", api.address, f"{HOST}:{port}")
    server = Nginx(tmp_path_factory.mktemp("nginx"), config, port).start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def account(keyguard: KeyguardServer) -> dict[str, Any]:
    """The account and its first, full-access key, once the server knows them."""
    return known_account(keyguard)


@pytest.fixture(scope="module")
def full_access(account: dict[str, Any]) -> str:
    token: str = account["api_key"]["value"]
    return token


@pytest.fixture(scope="module")
def management(keyguard: KeyguardServer, full_access: str) -> Iterator[httpx.Client]:
    """keyguard's own API, reached directly, as the account's full-access key."""
    with httpx.Client(base_url=keyguard.base_url, headers=bearer(full_access), timeout=10) as c:
        yield c


@pytest.fixture(scope="module")
def client(nginx: Nginx) -> Iterator[httpx.Client]:
    """A client of nginx, from 127.0.0.1."""
    with httpx.Client(base_url=nginx.base_url, timeout=10) as c:
        yield c


KeyFactory = Callable[..., dict[str, Any]]


@pytest.fixture
def create_key(management: httpx.Client) -> KeyFactory:
    """``POST /v1/api-keys`` with the given fields; the new key object."""

    def create(**fields: Any) -> dict[str, Any]:
        answer = management.post("/v1/api-keys", json={"label": "nginx test", **fields})
        assert answer.status_code == 200, answer.text
        created: dict[str, Any] = answer.json()
        return created

    return create


def test_full_access_key_reaches_the_api_with_its_identity(
    client: httpx.Client, account: dict[str, Any], full_access: str
) -> None:
    answer = client.get("/v1/numbers", headers=bearer(full_access))

    assert answer.status_code == 200, answer.text
    assert answer.json() == {
        "method": "GET",
        "path": "/v1/numbers",
        "headers": {
            "x-keyguard-account-id": str(account["account"]["id"]),
            "x-keyguard-key-id": str(account["api_key"]["id"]),
            "x-keyguard-scope": "numbers:read",
            "x-real-ip": "127.0.0.1",
        },
    }


def test_cdr_search_with_a_calls_read_key_reaches_the_api_as_calls_read(
    client: httpx.Client, create_key: KeyFactory
) -> None:
    key = create_key(scopes_enabled=True, calls={"allow": "read"})

    answer = client.post("/v1/cdrs", headers=bearer(key["value"]), json={"from": "2026-01-01"})

    assert answer.status_code == 200, answer.text
    seen = answer.json()
    assert (seen["method"], seen["path"]) == ("POST", "/v1/cdrs")
    assert seen["headers"]["x-keyguard-key-id"] == str(key["id"])
    assert seen["headers"]["x-keyguard-scope"] == "calls:read"


def test_identity_headers_sent_by_the_client_never_reach_the_api(
    client: httpx.Client, account: dict[str, Any], full_access: str
) -> None:
    forged = {
        "X-Keyguard-Account-Id": "999999",
        "X-Keyguard-Key-Id": "999999",
        "X-Keyguard-Scope": "full",
        "X-Real-IP": "10.1.2.3",
    }

    answer = client.get("/v1/numbers", headers={**bearer(full_access), **forged})

    assert answer.status_code == 200, answer.text
    assert answer.json()["headers"] == {
        "x-keyguard-account-id": str(account["account"]["id"]),
        "x-keyguard-key-id": str(account["api_key"]["id"]),
        "x-keyguard-scope": "numbers:read",
        "x-real-ip": "127.0.0.1",
    }


def _deleted_key(management: httpx.Client, create_key: KeyFactory) -> str:
    key = create_key()
    assert management.delete(f"/v1/api-keys/{key['id']}").status_code == 200
    token: str = key["value"]
    return token


UNUSABLE_KEYS: dict[str, Callable[[httpx.Client, KeyFactory], str | None]] = {
    "missing": lambda _management, _create: None,
    "malformed": lambda _management, _create: "not-a-key",
    "unknown": lambda _management, _create: generate("kg"),
    "deleted": _deleted_key,
}


@pytest.mark.parametrize("unusable", list(UNUSABLE_KEYS.values()), ids=list(UNUSABLE_KEYS))
def test_unusable_key_is_401_with_the_wavix_body_and_never_reaches_the_api(
    client: httpx.Client,
    api: EchoAPI,
    management: httpx.Client,
    create_key: KeyFactory,
    unusable: Callable[[httpx.Client, KeyFactory], str | None],
) -> None:
    token = unusable(management, create_key)
    hits = api.hits

    answer = client.get("/v1/numbers", headers=bearer(token) if token is not None else {})

    assert answer.status_code == 401
    assert answer.json() == UNAUTHORIZED
    assert answer.headers["content-type"] == "application/json"
    assert api.hits == hits


@pytest.mark.parametrize("status", [401, 403])
def test_the_apis_own_refusal_reaches_the_client_unchanged(
    client: httpx.Client, full_access: str, status: int
) -> None:
    answer = client.get("/v1/numbers", params={"status": status}, headers=bearer(full_access))

    assert answer.status_code == status
    assert answer.json()["path"] == f"/v1/numbers?status={status}"


def test_401_challenges_the_client_once_for_a_bearer_token(client: httpx.Client) -> None:
    answer = client.get("/v1/numbers")

    assert answer.status_code == 401
    assert answer.headers.get_list("www-authenticate") == ["Bearer"]


def test_scoped_key_writing_where_it_may_only_read_is_403(
    client: httpx.Client, api: EchoAPI, create_key: KeyFactory
) -> None:
    token = create_key(scopes_enabled=True, numbers={"allow": "read"})["value"]
    assert client.get("/v1/numbers", headers=bearer(token)).status_code == 200
    hits = api.hits

    answer = client.patch("/v1/numbers", headers=bearer(token), json={"sms_enabled": True})

    assert answer.status_code == 403
    assert answer.json() == {
        "success": False,
        "message": "API key scope numbers: write access required",
    }
    assert answer.headers["content-type"] == "application/json"
    assert api.hits == hits


# The proxy replaces its own style of these headers; the other style, sent by the
# client, disagrees with them, and a request with disagreeing headers is refused.
@pytest.mark.parametrize(
    ("claims", "message"),
    [
        (
            {"X-Forwarded-Method": "GET", "X-Forwarded-Uri": "/v1/numbers"},
            "Conflicting original-request headers: the request cannot be judged",
        ),
        (
            {"X-Original-Method": "GET", "X-Original-URI": "/v1/numbers"},
            "API key scope numbers: write access required",
        ),
    ],
    ids=["traefik_style", "nginx_style"],
)
def test_client_sent_original_request_headers_cannot_change_what_is_judged(
    client: httpx.Client,
    api: EchoAPI,
    create_key: KeyFactory,
    claims: dict[str, str],
    message: str,
) -> None:
    token = create_key(scopes_enabled=True, numbers={"allow": "read"})["value"]
    hits = api.hits

    answer = client.patch("/v1/numbers", headers={**bearer(token), **claims}, json={})

    assert answer.status_code == 403
    assert answer.json() == {"success": False, "message": message}
    assert api.hits == hits


def test_restricted_key_from_an_address_outside_its_range_is_403(
    client: httpx.Client, api: EchoAPI, create_key: KeyFactory
) -> None:
    token = create_key(restricted=True, permitted_ips=[OUTSIDE_127_0_0_1])["value"]
    hits = api.hits

    answer = client.get("/v1/numbers", headers=bearer(token))

    assert answer.status_code == 403
    assert answer.json() == {
        "success": False,
        "message": "IP address 127.0.0.1 is not permitted for this API key",
    }
    assert api.hits == hits


def test_restricted_key_from_its_permitted_address_reaches_the_api(
    client: httpx.Client, create_key: KeyFactory
) -> None:
    key = create_key(restricted=True, permitted_ips=["127.0.0.1"])

    answer = client.get("/v1/numbers", headers=bearer(key["value"]))

    assert answer.status_code == 200, answer.text
    assert answer.json()["headers"]["x-keyguard-key-id"] == str(key["id"])


@pytest.mark.parametrize(
    "spoof",
    [
        {"X-Forwarded-For": "10.1.2.3"},
        {"X-Real-IP": "10.1.2.3"},
        {"X-Forwarded-For": "10.1.2.3, 10.4.5.6", "X-Real-IP": "10.1.2.3"},
    ],
    ids=["x_forwarded_for", "x_real_ip", "both"],
)
def test_forwarding_headers_sent_by_the_client_do_not_lift_an_ip_restriction(
    client: httpx.Client, api: EchoAPI, create_key: KeyFactory, spoof: dict[str, str]
) -> None:
    token = create_key(restricted=True, permitted_ips=[OUTSIDE_127_0_0_1])["value"]
    hits = api.hits

    answer = client.get("/v1/numbers", headers={**bearer(token), **spoof})

    assert answer.status_code == 403
    assert answer.json()["message"] == "IP address 127.0.0.1 is not permitted for this API key"
    assert api.hits == hits


# What a client sends to choose its address: nginx overwrites X-Forwarded-For and
# passes X-Real-IP on, so keyguard must believe only the first.
CLAIMS = {"X-Real-IP": "198.51.100.7", "X-Forwarded-For": "198.51.100.8, 198.51.100.9"}


def test_client_sent_x_real_ip_and_forged_x_forwarded_for_cannot_choose_the_address(
    client: httpx.Client, api: EchoAPI, create_key: KeyFactory
) -> None:
    permits_the_claims = ["198.51.100.7", "198.51.100.8", "198.51.100.9"]
    token = create_key(restricted=True, permitted_ips=permits_the_claims)["value"]
    hits = api.hits

    answer = client.get("/v1/numbers", headers={**bearer(token), **CLAIMS})

    assert answer.status_code == 403
    assert answer.json() == {
        "success": False,
        "message": "IP address 127.0.0.1 is not permitted for this API key",
    }
    assert api.hits == hits


def test_client_sent_address_headers_do_not_lock_out_its_own_address(
    client: httpx.Client, create_key: KeyFactory
) -> None:
    key = create_key(restricted=True, permitted_ips=["127.0.0.1"])

    answer = client.get("/v1/numbers", headers={**bearer(key["value"]), **CLAIMS})

    assert answer.status_code == 200, answer.text
    assert answer.json()["headers"]["x-keyguard-key-id"] == str(key["id"])


def test_appid_query_parameter_is_a_key(
    client: httpx.Client, account: dict[str, Any], full_access: str
) -> None:
    answer = client.get("/v1/numbers", params={"appid": full_access})

    assert answer.status_code == 200, answer.text
    assert answer.json()["headers"]["x-keyguard-key-id"] == str(account["api_key"]["id"])


def test_access_log_names_the_path_and_key_id_but_never_the_query(
    client: httpx.Client, nginx: Nginx, create_key: KeyFactory
) -> None:
    key = create_key()
    marker = f"/v1/numbers/log-{key['id']}"

    answer = client.get(marker, params={"appid": key["value"]})

    assert answer.status_code == 200, answer.text
    # nginx writes the line after it has answered; wait for it.
    deadline = time.monotonic() + 5
    while marker not in nginx.access_log and time.monotonic() < deadline:
        time.sleep(0.02)
    [line] = [line for line in nginx.access_log.splitlines() if marker in line]
    assert f'"GET {marker}" 200 key={key["id"]} ' in line
    assert key["value"] not in nginx.access_log
    assert "appid" not in line


def test_key_deactivated_through_keyguard_is_refused_by_the_next_request(
    client: httpx.Client, api: EchoAPI, management: httpx.Client, create_key: KeyFactory
) -> None:
    key = create_key()
    assert client.get("/v1/numbers", headers=bearer(key["value"])).status_code == 200

    deactivated = management.patch(f"/v1/api-keys/{key['id']}/deactivate")
    assert deactivated.status_code == 200, deactivated.text
    assert deactivated.json() == {"success": True}
    hits = api.hits
    answer = client.get("/v1/numbers", headers=bearer(key["value"]))

    assert answer.status_code == 401
    assert answer.json() == UNAUTHORIZED
    assert api.hits == hits
