"""Throwaway PostgreSQL: a schema on a running server, or a cluster of its own for
tests that stop the database under keyguard.

:func:`postgres_schema` gives a test (or a benchmark) a schema of its own on the
server it names, and drops it afterwards; :func:`postgres_database` a database of
its own, for tests of LISTEN/NOTIFY, whose channels are shared by a database's schemas.

:class:`PostgresCluster` runs ``initdb`` into a new temporary folder and
``postgres`` on a free 127.0.0.1 port with trust authentication. It can be
stopped in immediate mode (what ``pg_ctl stop -m immediate`` does: no
checkpoint, crash recovery on the next start), killed, and started again on
the same data and port; :meth:`PostgresCluster.standby_of` copies a running
cluster into a streaming replica of it. Every wait has a deadline. As a context manager it ends
the server and removes the folder, pass or fail::

    with PostgresCluster.initdb() as cluster:
        cluster.start()
        url = cluster.url
        cluster.stop()
        cluster.start()

``initdb`` and ``postgres`` refuse to run as root, so under root both run as
the ``postgres`` system user, in a folder handed to that user.
"""

import os
import re
import shutil
import signal
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from types import TracebackType
from typing import Self

import psycopg
from psycopg import sql
from sqlalchemy.engine import make_url

from tests.server import HOST, children, free_port

START_TIMEOUT = 30.0
STOP_TIMEOUT = 10.0
SYSTEM_USER = "postgres"  # who runs the server when the tests run as root


@contextmanager
def postgres_schema(server: str, prefix: str = "kg_test") -> Iterator[str]:
    """A throwaway schema on ``server``, and a URL whose connections use only it.

    On the way out, even after a failure, connections still using it are ended
    and it is dropped.
    """
    name = f"{prefix}_{uuid.uuid4().hex[:12]}"
    conninfo = server.replace("postgresql+psycopg://", "postgresql://")
    with psycopg.connect(conninfo, autocommit=True, connect_timeout=5) as admin:
        admin.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(name)))
    try:
        separator = "&" if "?" in server else "?"
        yield f"{server}{separator}options=-csearch_path%3D{name}&application_name={name}"
    finally:
        with psycopg.connect(conninfo, autocommit=True, connect_timeout=5) as admin:
            admin.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                " WHERE application_name = %s AND pid <> pg_backend_pid()",
                (name,),
            )
            admin.execute(sql.SQL("DROP SCHEMA {} CASCADE").format(sql.Identifier(name)))


@contextmanager
def postgres_database(server: str) -> Iterator[str]:
    """A throwaway database on ``server``, and its URL (its connections are named after it).

    Notifications reach every listener of a database, whatever its schema: only a
    database of its own keeps other tests' writes from waking a test's listener.
    """
    name = f"kg_test_{uuid.uuid4().hex[:12]}"
    conninfo = server.replace("postgresql+psycopg://", "postgresql://")
    with psycopg.connect(conninfo, autocommit=True, connect_timeout=5) as admin:
        admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    try:
        url = make_url(server).set(database=name).update_query_dict({"application_name": name})
        yield url.render_as_string(hide_password=False)
    finally:
        with psycopg.connect(conninfo, autocommit=True, connect_timeout=5) as admin:
            admin.execute(sql.SQL("DROP DATABASE {} WITH (FORCE)").format(sql.Identifier(name)))


class ClusterError(RuntimeError):
    """The throwaway cluster could not be created, started or stopped."""


def server_binaries() -> Path:
    """The folder holding ``initdb`` and ``postgres``: the newest installed version."""
    # Debian keeps them out of PATH, in one folder per major version.
    candidates = sorted(
        Path("/usr/lib/postgresql").glob("*/bin/initdb"),
        key=lambda path: [int(part) for part in re.findall(r"\d+", path.parts[-3])],
    )
    found = candidates[-1] if candidates else shutil.which("initdb")
    if found is not None:
        return Path(found).parent
    raise ClusterError(
        "PostgreSQL's server programs (initdb, postgres) are not installed; these tests start"
        " their own cluster. Install them, e.g. `apt-get install postgresql`."
    )


class PostgresCluster:
    """One ``postgres`` server over its own data folder; create it with :meth:`initdb`."""

    def __init__(self, folder: Path, port: int, binaries: Path) -> None:
        self.folder = folder
        self.data = folder / "data"
        self.port = port
        self.runs = 0
        self._binaries = binaries
        self._process: subprocess.Popen[bytes] | None = None

    @classmethod
    def initdb(cls) -> Self:
        """A new cluster in a new temporary folder, not yet started."""
        binaries = server_binaries()
        cluster = cls(Path(tempfile.mkdtemp(prefix="keyguard-postgres-")), free_port(), binaries)
        try:
            cluster._initdb()
        except BaseException:
            cluster.close()
            raise
        return cluster

    @classmethod
    def standby_of(cls, primary: "PostgresCluster") -> Self:
        """A streaming replica of the running ``primary`` (``pg_basebackup -R``), not yet
        started. Its ``primary_conninfo`` names the primary's port, so it follows the
        primary across the primary's restarts.
        """
        folder = Path(tempfile.mkdtemp(prefix="keyguard-standby-"))
        standby = cls(folder, free_port(), primary._binaries)
        try:
            standby._run(
                "pg_basebackup",
                *("-h", HOST, "-p", str(primary.port), "-U", "postgres", "-D", str(standby.data)),
                *("-R", "-X", "stream", "-c", "fast", "--no-sync"),
            )
        except BaseException:
            standby.close()
            raise
        return standby

    def _initdb(self) -> None:
        self._run(
            "initdb",
            *("-D", str(self.data), "-U", "postgres", "--auth=trust"),
            *("--encoding=UTF8", "--locale=C", "--no-sync"),
        )

    def _run(self, program: str, *args: str) -> None:
        """One of PostgreSQL's programs, as the user the cluster runs as, into its folder."""
        if self._user is not None:
            shutil.chown(self.folder, self._user, self._user)
        done = subprocess.run(
            [str(self._binaries / program), *args],
            capture_output=True,
            text=True,
            timeout=START_TIMEOUT,
            check=False,
            user=self._user,
            group=self._user,
            extra_groups=self._groups,
        )
        if done.returncode != 0:
            raise ClusterError(f"{program} exited {done.returncode}:\n{done.stdout}{done.stderr}")

    @property
    def url(self) -> str:
        """The ``postgres`` database, as the superuser ``postgres``."""
        return f"postgresql://postgres@{HOST}:{self.port}/postgres"

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    @property
    def log(self) -> str:
        """What the current (or last) run wrote to stderr."""
        path = self.folder / f"postgres-{self.runs}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def start(self, timeout: float = START_TIMEOUT) -> Self:
        """Start on the cluster's data and port; return once it accepts queries."""
        if self.running:
            raise ClusterError("The cluster is already running.")
        self.runs += 1
        command = [
            str(self._binaries / "postgres"),
            *("-D", str(self.data), "-p", str(self.port)),
            *("-c", f"listen_addresses={HOST}", "-c", f"unix_socket_directories={self.folder}"),
        ]
        with (self.folder / f"postgres-{self.runs}.log").open("wb") as log:
            self._process = subprocess.Popen(
                command,
                cwd=self.folder,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                start_new_session=True,
                user=self._user,
                group=self._user,
                extra_groups=self._groups,
            )
        self._wait_until_ready(timeout)
        return self

    def _wait_until_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.running:
                self._fail("exited before it accepted connections")
            with (
                suppress(psycopg.OperationalError),
                psycopg.connect(self.url, connect_timeout=1) as connection,
            ):
                connection.execute("SELECT 1")
                return
            time.sleep(0.05)
        self._fail(f"did not accept connections within {timeout:g} s")

    def _fail(self, what: str) -> None:
        self.kill()
        raise ClusterError(f"postgres on port {self.port} {what}.\n--- log ---\n{self.log}")

    def stop(self, timeout: float = STOP_TIMEOUT) -> None:
        """Immediate shutdown (SIGQUIT): every backend ends at once, nothing is checkpointed.

        Returns when the postmaster has exited, which it does only after its
        backends have, so the port and the data are free for :meth:`start`.
        """
        process = self._require_process()
        with suppress(ProcessLookupError):
            process.send_signal(signal.SIGQUIT)
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise ClusterError(f"postgres ignored SIGQUIT for {timeout:g} s.") from None

    def kill(self) -> None:
        """SIGKILL to the postmaster and each of its backends, as an OOM kill would."""
        process = self._require_process()
        # Backends lead their own sessions, so a process group does not reach them;
        # a stopped postmaster forks no new one while they are listed.
        with suppress(ProcessLookupError, PermissionError):
            os.kill(process.pid, signal.SIGSTOP)
        backends = children(process.pid)
        for pid in [process.pid, *backends]:
            with suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
        process.wait(STOP_TIMEOUT)
        deadline = time.monotonic() + STOP_TIMEOUT
        while any(alive(pid) for pid in backends):
            if time.monotonic() > deadline:
                raise ClusterError(f"postgres backends {backends} outlived SIGKILL.")
            time.sleep(0.02)

    def close(self) -> None:
        """End the server if it runs, and remove the folder."""
        try:
            if self.running:
                with suppress(ClusterError):  # stop() has killed it already
                    self.stop()
        finally:
            shutil.rmtree(self.folder, ignore_errors=True)

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    @property
    def _user(self) -> str | None:
        """Who runs initdb and postgres: the postgres user under root, else ourselves."""
        return SYSTEM_USER if os.geteuid() == 0 else None

    @property
    def _groups(self) -> list[str] | None:
        return [] if self._user else None  # and none of root's groups

    def _require_process(self) -> "subprocess.Popen[bytes]":
        if self._process is None:
            raise ClusterError("The cluster was never started.")
        return self._process


def replayed(primary: PostgresCluster, standby: PostgresCluster) -> bool:
    """Whether ``standby`` has replayed everything ``primary`` has written so far."""
    with psycopg.connect(primary.url, autocommit=True) as connection:
        written = connection.execute("SELECT pg_current_wal_lsn()").fetchone()
    with psycopg.connect(standby.url, autocommit=True) as connection:
        reached = connection.execute(
            "SELECT pg_last_wal_replay_lsn() >= %s::pg_lsn", (written[0] if written else None,)
        ).fetchone()
    return bool(reached and reached[0])


def pause_replay(standby: PostgresCluster, *, paused: bool = True) -> None:
    """Pause (or resume) a standby's replay: it keeps receiving WAL, and applies none."""
    action = "pause" if paused else "resume"
    with psycopg.connect(standby.url, autocommit=True) as connection:
        connection.execute(f"SELECT pg_wal_replay_{action}()")


def alive(pid: int) -> bool:
    """Whether ``pid`` still runs (a zombie has already let go of everything)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
    except OSError:
        return False
    return state != "Z"
