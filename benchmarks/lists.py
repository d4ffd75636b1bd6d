"""Key lists on SQLite: 10,000 keys unpaginated, and pages of 100 from 1,000,000 keys.

In-process, the work of ``GET /v1/api-keys`` but the HTTP: the service reads the
keys and opens their secrets, each is rendered as a Wavix key object and the list
as JSON with orjson, as the route does. One database of 10,000 keys and one of
1,000,000 (a third each of :mod:`benchmarks.snapshot`'s kinds, inserted by SQL),
every listed key with a real sealed secret.

With ``KEYGUARD_BENCH_BASELINE`` set to the ``src`` folder of an earlier keyguard
(as :mod:`benchmarks.baseline` takes it), that keyguard lists the same databases
in alternating rounds, side by side.
"""

import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
from pydantic import SecretStr
from sqlalchemy import create_engine, text

from benchmarks.baseline import load_baseline
from benchmarks.context import Context
from benchmarks.report import Section, millis, table
from benchmarks.snapshot import BASELINE_VARIABLE, fill
from benchmarks.stats import median

LIST_KEYS = 10_000
PAGED_KEYS = 1_000_000
PER_PAGE = 100
ROUNDS = 15
SECRET = "s" * 43
TARGETS = {"list 10,000 keys": 0.100, "page 100 of 1,000,000, last page": 0.020}


def compose(package: str, url: str) -> Any:
    """A keyguard of ``package`` over the database at ``url``, as ``serve`` composes it."""
    runtime = __import__(f"{package}.runtime", fromlist=["Keyguard"])
    config = __import__(f"{package}.config", fromlist=["Settings"])
    return runtime.Keyguard(config.Settings(database_url=url, secret_key=SecretStr(SECRET)))


def database(folder: Path, name: str, keys: int, pages: list[int]) -> tuple[str, int]:
    """A SQLite database of ``keys`` keys in one account; the url and the account id.

    The keys on ``pages`` (of PER_PAGE) get real sealed secrets; the others keep
    :func:`benchmarks.snapshot.fill`'s zeros, since a list never opens them.
    """
    url = f"sqlite:///{folder / name}"
    keyguard = compose("keyguard", url)
    keyguard.store.migrate()
    account, _root = keyguard.service.create_account("bench")
    fill(url, account.id, keys - 1)
    keyguard.store.recount_keys()  # as `keyguard migrate` does after keys came by SQL
    engine = create_engine(url)
    try:
        with engine.begin() as connection:
            rows = connection.execute(
                text("SELECT id, digest FROM api_keys WHERE account_id = :a ORDER BY id"),
                {"a": account.id},
            ).all()
            wanted = {position for page in pages for position in range(*_span(page, len(rows)))}
            sealed = [
                {"id": rows[i][0], "sealed": keyguard.vault.seal(f"kg_bench{i}", rows[i][1])}
                for i in sorted(wanted)
            ]
            connection.execute(
                text("UPDATE api_keys SET sealed_value = :sealed WHERE id = :id"), sealed
            )
    finally:
        engine.dispose()
        keyguard.store.close()
    return url, account.id


def _span(page: int, total: int) -> tuple[int, int]:
    start = (page - 1) * PER_PAGE
    return start, min(total, start + PER_PAGE)


def listing(keyguard: Any, package: str, account_id: int, page: int | None) -> Callable[[], bytes]:
    """One list as the route makes it: read, render, dump; the body."""
    wire = __import__(f"{package}.wire", fromlist=["key_object"])
    service, groups = keyguard.service, keyguard.routes.groups

    def render(views: list[Any]) -> bytes:
        if hasattr(wire, "key_list"):
            return bytes(wire.key_list(views, groups))
        return orjson.dumps([wire.key_object(view, groups) for view in views])

    def run() -> bytes:
        if page is None:
            views = service.list_keys(account_id)
        else:
            views = service.page_of_keys(account_id, None, page, PER_PAGE).views
        return render(views)

    return run


def measure(runs: dict[str, Callable[[], bytes]]) -> dict[str, tuple[float, float]]:
    """Each run's median seconds, wall clock and CPU, over ROUNDS rounds, the runs
    alternating each round."""
    walls: dict[str, list[float]] = {name: [] for name in runs}
    cpus: dict[str, list[float]] = {name: [] for name in runs}
    bodies = {run() for run in runs.values()}  # warm; and every keyguard, the same bytes
    if len(bodies) > 1:
        raise AssertionError("the keyguards' lists differ")
    for round_number in range(ROUNDS):
        order = list(runs.items())
        for name, run in order if round_number % 2 == 0 else reversed(order):
            started, cpu = time.perf_counter(), time.process_time()
            run()
            walls[name].append(time.perf_counter() - started)
            cpus[name].append(time.process_time() - cpu)
    return {name: (median(walls[name]), median(cpus[name])) for name in runs}


def run(context: Context) -> Section:  # noqa: ARG001
    baseline = os.environ.get(BASELINE_VARIABLE)
    last_page = PAGED_KEYS // PER_PAGE
    cases = {
        "list 10,000 keys": (LIST_KEYS, None),
        "page 100 of 1,000,000, first page": (PAGED_KEYS, 1),
        "page 100 of 1,000,000, middle page": (PAGED_KEYS, last_page // 2),
        "page 100 of 1,000,000, last page": (PAGED_KEYS, last_page),
    }
    packages = ["keyguard"]
    rows = []
    with tempfile.TemporaryDirectory(prefix="keyguard-lists-") as name:
        folder = Path(name)
        if baseline:
            load_baseline(baseline, folder)
            packages.append("keyguard_baseline")
        small = database(folder, "list.db", LIST_KEYS, list(range(1, LIST_KEYS // PER_PAGE + 1)))
        large = database(folder, "paged.db", PAGED_KEYS, [1, last_page // 2, last_page])
        keyguards = {
            (package, url): compose(package, url)
            for package in packages
            for url, _account in (small, large)
        }
        results: dict[str, dict[str, tuple[float, float]]] = {}
        for case, (keys, page) in cases.items():
            url, account_id = small if keys == LIST_KEYS else large
            runs = {
                package: listing(keyguards[package, url], package, account_id, page)
                for package in packages
            }
            results[case] = measure(runs)
        for keyguard in keyguards.values():
            keyguard.store.close()
    for case, found in results.items():
        target = TARGETS.get(case)
        wall, cpu = found["keyguard"]
        row = [case, millis(wall * 1000), millis(cpu * 1000)]
        row.append("" if target is None else millis(target * 1000))
        if baseline:
            before, before_cpu = found["keyguard_baseline"]
            row += [millis(before * 1000), millis(before_cpu * 1000), f"{before / wall:.1f}x"]
        rows.append(row)
    headers = ["list (SQLite, in-process)", "p50", "CPU", "target"]
    if baseline:
        headers += ["p50 before", "CPU before", "faster"]
    return Section(
        "lists",
        "Key lists",
        [table("p50 in ms", headers, rows)],
        [f"Median of {ROUNDS} alternating rounds: read, open the secrets, render, orjson."],
        {"p50_seconds": results},
    )
