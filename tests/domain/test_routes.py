import re
import time
from pathlib import Path

import pytest

from keyguard.domain.routes import (
    AMBIGUOUS,
    Route,
    RouteMap,
    UnknownRoutes,
    parse_route_map,
    split_path,
)
from keyguard.domain.scopes import Level, ScopeGroups
from keyguard.runtime import wavix_route_map

WAVIX_TSV = Path(__file__).parents[2] / "src/keyguard/domain/wavix_routes.tsv"
TABS = "columns must be separated by tabs, not spaces"


@pytest.fixture(scope="module")
def wavix() -> RouteMap:
    return wavix_route_map()


def test_wavix_map_has_every_route_of_the_table(wavix: RouteMap) -> None:
    assert len(wavix.routes) == 136
    rows = [line.split("\t") for line in WAVIX_TSV.read_text().splitlines()[1:]]
    for method, path, scope, level, *_ in rows:
        route = wavix.match(method, path.replace("{", "x").replace("}", ""))
        assert route is not None, (method, path)
        assert route.scope == (None if scope == "-" else scope)
        if scope != "-":
            assert route.level is Level.parse(level)


@pytest.mark.parametrize(
    ("method", "path", "label"),
    [
        ("GET", "/v1/calls/webhooks", "webhooks:read"),
        ("GET", "/v1/calls/abc", "calls:read"),
        ("PATCH", "/v1/calls/abc", "calls:write"),
        ("POST", "/v1/cdrs", "calls:read"),
        ("POST", "/v1/cdr", "calls:read"),
        ("HEAD", "/v1/billing/invoices", "billing:read"),
        ("GET", "/v1/api-keys", "full"),
        ("GET", "/v1/billing/invoices?page=2", "billing:read"),
    ],
)
def test_match(wavix: RouteMap, method: str, path: str, label: str) -> None:
    route = wavix.match(method, path)
    assert route is not None
    assert route.label == label


@pytest.mark.parametrize(
    "path",
    [
        # dot segments, raw and encoded, once or twice
        "/v1/numbers/../api-keys",
        "/v1/./api-keys",
        "/../../v1/api-keys",
        "/v1/numbers/%2e%2e/api-keys",
        "/v1/numbers/%2E%2E/api-keys",
        "/v1/numbers/%2e/api-keys",
        "/v1/numbers/%252e%252e/api-keys",
        # separators inside a segment: encoded, encoded twice, backslashes
        "/v1/numbers/..%2Fapi-keys",
        "/v1/numbers/..%2fapi-keys",
        "/v3/messages/sender-ids/x%2F..%2F..%2F..%2Fv1%2Fnumbers%2F1",
        "/v3/messages/sender-ids/x%5C..%5C..%5Cv1%5Cnumbers",
        "/v3/messages/sender-ids/x%5c..",
        "/v3/messages/sender-ids/x%252F..%252F..",
        "/v1\\api-keys",
        "/v3/messages/sender-ids/x\\..\\..\\v1\\numbers",
        # merged by some proxies, routed as written by frameworks
        "//v1//api-keys//",
        "/v1//numbers",
        # path parameters and fragments
        "/v1/api-keys;jsessionid=1",
        "/v1/numbers;x/1",
        "/v1/numbers#/1",
        # a literal only to a router that decodes or folds case
        "/V1/API-KEYS",
        "/v1/Numbers/1",
        "/v1/%6Eumbers/1",
        "/v1/calls/WEBHOOKS",
        "/v1/calls/web%68ooks",
        # Unicode that folds to ASCII, raw or encoded
        "/v1/numbers/\u2025/api-keys",
        "/v1/trun\u212as",
        "/v1/trun%E2%84%AAs",
        "/v1/numbers/x%EF%BC%8F..%EF%BC%8Fapi-keys",
        "/v1/numbers/%E2%80%A5",
        # bytes no upstream agrees on
        "/v1/numbers/%00",
        "/v1/numbers/a b",
        "/v1/numbers/%C3%28",
        "/v1/numbers/%zz",
        "v1/numbers",
        "",
    ],
)
def test_spellings_upstreams_may_route_differently_are_ambiguous(
    wavix: RouteMap, path: str
) -> None:
    assert wavix.match("GET", path) is AMBIGUOUS
    assert wavix.match("DELETE", path) is AMBIGUOUS


@pytest.mark.parametrize(
    ("path", "template"),
    [
        ("/v1/numbers/a%20b", "/v1/numbers/{id}"),
        ("/v1/numbers/caf%C3%A9", "/v1/numbers/{id}"),
        ("/v1/numbers/caf\u00e9", None),  # raw non-ASCII: ambiguous, see above
        ("/v1/numbers/a%3Fb%23c%3Bd", "/v1/numbers/{id}"),
        ("/v1/numbers/..x", "/v1/numbers/{id}"),
        ("/v1/numbers/", "/v1/numbers"),
        ("/v1/calls/webhooks", "/v1/calls/webhooks"),
        ("/v1/calls/Webhooks2", "/v1/calls/{id}"),
    ],
)
def test_a_segment_is_decoded_once_and_kept_whole(
    wavix: RouteMap, path: str, template: str | None
) -> None:
    route = wavix.match("GET", path)
    if template is None:
        assert route is AMBIGUOUS
    else:
        assert route is not None
        assert route.template.replace("{call_id}", "{id}") == template


def test_split_path() -> None:
    assert split_path("/a/B/c%20d/?q=../x#f") == [("a", "a"), ("B", "b"), ("c%20d", "c d")]
    assert split_path("/") == []
    assert split_path("/a/./b") is None


def test_unknown_path_or_method_matches_nothing(wavix: RouteMap) -> None:
    assert wavix.match("GET", "/v2/anything") is None
    assert wavix.match("PUT", "/v1/calls/abc/answer") is None
    assert wavix.match("GET", "/") is None


def test_literal_wins_and_param_is_tried_when_literal_branch_fails() -> None:
    route_map = RouteMap.build(
        [
            Route("GET", "/a/b", "numbers", Level.READ),
            Route("GET", "/a/{x}/c", "calls", Level.READ),
        ]
    )
    assert route_map.match("GET", "/a/b") == route_map.routes[0]
    assert route_map.match("GET", "/a/b/c") == route_map.routes[1]


def test_matching_cost_does_not_grow_with_the_number_of_routes() -> None:
    def cost(route_map: RouteMap) -> float:
        start = time.perf_counter()
        for _ in range(2000):
            route_map.match("GET", "/v1/r5/items/42")
        return time.perf_counter() - start

    small = RouteMap.build([Route("GET", f"/v1/r{i}/items/{{id}}", None) for i in range(10)])
    large = RouteMap.build([Route("GET", f"/v1/r{i}/items/{{id}}", None) for i in range(10_000)])
    assert min(cost(large) for _ in range(3)) < 3 * min(cost(small) for _ in range(3))


def test_duplicate_route_is_refused() -> None:
    with pytest.raises(ValueError, match="duplicate route GET /a"):
        RouteMap.build([Route("GET", "/a", None), Route("GET", "/a/", None)])


def test_route_with_unknown_group_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown scope group 'orders'"):
        RouteMap.build([Route("GET", "/a", "orders", Level.READ)])


def test_with_routes_keeps_the_map_own_routes_and_settings() -> None:
    base = RouteMap.build(
        [Route("GET", "/a", "orders", Level.READ)], ScopeGroups(("orders",)), UnknownRoutes.DENY
    )
    merged = base.with_routes([Route("GET", "/a", None), Route("GET", "/b", None)])
    assert [route.label for route in merged.routes] == ["orders:read", "full"]
    assert merged.unknown is UnknownRoutes.DENY


@pytest.mark.parametrize(
    ("lines", "error"),
    [
        (["GET\t/a\tnumbers"], "routes.tsv:1: expected method, path, scope and level"),
        (["", "FETCH\t/a\tnumbers\tread"], "routes.tsv:2: unknown method 'FETCH'"),
        (["GET\ta\tnumbers\tread"], "routes.tsv:1: path must start with '/'"),
        (["GET\t/a\tnumbers\tadmin"], "routes.tsv:1: level must be read or write, not 'admin'"),
        (["GET\t/a\torders\tread"], "routes.tsv:1: unknown scope group 'orders'"),
        (["GET\t/a/{x}\t-\t-", "GET\t/a/{y}/\t-\t-"], "routes.tsv:2: duplicate route GET /a/{y}/"),
        (["GET\t/a\t-\t-", "groups\tx"], "routes.tsv:2: declare groups before the first route"),
        (["groups"], "routes.tsv:1: groups needs at least one name"),
        (["groups\tOrders"], "routes.tsv:1: group name 'Orders' must be a lowercase identifier"),
        (["groups\ta\ta"], "routes.tsv:1: scope group names must be unique"),
        (["GET /a numbers read"], f"routes.tsv:1: {TABS}"),
        (["GET    /a    numbers    read"], f"routes.tsv:1: {TABS}"),
        (["GET\t/a numbers\tread"], f"routes.tsv:1: {TABS}"),
        (["", "method path scope level", "GET\t/a\tnumbers\tread"], f"routes.tsv:2: {TABS}"),
        (["groups orders reports"], f"routes.tsv:1: {TABS}"),
        (["groups\torders reports"], f"routes.tsv:1: {TABS}"),
    ],
    ids=["columns", "method", "path", "level", "group", "duplicate", "late_groups",
         "empty_groups", "group_case", "group_twice", "spaces", "aligned_with_spaces",
         "some_spaces", "header_with_spaces", "groups_with_spaces", "group_names_with_a_space"],
)  # fmt: skip
def test_broken_route_map_names_file_and_line(lines: list[str], error: str) -> None:
    with pytest.raises(ValueError, match="^" + re.escape(error) + "$"):
        parse_route_map(lines, "routes.tsv")


def test_columns_after_the_level_may_hold_spaces() -> None:
    lines = ["GET\t/v1/orders\t-\t-\tlist the orders", "POST\t/v1/orders\t-\t-  # a note"]

    route_map = parse_route_map(lines, "routes.tsv")

    assert [route.label for route in route_map.routes] == ["full", "full"]


def test_route_map_file_declares_its_own_groups() -> None:
    text = """
        # the shop's API
        groups\torders\treports
        method\tpath\tscope\tlevel
        GET\t/v1/orders/{id}\torders\tread   # a comment
        POST\t/v1/orders\t\torders\twrite
        DELETE\t/v1/admin\t-\t-
    """
    route_map = parse_route_map(text.splitlines(), "shop.tsv", UnknownRoutes.DENY)
    assert route_map.groups.names == ("orders", "reports")
    assert route_map.unknown is UnknownRoutes.DENY
    labels = [
        route.label
        for route in (
            route_map.match("GET", "/v1/orders/7"),
            route_map.match("POST", "/v1/orders"),
            route_map.match("DELETE", "/v1/admin"),
        )
        if route is not None
    ]
    assert labels == ["orders:read", "orders:write", "full"]
