"""keyguard judges the route the upstream runs, for every spelling of a path.

The upstream is a real Starlette app served by uvicorn, with one route per line
of Wavix's route map (``{id}`` parameters, matched after one percent-decoding,
literal segments before parameters); it answers with the route it ran and the
scope keyguard sent it. Generated spellings of paths (percent-encoding at several
depths and cases, dot segments, backslashes, ``;`` parameters, ``?`` and ``#``,
Unicode look-alikes) reach it through every way keyguard can stand in front of
an API:

- nginx running ``examples/nginx/nginx.conf``;
- Caddy running ``examples/caddy/Caddyfile`` (``forward_auth``);
- ``KeyguardMiddleware`` around the same app, in-process, with the exact bytes
  in ``raw_path``;
- ``/auth/forward`` asked directly, Traefik-style (``X-Forwarded-Uri``) and
  Envoy-style (the path after ``/auth/forward``), with the upstream routing the
  same bytes in-process.

The property, for scoped keys: whenever the upstream ran a route, the key may
use that route, and keyguard's ``X-Keyguard-Scope`` names that route's scope.
Refusals (keyguard's 401/403, a proxy's 400) and paths the upstream does not
route are always fine. Generation is derandomised, so every run sends the same
spellings; a failure names the request to replay.
"""

import asyncio
import http.client
import json
import socket
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from importlib.resources import files
from typing import Any, NamedTuple
from urllib.parse import unquote

import httptools
import httpx
import pytest
import uvicorn
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from pydantic import SecretStr
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Message

from keyguard import KeyguardMiddleware
from keyguard.config import Settings
from keyguard.runtime import Keyguard
from tests.conftest import bearer
from tests.proxied import Caddy, Nginx, ReverseProxy, known_account, running_example
from tests.server import HOST, SECRET, KeyguardServer, Servers

pytestmark = pytest.mark.slow

START_TIMEOUT = 10.0
STOP_TIMEOUT = 10.0
LEVELS = {"read": 1, "write": 2}

# Generated requests per way in; the whole file stays well under two minutes.
PROXIED_EXAMPLES = 300
IN_PROCESS_EXAMPLES = 600


# --- The route map, read on its own: the upstream must not share keyguard's parser.


@dataclass(frozen=True)
class ApiRoute:
    """One line of the route map: what the upstream runs, and the scope it needs."""

    method: str
    template: str
    scope: str | None  # None: a full-access key only
    level: str | None

    @property
    def name(self) -> str:
        return f"{self.method} {self.template}"

    @property
    def label(self) -> str:
        """As keyguard names it in ``X-Keyguard-Scope``."""
        return "full" if self.scope is None else f"{self.scope}:{self.level}"

    @property
    def segments(self) -> list[str]:
        return self.template.strip("/").split("/")


def is_parameter(segment: str) -> bool:
    return segment.startswith("{") and segment.endswith("}")


def read_route_map() -> tuple[ApiRoute, ...]:
    text = files("keyguard.domain").joinpath("wavix_routes.tsv").read_text("utf-8")
    routes = []
    for line in text.splitlines():
        columns = line.partition("#")[0].split("\t")
        if len(columns) < 4 or columns[0] == "method" or columns[0] == "groups":
            continue
        method, template, scope, level = (column.strip() for column in columns[:4])
        routes.append(
            ApiRoute(
                method, template, None if scope == "-" else scope, None if level == "-" else level
            )
        )
    return tuple(routes)


ROUTES = read_route_map()
ROUTES_BY_NAME = {route.name: route for route in ROUTES}


@dataclass(frozen=True)
class ScopedKey:
    """A key with ``scopes_enabled``, as the property judges it."""

    name: str
    scopes: Mapping[str, str]  # group -> "read" or "write"

    def may(self, route: ApiRoute) -> bool:
        if route.scope is None or route.level is None or route.scope not in self.scopes:
            return False
        return LEVELS[self.scopes[route.scope]] >= LEVELS[route.level]

    @property
    def fields(self) -> dict[str, Any]:
        """The key's body for ``POST /v1/api-keys``."""
        groups = {group: {"allow": level} for group, level in self.scopes.items()}
        return {"label": f"differential {self.name}", "scopes_enabled": True, **groups}


KEYS = {
    key.name: key
    for key in (
        ScopedKey("messages-write", {"messages": "write"}),
        ScopedKey("numbers-read", {"numbers": "read"}),
        ScopedKey("calls-read", {"calls": "read"}),  # POST /v1/cdrs is a read
        ScopedKey("billing-read", {"billing": "read"}),
        ScopedKey("webhooks-write", {"webhooks": "write"}),  # /v1/calls/webhooks
    )
}


# --- The upstream: Starlette's router over the same route map.


def _precedence(route: ApiRoute) -> list[tuple[int, str]]:
    # Literal segments before parameters, segment by segment, as keyguard matches.
    return [(1, "") if is_parameter(s) else (0, s) for s in route.segments]


def _handler(route: ApiRoute) -> Callable[[Request], Any]:
    async def run(request: Request) -> Response:
        decision = getattr(request.state, "keyguard", None)  # set by KeyguardMiddleware
        scope = decision.scope if decision is not None else request.headers.get("x-keyguard-scope")
        # Headers too: a HEAD answer has no body.
        seen = {"x-route": route.name, "x-seen-scope": scope or ""}
        return JSONResponse({"route": route.name, "scope": scope}, headers=seen)

    return run


async def _nothing_ran(_request: Request, error: Exception) -> Response:
    status = error.status_code if isinstance(error, HTTPException) else 500
    return JSONResponse({"route": None}, status_code=status)


def upstream_app(routes: Sequence[ApiRoute] = ROUTES) -> Starlette:
    """The protected API: answers ``{"route": "DELETE /v1/trunks/{id}", "scope": ...}``
    for the route it ran, and 404 (or 405) ``{"route": null}`` when none matched."""
    return Starlette(
        routes=[
            Route(route.template, _handler(route), methods=[route.method])
            for route in sorted(routes, key=_precedence)
        ],
        exception_handlers={HTTPException: _nothing_ran},
    )


class UvicornThread:
    """A real uvicorn server for ``app`` on 127.0.0.1, in a thread of this process."""

    def __init__(self, app: ASGIApp) -> None:
        self._socket = socket.socket()
        self._socket.bind((HOST, 0))
        self.port: int = self._socket.getsockname()[1]
        config = uvicorn.Config(app, log_level="warning", access_log=False, lifespan="off")
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(
            target=self._server.run, kwargs={"sockets": [self._socket]}, daemon=True
        )

    @property
    def address(self) -> str:
        return f"{HOST}:{self.port}"

    def start(self) -> "UvicornThread":
        self._thread.start()
        deadline = time.monotonic() + START_TIMEOUT
        while not self._server.started:
            assert self._thread.is_alive(), "uvicorn exited before it started"
            assert time.monotonic() < deadline, "uvicorn did not start in time"
            time.sleep(0.01)
        return self

    def stop(self) -> None:
        self._server.should_exit = True
        self._thread.join(STOP_TIMEOUT)
        self._socket.close()


# --- Requests with exact bytes: HTTP clients would normalise the path.


class Answer(NamedTuple):
    status: int
    headers: dict[str, str]
    body: bytes


def exchange(
    port: int, method: str, target: bytes, headers: Sequence[tuple[str, bytes]] = ()
) -> Answer:
    """One HTTP/1.1 request whose request-target is exactly ``target``."""
    head = [f"{method} ".encode() + target + b" HTTP/1.1", b"Host: 127.0.0.1"]
    head += [name.encode() + b": " + value for name, value in headers]
    head.append(b"Connection: close")
    with socket.create_connection((HOST, port), timeout=10) as connection:
        connection.sendall(b"\r\n".join(head) + b"\r\n\r\n")
        response = http.client.HTTPResponse(connection, method=method)
        response.begin()
        body = response.read()
    return Answer(response.status, {k.lower(): v for k, v in response.getheaders()}, body)


def run_asgi(
    app: ASGIApp, method: str, target: bytes, headers: Sequence[tuple[str, bytes]] = ()
) -> Answer:
    """``app``'s answer to the request uvicorn would hand it for this request line.

    The scope is built as uvicorn builds it (httptools' URL parser, ``path``
    percent-decoded once, ``raw_path`` the exact bytes); a target uvicorn refuses
    is a 400 that reaches no app.
    """
    try:
        url = httptools.parse_url(target)
        path = unquote(url.path.decode("ascii"))
    except (httptools.HttpParserInvalidURLError, UnicodeDecodeError):
        return Answer(400, {}, b"")
    scope = {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.4"},
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": path,
        "raw_path": url.path,
        "query_string": url.query or b"",
        "root_path": "",
        "headers": [(name.lower().encode(), value) for name, value in headers],
        "client": (HOST, 50000),
        "server": (HOST, 80),
        "state": {},
    }
    sent: list[Message] = []

    async def receive() -> Message:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: Message) -> None:
        sent.append(message)

    async def call() -> None:
        await app(scope, receive, send)

    asyncio.run(call())
    start = next(message for message in sent if message["type"] == "http.response.start")
    body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    answer_headers = {name.decode().lower(): value.decode() for name, value in start["headers"]}
    return Answer(start["status"], answer_headers, body)


# --- Servers, shared by every example of the module.


@pytest.fixture(scope="module")
def keyguard_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KeyguardServer]:
    with Servers(tmp_path_factory.mktemp("keyguard")) as servers:
        yield servers(settings={"KEYGUARD_TRUSTED_PROXIES": "127.0.0.1"}).start()


@pytest.fixture(scope="module")
def tokens(keyguard_server: KeyguardServer) -> dict[str, str]:
    """Each scoped key of :data:`KEYS` by name, created through keyguard's API."""
    full_access = bearer(known_account(keyguard_server)["api_key"]["value"])
    with httpx.Client(base_url=keyguard_server.base_url, headers=full_access) as client:
        values = {}
        for key in KEYS.values():
            answer = client.post("/v1/api-keys", json=key.fields)
            assert answer.status_code == 200, answer.text
            values[key.name] = answer.json()["value"]
    return values


@pytest.fixture(scope="module")
def upstream() -> Iterator[UvicornThread]:
    server = UvicornThread(upstream_app()).start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def nginx(
    tmp_path_factory: pytest.TempPathFactory,
    keyguard_server: KeyguardServer,
    upstream: UvicornThread,
) -> Iterator[ReverseProxy]:
    folder = tmp_path_factory.mktemp("nginx")
    with running_example(Nginx, folder, keyguard_server, upstream.address) as server:
        yield server


@pytest.fixture(scope="module")
def caddy(
    tmp_path_factory: pytest.TempPathFactory,
    keyguard_server: KeyguardServer,
    upstream: UvicornThread,
) -> Iterator[ReverseProxy]:
    folder = tmp_path_factory.mktemp("caddy")
    with running_example(Caddy, folder, keyguard_server, upstream.address) as server:
        yield server


@pytest.fixture(scope="module")
def protected(keyguard_server: KeyguardServer, tokens: dict[str, str]) -> Iterator[ASGIApp]:
    """The upstream app behind KeyguardMiddleware, deciding over the server's database."""
    assert tokens  # the keys exist before the snapshot is read
    runtime = Keyguard(
        Settings(
            database_url=f"sqlite:///{keyguard_server.database}",
            secret_key=SecretStr(SECRET),
            auth_failures_per_minute=0,
        )
    )
    runtime.cache.refresh()
    try:
        yield KeyguardMiddleware(upstream_app(), decider=runtime.decider)
    finally:
        runtime.store.close()


# --- The ways in, each giving what the upstream ran (if anything).


class Spelling(NamedTuple):
    """One request: a key, a method and the exact request-target."""

    key: str
    method: str
    target: str  # sent as UTF-8; anything outside ASCII is sent raw

    @property
    def raw(self) -> bytes:
        return self.target.encode()

    def __str__(self) -> str:
        return f"{self.method} {self.target} with the {self.key} key"


class Outcome(NamedTuple):
    status: int
    route: str | None  # the route the upstream ran
    scope: str | None  # the X-Keyguard-Scope it received
    body: bytes


def _outcome(answer: Answer) -> Outcome:
    route = answer.headers.get("x-route") if 200 <= answer.status < 300 else None
    return Outcome(answer.status, route, answer.headers.get("x-seen-scope"), answer.body)


def _bearer(token: str) -> tuple[str, bytes]:
    return ("Authorization", f"Bearer {token}".encode())


Way = Callable[[Spelling, str], Outcome]


def _through(port: int) -> Way:
    def send(spelling: Spelling, token: str) -> Outcome:
        return _outcome(exchange(port, spelling.method, spelling.raw, [_bearer(token)]))

    return send


def _middleware(app: ASGIApp) -> Way:
    def send(spelling: Spelling, token: str) -> Outcome:
        return _outcome(run_asgi(app, spelling.method, spelling.raw, [_bearer(token)]))

    return send


def _then_upstream(answer: Answer, spelling: Spelling, app: ASGIApp) -> Outcome:
    """What the upstream runs once a forward-auth proxy has keyguard's answer."""
    if answer.status != 200:
        return Outcome(answer.status, None, None, answer.body)
    scope = [("X-Keyguard-Scope", answer.headers.get("x-keyguard-scope", "").encode())]
    return _outcome(run_asgi(app, spelling.method, spelling.raw, scope))


def _traefik(port: int, app: ASGIApp) -> Way:
    def send(spelling: Spelling, token: str) -> Outcome:
        original = [
            ("X-Forwarded-Method", spelling.method.encode()),
            ("X-Forwarded-Uri", spelling.raw),
            _bearer(token),
        ]
        return _then_upstream(exchange(port, "GET", b"/auth/forward", original), spelling, app)

    return send


def _envoy(port: int, app: ASGIApp) -> Way:
    def send(spelling: Spelling, token: str) -> Outcome:
        answer = exchange(port, spelling.method, b"/auth/forward" + spelling.raw, [_bearer(token)])
        return _then_upstream(answer, spelling, app)

    return send


WAYS = ["nginx", "caddy", "middleware", "traefik", "envoy"]


@pytest.fixture
def send(request: pytest.FixtureRequest, way: str) -> Way:
    """The way in named ``way``, with its servers started (once for the module)."""
    if way in ("nginx", "caddy"):
        return _through(request.getfixturevalue(way).port)
    if way == "middleware":
        return _middleware(request.getfixturevalue("protected"))
    keyguard_port = request.getfixturevalue("keyguard_server").port
    return (_traefik if way == "traefik" else _envoy)(keyguard_port, upstream_app())


def assert_keyguard_judged_what_ran(way: str, spelling: Spelling, outcome: Outcome) -> None:
    """The property: a route the upstream ran was the key's to run, under its own scope."""
    if outcome.route is None:
        return  # refused, or nothing routed: nothing ran
    ran = ROUTES_BY_NAME[outcome.route]
    key = KEYS[spelling.key]
    failure = (
        f"via {way}: {spelling.method} {spelling.target!r} with the {spelling.key} key"
        f" {dict(key.scopes)} ran {ran.name} (needs {ran.label}); keyguard allowed it as"
        f" {outcome.scope!r}.\nReplay: curl --path-as-is -X {spelling.method}"
        f" -H 'Authorization: Bearer <{spelling.key} key>' 'http://HOST{spelling.target}'"
    )
    assert key.may(ran), failure
    assert outcome.scope == ran.label, failure


# --- Spellings.

# What one percent-decoding leaves inside a segment, but a reader that decodes
# again, or takes a backslash for a slash, splits on; then "/" spelled otherwise.
HIDDEN_SEPARATORS = (
    "%5C", "%5c", "\\", "%252F", "%252f", "%255C", "%255c", "%25252F", "%25%32%46", "%%32%46",
)  # fmt: skip
OTHER_SEPARATORS = ("%2F", "%2f", "%EF%BC%8F", "\uff0f")  # the last two: fullwidth solidus
# Dot segments spelled to survive one decoding; then look-alikes (one-dot leaders, NUL).
CLIMBS = (
    "..", "%2e%2e", "%2E%2E", ".%2e", "%2E.", "%252e%252e", "%252E.", "..;", "..;x=1",
    "..%3B", "..%3b", "%2e%2e;",
)  # fmt: skip
LOOKALIKES = ("..%00", "\u2024\u2024", "%E2%80%A4%E2%80%A4", "%2e", ".", "...")
IDS = ("1", "42", "x", "abc-123", "a%20b", "caf%C3%A9", "%7E1", "x;v=1", "x%3Fy", "x%23y")
TAILS = ("",) * 8 + ("/", "?x=1", "?appid=1", "#top", "%3F", "%23", ";p", "//")


@st.composite
def _mostly(draw: st.DrawFn, usual: Sequence[str], rare: Sequence[str]) -> str:
    """One of ``usual`` four times in five, else one of ``rare``."""
    return draw(st.sampled_from(usual if draw(st.integers(0, 4)) else rare))


SEPARATORS = _mostly(HIDDEN_SEPARATORS, OTHER_SEPARATORS)
DOTS = _mostly(CLIMBS, LOOKALIKES)


def _fill(segments: Sequence[str], ident: str) -> list[str]:
    return [ident if is_parameter(segment) else segment for segment in segments]


def _shadow_at(victim: ApiRoute, cover: ApiRoute) -> int | None:
    """Where ``cover`` has a literal in place of a parameter of ``victim``, the two
    otherwise alike: a router that prefers literals takes ``cover`` there."""
    if victim.method != cover.method or len(victim.segments) != len(cover.segments):
        return None
    pairs = list(zip(victim.segments, cover.segments, strict=True))
    for at, (mine, theirs) in enumerate(pairs):
        if mine == theirs or (is_parameter(mine) and is_parameter(theirs)):
            continue
        if not is_parameter(mine) or is_parameter(theirs):
            return None
        rest = pairs[at + 1 :]
        return at if all(is_parameter(theirs) or mine == theirs for mine, theirs in rest) else None
    return None


SHADOWS = [
    (victim, cover, at)
    for victim in ROUTES
    for cover in ROUTES
    if (at := _shadow_at(victim, cover)) is not None
]


@st.composite
def _literal(draw: st.DrawFn, segment: str, how: str = "") -> str:
    """A literal segment, as written or spelled otherwise."""
    how = how or draw(st.sampled_from(["same", "upper", "title", "encoded", "kelvin", "param"]))
    if how == "case":
        how = draw(st.sampled_from(["same", "upper", "title"]))
    if how == "upper":
        return segment.upper()
    if how == "title":
        return segment.title()
    if how == "encoded":
        at = draw(st.integers(0, len(segment) - 1))
        code = f"%{ord(segment[at]):02x}"
        code = draw(st.sampled_from([code, code.upper(), code.replace("%", "%25")]))
        return segment[:at] + code + segment[at + 1 :]
    if how == "kelvin" and "k" in segment:  # U+212A lower-cases to "k"
        return segment.replace("k", draw(st.sampled_from(["\u212a", "%E2%84%AA"])), 1)
    if how == "param":
        return segment + draw(st.sampled_from([";", ";v=1", "%3B"]))
    return segment


@st.composite
def _climb(draw: st.DrawFn, depth: int, cover: ApiRoute) -> str:
    """``x<sep>..<sep>..<sep>cover/route``: one segment to the upstream, ``cover`` to a
    reader who resolves separators and dot segments below ``depth`` segments."""
    pieces = [draw(st.sampled_from(["x", "1", ""]))]
    enough = draw(st.integers(0, 3)) > 0
    climbs = draw(st.integers(depth, depth + 3) if enough else st.integers(1, depth))
    consistent = draw(st.integers(0, 3)) > 0  # one spelling throughout, or a mix
    dot, separator = draw(DOTS), draw(SEPARATORS)
    pieces += [dot if consistent else draw(DOTS) for _ in range(climbs)]
    pieces += _fill(cover.segments, draw(st.sampled_from(IDS[:4])))
    return pieces[0] + "".join(
        (separator if consistent else draw(SEPARATORS)) + piece for piece in pieces[1:]
    )


@st.composite
def _soup(draw: st.DrawFn) -> str:
    tokens = SEPARATORS | DOTS | st.sampled_from((*IDS, ";", "%3F", "%23", "?", "#", "/"))
    return "".join(draw(st.lists(tokens, min_size=1, max_size=6)))


@st.composite
def _parameter(draw: st.DrawFn) -> str:
    kind = draw(st.sampled_from(["id"] * 4 + ["dots", "soup"]))
    if kind == "dots":
        return draw(DOTS)
    return draw(_soup()) if kind == "soup" else draw(st.sampled_from(IDS))


def _victims(key: ScopedKey, method: str) -> list[ApiRoute]:
    """Routes with a parameter the key may not use, those ending in one first."""
    victims = [r for r in ROUTES if r.method == method and "{" in r.template and not key.may(r)]
    return sorted(victims, key=lambda route: not route.template.endswith("}"))


@st.composite
def spellings(draw: st.DrawFn) -> Spelling:
    """A request of a scoped key, built on a route of the map.

    Most are attacks on a route the key may not use (the victim), meant to make
    keyguard judge a route the key may use (the cover) while the upstream runs
    the victim: a parameter of the victim climbs out of it onto the cover
    (``x%5C..%5C..%5Cv3%5Cmessages``), or spells, in another case, the literal
    that the cover has in its place (``/v1/calls/Webhooks``). Others spell a
    route of the key's, or any route; some disguise the literal segments and
    the slashes too.
    """
    mode = draw(st.sampled_from(["climb"] * 5 + ["shadow"] * 2 + ["own"] * 2 + ["any"]))
    if mode == "shadow":
        victim, cover, target = draw(st.sampled_from(SHADOWS))
        keys = [name for name, key in KEYS.items() if key.may(cover) and not key.may(victim)]
        key = KEYS[draw(st.sampled_from(keys or sorted(KEYS)))]
    else:
        key = KEYS[draw(st.sampled_from(sorted(KEYS)))]
        own = [route for route in ROUTES if key.may(route)]
        if mode == "climb":
            methods = sorted({route.method for route in own})
            victim = draw(st.sampled_from(_victims(key, draw(st.sampled_from(methods)))))
        else:
            victim = draw(st.sampled_from(own if mode == "own" else ROUTES))
        covers = [route for route in ROUTES if route.method == victim.method and key.may(route)]
        cover = draw(st.sampled_from(covers or [victim]))
        parameters = [at for at, segment in enumerate(victim.segments) if is_parameter(segment)]
        target = parameters[-1 if draw(st.integers(0, 5)) else 0] if parameters else -1
    disguise = draw(st.integers(0, 3)) == 0
    spelled = []
    for at, segment in enumerate(victim.segments):
        if at == target and mode == "shadow":
            spelled.append(draw(_literal(cover.segments[at], how="case")))
        elif at == target and mode == "climb":
            spelled.append(draw(_climb(at + 1, cover)))
        elif is_parameter(segment):
            spelled.append(draw(_parameter()))
        else:
            spelled.append(draw(_literal(segment)) if disguise else segment)
    joints = st.sampled_from(["/"] * 4 + ["//", "\\", "/./", "%2F"] if disguise else ["/"])
    path = "".join(draw(joints) + segment for segment in spelled)
    method = "HEAD" if victim.method == "GET" and draw(st.integers(0, 9)) == 0 else victim.method
    return Spelling(key.name, method, path + draw(st.sampled_from(TAILS)))


# --- Known attacks, and plain spellings that must keep working.


def _climbing(victim: str, separator: str, climbs: int, cover: str) -> str:
    """``victim`` + ``x<sep>..<sep>..<sep>cover``, with "/" in ``cover`` spelled ``separator``."""
    return f"{victim}x{(separator + '..') * climbs}{separator}{cover.replace('/', separator)}"


SENDER_ID = "v3/messages/sender-ids/1"  # DELETE needs messages:write
KNOWN_ATTACKS = [
    # A messages:write key deletes a trunk, a recording, a WebRTC token (other groups) ...
    Spelling("messages-write", "DELETE", _climbing("/v1/trunks/", "%5C", 3, SENDER_ID)),
    Spelling("messages-write", "DELETE", _climbing("/v1/recordings/", "%5c", 3, SENDER_ID)),
    Spelling("messages-write", "DELETE", _climbing("/v1/trunks/", "\\", 3, SENDER_ID)),
    Spelling("messages-write", "DELETE", _climbing("/v1/trunks/", "%252F", 3, SENDER_ID)),
    Spelling("messages-write", "DELETE", _climbing("/v2/webrtc/tokens/", "%252f", 4, SENDER_ID)),
    # ... and another key, through the full-access DELETE /v1/api-keys/{id}.
    Spelling("messages-write", "DELETE", _climbing("/v1/api-keys/", "%255C", 3, SENDER_ID)),
    # A calls:read key (POST /v1/cdrs searches) runs a two_fa write.
    Spelling("calls-read", "POST", _climbing("/v1/two-fa/verification/", "%5C", 4, "v1/cdrs")),
    # A numbers:read key reads a trunk.
    Spelling("numbers-read", "GET", _climbing("/v1/trunks/", "%5C", 3, "v1/numbers")),
    # A billing:read key reads a sub-account's transactions: the parameter is a dot segment.
    Spelling("billing-read", "GET", "/v1/sub-organizations/..;/billing/transactions"),
    Spelling("billing-read", "GET", "/v1/sub-organizations/%2e%2e/billing/transactions"),
    Spelling("billing-read", "GET", "/v1/sub-organizations/..%3B/billing/transactions"),
    # A webhooks key deletes a call: the upstream matches literals case-sensitively.
    Spelling("webhooks-write", "DELETE", "/v1/calls/Webhooks"),
    Spelling("webhooks-write", "GET", "/v1/calls/WEBHOOKS"),
]
PLAIN = [
    (Spelling("numbers-read", "GET", "/v1/numbers/a%20b"), "GET /v1/numbers/{id}"),
    (Spelling("numbers-read", "GET", "/v1/numbers/caf%C3%A9"), "GET /v1/numbers/{id}"),
    (
        Spelling("messages-write", "DELETE", "/v3/messages/sender-ids/caf%C3%A9%20x"),
        "DELETE /v3/messages/sender-ids/{id}",
    ),
    (
        Spelling("billing-read", "GET", "/v1/billing/invoices/2026%2D01"),
        "GET /v1/billing/invoices/{id}",
    ),
]


@pytest.mark.parametrize("way", WAYS)
@pytest.mark.parametrize("spelling", KNOWN_ATTACKS, ids=str)
def test_known_attack_never_runs_a_route_outside_the_keys_scopes(
    send: Way, tokens: dict[str, str], way: str, spelling: Spelling
) -> None:
    outcome = send(spelling, tokens[spelling.key])

    assert_keyguard_judged_what_ran(way, spelling, outcome)
    assert outcome.route is None
    assert outcome.status in (400, 403), outcome
    if outcome.status == 403:  # keyguard's refusal, with its Wavix body
        body = json.loads(outcome.body)
        assert set(body) == {"success", "message"}, body
        assert body["success"] is False


@pytest.mark.parametrize("way", WAYS)
@pytest.mark.parametrize(("spelling", "route"), PLAIN, ids=str)
def test_percent_encoded_characters_in_a_parameter_reach_their_route(
    send: Way, tokens: dict[str, str], spelling: Spelling, route: str
) -> None:
    outcome = send(spelling, tokens[spelling.key])

    assert (outcome.status, outcome.route) == (200, route), outcome
    assert outcome.scope == ROUTES_BY_NAME[route].label


DIFFERENTIAL = settings(
    derandomize=True,  # the same spellings on every run
    database=None,
    deadline=None,
    suppress_health_check=[
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
        HealthCheck.function_scoped_fixture,  # `send` is the same for every example
    ],
)


@pytest.mark.parametrize("way", ["nginx", "caddy"])
@settings(DIFFERENTIAL, max_examples=PROXIED_EXAMPLES)
@given(spelling=spellings())
def test_through_a_proxy_the_upstream_runs_only_what_keyguard_judged(
    send: Way, tokens: dict[str, str], way: str, spelling: Spelling
) -> None:
    outcome = send(spelling, tokens[spelling.key])
    event(f"{outcome.status} {'ran' if outcome.route else 'nothing ran'}")
    assert_keyguard_judged_what_ran(way, spelling, outcome)


@pytest.mark.parametrize("way", ["middleware", "traefik", "envoy"])
@settings(DIFFERENTIAL, max_examples=IN_PROCESS_EXAMPLES)
@given(spelling=spellings())
def test_in_process_and_forward_auth_run_only_what_keyguard_judged(
    send: Way, tokens: dict[str, str], way: str, spelling: Spelling
) -> None:
    outcome = send(spelling, tokens[spelling.key])
    event(f"{outcome.status} {'ran' if outcome.route else 'nothing ran'}")
    assert_keyguard_judged_what_ran(way, spelling, outcome)
