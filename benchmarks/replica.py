"""Revocation through a read replica, beside revocation on the primary.

A throwaway PostgreSQL primary and a streaming replica made from it by
``pg_basebackup -R`` (``tests/postgres.py``), both on this machine. Three
instances: A writes the primary; B follows the replica
(``KEYGUARD_DATABASE_READ_URL``: it polls every ``KEYGUARD_REFRESH_INTERVAL``);
C follows the primary itself (LISTEN/NOTIFY). A trial deactivates a key of its
own through A and polls ``/auth/forward`` on B and on C alternately until each
refuses the key; each time runs from A's answer. Trials first wait a random
fraction of the refresh interval, so deactivations fall anywhere between two polls.
"""

import random
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, replace

import httpx
from tests.postgres import PostgresCluster, replayed, server_binaries
from tests.server import NO_LIMITS

from benchmarks.context import Context
from benchmarks.forward import FORWARD_PATH, forward_headers
from benchmarks.report import Section, millis, table, times
from benchmarks.server import Server, deployed, serving
from benchmarks.stats import Latency, median

TRIALS = 30
BUDGET = 60.0  # seconds for all trials
WAIT = 5.0  # seconds a trial polls before it counts the refusal as missed
REFRESH_INTERVAL = 0.25  # keyguard's default KEYGUARD_REFRESH_INTERVAL
CATCH_UP = 30.0  # seconds the replica may take to replay the migration


@contextmanager
def replicated() -> Iterator[tuple[PostgresCluster, PostgresCluster]]:
    """A running primary and a running streaming replica of it, removed afterwards."""
    server_binaries()  # says what to install when PostgreSQL's programs are missing
    with PostgresCluster.initdb() as primary:
        primary.start()
        with PostgresCluster.standby_of(primary) as standby:
            yield primary, standby.start()


def refusals(client: httpx.Client, urls: list[str], token: str) -> list[float | None]:
    """``perf_counter()`` of each url's first refusal of ``token``, polled in turn, so
    that no url waits for another; None for a url that still allowed it after WAIT."""
    seen: list[float | None] = [None] * len(urls)
    deadline = time.perf_counter() + WAIT
    while None in seen and time.perf_counter() < deadline:
        for index, url in enumerate(urls):
            if seen[index] is not None:
                continue
            status = client.get(url, headers=forward_headers(token)).status_code
            if status == 401:
                seen[index] = time.perf_counter()
            elif status != 200:
                raise RuntimeError(f"/auth/forward answered {status}")
    return seen


def trials(writer: Server, followers: list[Server]) -> list[list[float | None]]:
    """Per trial, the seconds from the deactivation's answer until each follower refused."""
    phases = random.Random(17)
    measured: list[list[float | None]] = []
    with httpx.Client(headers=writer.tenant.headers, timeout=10.0) as client:
        deadline = time.monotonic() + BUDGET
        while len(measured) < TRIALS and time.monotonic() < deadline:
            key = client.post(writer.url("/v1/api-keys"), json={"label": "revoked"}).json()
            for follower in followers:  # every follower knows the key before it goes
                if not allowed(client, follower.url(FORWARD_PATH), key["value"]):
                    raise RuntimeError("a follower never allowed a new key")
            time.sleep(phases.uniform(0, REFRESH_INTERVAL))
            client.patch(writer.url(f"/v1/api-keys/{key['id']}/deactivate")).raise_for_status()
            answered = time.perf_counter()
            seen = refusals(client, [f.url(FORWARD_PATH) for f in followers], key["value"])
            measured.append([None if at is None else at - answered for at in seen])
    return measured


def allowed(client: httpx.Client, url: str, token: str) -> bool:
    deadline = time.perf_counter() + WAIT
    while time.perf_counter() < deadline:
        if client.get(url, headers=forward_headers(token)).status_code == 200:
            return True
    return False


def run(context: Context) -> Section:  # noqa: ARG001
    with replicated() as (primary, standby), deployed(primary.url, NO_LIMITS) as deployment:
        deadline = time.monotonic() + CATCH_UP
        while not replayed(primary, standby):
            if time.monotonic() > deadline:
                raise RuntimeError("the replica did not replay the migration")
            time.sleep(0.05)
        reading = {**deployment.settings, "KEYGUARD_DATABASE_READ_URL": standby.url}
        with (
            serving(deployment) as writer,
            serving(replace(deployment, settings=reading)) as through_replica,
            serving(deployment) as on_primary,
        ):
            measured = trials(writer, [through_replica, on_primary])
    section = Section("replica", "Revocation through a read replica")
    _describe(section, measured)
    return section


def _describe(section: Section, measured: list[list[float | None]]) -> None:
    names = ["follows the replica (polls)", "follows the primary (LISTEN)"]
    columns = [[at for row in measured if (at := row[n]) is not None] for n in range(len(names))]
    rows = []
    for name, column in zip(names, columns, strict=True):
        if not column:
            rows.append([name, "0", "", "", ""])
            continue
        latency = Latency.of(column)
        figures = (latency.p50_ms, latency.p95_ms, latency.max_ms)
        rows.append([name, str(len(column)), *(millis(value) for value in figures)])
        section.figures[name.partition(" (")[0].replace(" ", "_")] = asdict(latency)
    section.tables.append(
        table(
            "From the deactivation's 200 on the primary until the instance refuses the key",
            ["instance", "trials", "p50 ms", "p95 ms", "max ms"],
            rows,
        )
    )
    if all(columns):
        ratio = median(columns[0]) / max(median(columns[1]), 1e-6)
        section.notes.append(f"Replica p50 / primary p50: {times(ratio)} (same trials).")
        section.figures["p50_ratio"] = ratio
    missed = sum(1 for row in measured for at in row if at is None)
    section.notes.append(
        f"Bound through a replica: replication lag + the {REFRESH_INTERVAL} s poll; "
        f"{len(measured)} trials, {missed} refusals missed within {WAIT:g} s. Primary and "
        "replica run on this machine: the replication lag is a local replica's."
    )
    section.figures["trials"] = len(measured)
