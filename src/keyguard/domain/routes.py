"""The route map: method and path template -> the scope a request needs.

Paths are matched on a trie of segments, so the cost of a match depends on the
depth of the path, not on the number of routes.

A path is judged as the upstream's router will see it: split on ``/`` as sent,
each segment percent-decoded once, literals compared as written. Servers and
frameworks disagree on everything beyond that (encoded slashes and backslashes,
dot segments, double encoding, ``;`` parameters, case and Unicode folding), so a
path whose route depends on such a disagreement is :data:`AMBIGUOUS`: it could
run a different route upstream than the one keyguard would judge, and only a
key that may take every route may take it.
"""

import re
import unicodedata
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from enum import Enum
from urllib.parse import unquote

from keyguard.domain.scopes import Level, ScopeGroups

METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
# Raw bytes that upstreams read differently: anything outside printable ASCII,
# backslashes (a separator on some servers), ";" (path parameters, stripped by
# some), "#" (a fragment to some parsers), empty and dot segments (merged or
# resolved by some proxies, routed as written by most frameworks).
_AMBIGUOUS_RAW = re.compile(r"[^\x21-\x7e]|[\\;#]|//|/\.{1,2}(?:/|$)")
_RECENT_LIMIT = 8192


@dataclass(frozen=True, slots=True)
class Route:
    """What a matched request needs: a scope group at a level, or full access."""

    method: str
    template: str
    scope: str | None
    level: Level = Level.NONE
    label: str = field(init=False, compare=False)  # "messages:write" or "full"

    def __post_init__(self) -> None:
        # Computed once: decisions read it on every request.
        label = "full" if self.scope is None else f"{self.scope}:{self.level.label}"
        object.__setattr__(self, "label", label)

    @property
    def needs_full_access(self) -> bool:
        return self.scope is None


class UnknownRoutes(Enum):
    """What a path that matches no route is allowed to do."""

    FULL_ACCESS_ONLY = "full-access-only"
    DENY = "deny"


AMBIGUOUS = Route("*", "(ambiguous path)", None)
"""What :meth:`RouteMap.match` answers for a path that upstreams may route differently."""


def split_path(path: str) -> list[tuple[str, str]] | None:
    """The segments of ``path`` as ``(raw, folded)`` pairs, or ``None`` if ambiguous.

    ``folded`` is the segment decoded once and case-folded (NFKC first when it is
    not ASCII): what the most lenient upstream could take it for. The query string
    is dropped, and so is one trailing slash. ``None`` when the path does not start
    with ``/``, carries a byte or spelling that upstreams read differently (see
    ``_AMBIGUOUS_RAW``), or has a segment that decodes to a separator, a ``%``
    (double encoding), a control character or a dot segment.
    """
    path = path.partition("?")[0]
    if not path.startswith("/") or _AMBIGUOUS_RAW.search(path):
        return None
    raws = path[1:].split("/")
    if raws[-1] == "":
        raws.pop()
    if "%" not in path:
        return [(raw, raw.lower()) for raw in raws]
    segments = []
    for raw in raws:
        folded = _fold(raw)
        if folded is None:
            return None
        segments.append((raw, folded))
    return segments


def _fold(raw: str) -> str | None:
    try:
        decoded = unquote(raw, errors="strict")
    except UnicodeDecodeError:
        return None
    folded = (
        decoded.lower() if decoded.isascii() else unicodedata.normalize("NFKC", decoded).casefold()
    )
    if _AMBIGUOUS_DECODED.search(folded) or folded in (".", ".."):
        return None
    return folded


_AMBIGUOUS_DECODED = re.compile(r"[/\\%\x00-\x1f\x7f]")


class _Node:
    __slots__ = ("literals", "methods", "param")

    def __init__(self) -> None:
        # Literal segments by their folded spelling, with the spelling the route wrote.
        self.literals: dict[str, tuple[str, _Node]] = {}
        self.param: _Node | None = None
        self.methods: dict[str, Route] = {}


class _AmbiguousSegmentError(Exception):
    """A segment names a literal only once decoded or folded: upstreams disagree."""


@dataclass(frozen=True)
class RouteMap:
    """A set of routes with a matcher; build it with :meth:`build`.

    The routes never change; answers to recent ``(method, path)`` pairs are cached,
    since most traffic repeats a few thousand paths.
    """

    groups: ScopeGroups
    routes: tuple[Route, ...]
    unknown: UnknownRoutes = UnknownRoutes.FULL_ACCESS_ONLY
    _root: _Node = field(default_factory=_Node, repr=False, compare=False)
    # Bounded, and simply cleared when full, so hostile paths cannot grow it.
    _recent: dict[tuple[str, str], Route | None] = field(
        default_factory=dict, repr=False, compare=False
    )

    @classmethod
    def build(
        cls,
        routes: Iterable[Route],
        groups: ScopeGroups | None = None,
        unknown: UnknownRoutes = UnknownRoutes.FULL_ACCESS_ONLY,
    ) -> "RouteMap":
        route_map = cls(groups or ScopeGroups(), tuple(routes), unknown)
        for route in route_map.routes:
            route_map._insert(route)
        return route_map

    def with_routes(self, extra: Iterable[Route]) -> "RouteMap":
        """A map with ``extra`` added where this one has no route of its own."""
        mine = {(route.method, route.template) for route in self.routes}
        added = [route for route in extra if (route.method, route.template) not in mine]
        return RouteMap.build([*self.routes, *added], self.groups, self.unknown)

    def _insert(self, route: Route) -> None:
        if route.scope is not None and route.scope not in self.groups:
            raise ValueError(f"unknown scope group {route.scope!r}")
        node = self._root
        for segment in template_segments(route.template):
            if segment.startswith("{") and segment.endswith("}"):
                node.param = node.param or _Node()
                node = node.param
            else:
                _, node = node.literals.setdefault(segment.lower(), (segment, _Node()))
        if route.method in node.methods:
            raise ValueError(f"duplicate route {route.method} {route.template}")
        node.methods[route.method] = route

    def match(self, method: str, path: str) -> Route | None:
        """The route for a request, :data:`AMBIGUOUS`, or ``None`` when no route matches."""
        try:
            return self._recent[method, path]
        except KeyError:
            pass
        route = self._match(method, path)
        if len(self._recent) >= _RECENT_LIMIT:
            self._recent.clear()
        self._recent[method, path] = route
        return route

    def _match(self, method: str, path: str) -> Route | None:
        segments = split_path(path)
        if segments is None:
            return AMBIGUOUS
        verb = method.upper()
        if verb == "HEAD":
            verb = "GET"
        try:
            node = _find(self._root, segments, 0, verb)
        except _AmbiguousSegmentError:
            return AMBIGUOUS
        return node.methods[verb] if node is not None else None


def template_segments(template: str) -> list[str]:
    """The segments of a route template: ``{name}`` for a parameter."""
    return [segment for segment in template.split("/") if segment]


def _find(
    node: _Node, segments: Sequence[tuple[str, str]], index: int, method: str
) -> _Node | None:
    if index == len(segments):
        return node if method in node.methods else None
    raw, folded = segments[index]
    literal = node.literals.get(folded)
    if literal is not None:
        spelling, child = literal
        if raw != spelling:  # "Numbers" or "%6Eumbers": a literal to some routers only
            raise _AmbiguousSegmentError
        found = _find(child, segments, index + 1, method)
        if found is not None:
            return found
    if node.param is not None:
        return _find(node.param, segments, index + 1, method)
    return None


def parse_route_map(
    lines: Iterable[str],
    source: str,
    unknown: UnknownRoutes = UnknownRoutes.FULL_ACCESS_ONLY,
) -> RouteMap:
    """A route map from its text format (documented in the README)::

        # comment
        groups  orders  reports          (optional; default: Wavix's 13 groups)
        method  path  scope  level       (optional header)
        GET     /v1/orders/{id}  orders  read
        DELETE  /v1/admin        -       -

    Columns are separated by tabs (a column that holds spaces is refused: the
    likely cause is spaces where tabs belong); further columns are ignored. A
    scope of ``-`` means the route needs a full-access key. Every error names
    ``source`` and the line, so a broken file stops keyguard with a message that
    says where.
    """
    groups: ScopeGroups | None = None
    routes: list[Route] = []
    seen: set[tuple[str, tuple[str, ...]]] = set()
    for number, raw in enumerate(lines, start=1):
        where = f"{source}:{number}"
        columns = [column.strip() for column in raw.partition("#")[0].split("\t")]
        columns = [column for column in columns if column]
        if not columns:
            continue
        meaningful = columns if columns[0].lower() == "groups" else columns[:4]
        if any(_SPACE.search(column) for column in meaningful):
            raise ValueError(f"{where}: columns must be separated by tabs, not spaces")
        if columns[0].lower() == "method":
            continue
        if columns[0].lower() == "groups":
            groups = _groups(columns[1:], where, declared_after_routes=bool(routes))
            continue
        route = _route(columns, where)
        if route.scope is not None and route.scope not in (groups or ScopeGroups()):
            raise ValueError(f"{where}: unknown scope group {route.scope!r}")
        shape = (route.method, tuple(_shape(route.template)))
        if shape in seen:
            raise ValueError(f"{where}: duplicate route {route.method} {route.template}")
        seen.add(shape)
        routes.append(route)
    return RouteMap.build(routes, groups, unknown)


_SPACE = re.compile(r"\s")


def _groups(names: list[str], where: str, *, declared_after_routes: bool) -> ScopeGroups:
    if declared_after_routes:
        raise ValueError(f"{where}: declare groups before the first route")
    if not names:
        raise ValueError(f"{where}: groups needs at least one name")
    for name in names:
        if not name.isidentifier() or not name.islower():
            raise ValueError(f"{where}: group name {name!r} must be a lowercase identifier")
    try:
        return ScopeGroups(tuple(names))
    except ValueError as error:
        raise ValueError(f"{where}: {error}") from None


def _shape(template: str) -> list[str]:
    return [
        "{}" if segment.startswith("{") else segment.lower()
        for segment in template_segments(template)
    ]


def _route(columns: list[str], where: str) -> Route:
    if len(columns) < 4:
        raise ValueError(f"{where}: expected method, path, scope and level")
    method, path, scope, level = columns[0].upper(), columns[1], columns[2], columns[3]
    if method not in METHODS:
        raise ValueError(f"{where}: unknown method {method!r}")
    if not path.startswith("/"):
        raise ValueError(f"{where}: path must start with '/'")
    if scope == "-":
        return Route(method, path, None)
    if level not in ("read", "write"):
        raise ValueError(f"{where}: level must be read or write, not {level!r}")
    return Route(method, path, scope, Level.parse(level))
