"""``keyguard import``: keys per second, by value and by SHA-256 digest, SQLite and PostgreSQL.

For each database and each kind, a fresh database with one account takes a JSON
Lines file of IMPORT_KEYS keys from the real ``keyguard import`` command, in
batches of its default size; then the same file again, which must add nothing.
A third of the keys are full access, a third scoped to two groups and a third
restricted to a two-entry allow-list; every one has a label of its own.

Figures: the command's own keys/s (reading, checking, hashing, sealing and writing,
as it prints them), and the wall time of the whole process, interpreter start
included. PostgreSQL is ``KEYGUARD_BENCH_POSTGRES_URL`` (default: this machine's),
in a schema of its own.
"""

import hashlib
import json
import os
import re
import resource
import secrets
import subprocess
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from tests.postgres import postgres_schema
from tests.server import KeyguardServer, keyguard_command

from benchmarks.context import Context
from benchmarks.postgres import DEFAULT_POSTGRES_URL, POSTGRES_URL_VARIABLE
from benchmarks.report import Section, rate, table
from benchmarks.server import deployed

IMPORT_KEYS = 100_000
TARGET = 20_000  # keys/s on SQLite
TIMEOUT = 600.0
KINDS = ("value", "sha256")
_PRINTED = re.compile(r"Imported (\d+) keys; skipped (\d+) .* in ([0-9.]+) s")


@dataclass(frozen=True, slots=True)
class Round:
    database: str
    kind: str
    keys: int
    seconds: float  # as the command measured itself
    wall_seconds: float  # the whole process
    cpu_seconds: float  # the process's CPU time less that of importing an empty file
    again_seconds: float  # the same file once more: every key skipped

    def rates(self) -> dict[str, float]:
        """Keys per second of each time."""
        return {
            "keys_per_second": self.keys / self.seconds,
            "wall_keys_per_second": self.keys / self.wall_seconds,
            "cpu_keys_per_second": self.keys / self.cpu_seconds,
            "again_keys_per_second": self.keys / self.again_seconds,
        }


def write_file(path: Path, kind: str, keys: int) -> Path:
    """IMPORT_KEYS records of ``kind``, in the mix the module docstring describes."""
    with path.open("w") as handle:
        for index in range(keys):
            token = f"bench_{secrets.token_hex(16)}"
            secret = {"value": token} if kind == "value" else {"sha256": _sha256(token)}
            record: dict[str, object] = {**secret, "label": f"imported key {index:07d}"}
            if index % 3 == 1:
                record.update(scopes_enabled=True, messages={"allow": "write"},
                              calls={"allow": "read"})  # fmt: skip
            elif index % 3 == 2:
                record.update(restricted=True, permitted_ips=["10.0.0.0/8", "192.0.2.7"])
            handle.write(json.dumps(record) + "\n")
    return path


def _sha256(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


@dataclass(frozen=True, slots=True)
class Run:
    imported: int
    skipped: int
    seconds: float  # as the command measured itself
    wall_seconds: float  # the whole process
    cpu_seconds: float  # the whole process's user and system time


def import_once(server: KeyguardServer, account: int, source: Path) -> Run:
    command = [*keyguard_command(), "import", "--account", str(account), str(source)]
    used = _children_cpu()
    began = time.perf_counter()
    done = subprocess.run(
        command, env=server.env, capture_output=True, text=True, timeout=TIMEOUT, check=False
    )
    wall = time.perf_counter() - began
    found = _PRINTED.search(done.stdout)
    if done.returncode != 0 or found is None:
        raise RuntimeError(f"keyguard import exited {done.returncode}: {done.stderr[-500:]}")
    return Run(int(found[1]), int(found[2]), float(found[3]), wall, _children_cpu() - used)


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def measure(database: str, url: str | None, kind: str, source: Path) -> Round:
    with deployed(url) as deployment:
        server = KeyguardServer(
            deployment.folder / "import",
            secret_key=deployment.secret_key,
            settings=deployment.settings,
        )
        account = deployment.tenant.account_id
        empty = source.with_name("empty.jsonl")
        empty.touch()
        start_up = import_once(server, account, empty).cpu_seconds
        first = import_once(server, account, source)
        again = import_once(server, account, source)
    if (first.imported, again.imported, again.skipped) != (IMPORT_KEYS, 0, IMPORT_KEYS):
        raise RuntimeError(f"imported {first.imported}, then {again.imported} more")
    return Round(
        database, kind, IMPORT_KEYS, first.seconds, first.wall_seconds,
        first.cpu_seconds - start_up, again.seconds,
    )  # fmt: skip


def run(context: Context) -> Section:  # noqa: ARG001
    postgres = os.environ.get(POSTGRES_URL_VARIABLE, DEFAULT_POSTGRES_URL)
    rounds: list[Round] = []
    with tempfile.TemporaryDirectory(prefix="keyguard-import-") as folder:
        files = {kind: write_file(Path(folder) / f"{kind}.jsonl", kind, IMPORT_KEYS)
                 for kind in KINDS}  # fmt: skip
        for kind in KINDS:  # the two databases side by side, kind by kind
            rounds.append(measure("SQLite", None, kind, files[kind]))
            with postgres_schema(postgres, "kg_bench") as url:
                rounds.append(measure("PostgreSQL", url, kind, files[kind]))
    section = Section("importing", f"keyguard import: {IMPORT_KEYS:,} keys per file")
    section.tables.append(
        table(
            "Keys imported per second",
            ["database, keys by", "keys/s", "with start-up", "per CPU second", "same file again"],
            [
                [f"{one.database}, {one.kind}", *(rate(value) for value in one.rates().values())]
                for one in rounds
            ],
        )
    )
    section.notes.append(
        "keys/s: as the command prints it (reading, checking, digesting, sealing and "
        "writing, one transaction per batch); with start-up: the whole process's wall time; "
        "per CPU second: over the process's user and system time less that of a run on an "
        "empty file (start-up), which other load on the machine does not stretch; same "
        "file again: every key skipped. Load average at the start:"
        f" {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs. Target on SQLite: "
        f"{TARGET:,} keys/s."
    )
    section.figures.update(
        {
            "keys": IMPORT_KEYS,
            "target_sqlite_keys_per_second": TARGET,
            "rounds": [{**asdict(one), **one.rates()} for one in rounds],
        }
    )
    return section
