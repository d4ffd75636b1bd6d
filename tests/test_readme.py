"""The README is a contract: every code block in it runs, as a reader would run it.

How blocks run, what is substituted and how blocks are marked: ``tests/readme.py``.
"""

import ast
import os
from contextlib import ExitStack
from pathlib import Path

import pytest

import keyguard
from keyguard.domain.routes import UnknownRoutes
from keyguard.errors import ConfigurationError
from keyguard.runtime import load_route_map
from tests.conftest import POSTGRES_URL_VARIABLE, missing
from tests.postgres import postgres_schema
from tests.readme import (
    README,
    ROOT,
    RUNNABLE_LANGUAGES,
    Block,
    Command,
    Session,
    console_commands,
    readme_blocks,
    script_commands,
    shows,
)

pytestmark = pytest.mark.slow

BLOCKS, MARKER_PROBLEMS = readme_blocks(README.read_text("utf-8"))
SESSIONS = list(dict.fromkeys(block.session for block in BLOCKS if block.session))


@pytest.mark.parametrize("name", SESSIONS)
def test_every_block_of_the_session_runs_as_written(tmp_path: Path, name: str) -> None:
    blocks = [block for block in BLOCKS if block.session == name]
    needs_postgres = any("postgresql://" in block.text for block in blocks)
    with ExitStack() as stack:
        postgres_url = None
        if needs_postgres:
            server = os.environ.get(POSTGRES_URL_VARIABLE)
            if not server:
                missing(f"PostgreSQL: set {POSTGRES_URL_VARIABLE} to run the README's {name}")
            postgres_url = stack.enter_context(postgres_schema(server))
        session = Session(name, tmp_path, postgres_url)
        stack.callback(session.close)
        for block in blocks:
            session.run(block)

        assert session.ran == [block.line for block in blocks]
        assert not session.unused_files, (
            f"saved, but no later command uses them: {sorted(map(str, session.unused_files))}"
        )
        assert session.files_left_unignored() == [], "the README's commands leave these behind"


def test_every_block_runs_here_or_is_marked() -> None:
    assert MARKER_PROBLEMS == []
    unrunnable = [
        f"{block.where}: ```{block.language}"
        for block in BLOCKS
        if block.session and block.language not in RUNNABLE_LANGUAGES
    ]
    assert unrunnable == [], "mark these <!-- illustration: why --> or <!-- tested-by: … -->"


@pytest.mark.parametrize(
    "block", [block for block in BLOCKS if "tested-by" in block.markers], ids=lambda b: b.where
)
def test_a_block_tested_elsewhere_names_a_test_that_exists(block: Block) -> None:
    path, _, name = block.markers["tested-by"].partition("::")
    assert (ROOT / path).is_file(), f"{block.where}: no {path}"
    if name:
        tree = ast.parse((ROOT / path).read_text("utf-8"))
        tests = {node.name for node in tree.body if isinstance(node, ast.FunctionDef)}
        assert name in tests, f"{block.where}: {path} has no test {name}"


def readme_imports() -> set[str]:
    """The names the README's Python examples import from ``keyguard`` itself."""
    names: set[str] = set()
    for block in BLOCKS:
        if block.language == "python":
            for node in ast.walk(ast.parse(block.text)):
                if isinstance(node, ast.ImportFrom) and node.module == "keyguard":
                    names.update(alias.name for alias in node.names)
    return names


def test_the_public_names_are_exactly_what_the_readme_imports() -> None:
    public = {name for name in keyguard.__all__ if not name.startswith("_")}
    assert public == readme_imports()
    for name in keyguard.__all__:
        assert hasattr(keyguard, name)


def block_tested_by(test: str) -> Block:
    [block] = [b for b in BLOCKS if b.markers.get("tested-by") == f"tests/test_readme.py::{test}"]
    return block


def test_the_route_map_example_loads_as_described(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    example = block_tested_by("test_the_route_map_example_loads_as_described").text
    monkeypatch.chdir(tmp_path)
    Path("routes.tsv").write_text(example + "\n")

    routes = load_route_map(Path("routes.tsv"), UnknownRoutes.FULL_ACCESS_ONLY)

    assert routes.groups.names == ("orders", "reports")
    matched = {
        (method, path): routes.match(method, path)
        for method, path in [
            ("GET", "/v1/orders/7"),
            ("POST", "/v1/orders"),
            ("GET", "/v1/reports/2026"),
            ("DELETE", "/v1/admin/cache"),
        ]
    }
    assert {request: route.label for request, route in matched.items() if route} == {
        ("GET", "/v1/orders/7"): "orders:read",
        ("POST", "/v1/orders"): "orders:write",
        ("GET", "/v1/reports/2026"): "reports:read",
        ("DELETE", "/v1/admin/cache"): "full",
    }

    # "A broken file stops keyguard at start with the file and line"
    broken = example.splitlines()
    broken[3] = broken[3].replace("orders\tread", "reportz\tread")
    Path("routes.tsv").write_text("\n".join(broken) + "\n")
    with pytest.raises(ConfigurationError) as caught:
        load_route_map(Path("routes.tsv"), UnknownRoutes.FULL_ACCESS_ONLY)
    assert caught.value.message == "Invalid route map: routes.tsv:4: unknown scope group 'reportz'"


@pytest.mark.parametrize(
    ("shown", "printed", "alike"),
    [
        pytest.param('{"a": 1,\n "b": [2]}', '{"a":1,"b":[2]}', True, id="json_spacing"),
        pytest.param('{"a":…,"b":2}', '{"a":{"x":[1]},"b":2}', True, id="ellipsis"),
        pytest.param('{"a":1}', '{"a":2}', False, id="other_value"),
        pytest.param('{"a":1}', '{"a":1,"b":2}', False, id="more_than_shown"),
    ],
)
def test_shown_output_is_compared_with_json_spacing_ignored_and_ellipsis_as_any_text(
    shown: str, printed: str, alike: bool
) -> None:
    assert shows(shown, printed) is alike


def test_commands_span_lines_while_bash_would_wait_for_more() -> None:
    block = Block(
        10,
        "sh",
        "# a comment\nA=1\ncurl -s x \\\n  -d '{\n  \"k\": 1}'\n\necho done  # trailing",
        {},
    )
    assert script_commands(block) == [
        Command(12, "A=1"),
        Command(13, "curl -s x \\\n  -d '{\n  \"k\": 1}'"),
        Command(17, "echo done  # trailing"),
    ]


def test_console_commands_carry_the_output_shown_below_them() -> None:
    block = Block(20, "console", '$ curl -s a \\\n    -d b\n{"ok":true}\n$ true\n', {})
    assert console_commands(block) == [
        Command(21, "curl -s a \\\n    -d b", '{"ok":true}'),
        Command(24, "true", ""),
    ]
