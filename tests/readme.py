"""Running README.md's code blocks as a reader would; ``tests/test_readme.py`` runs them all.

Blocks are found anew on every run, so a block added to README.md is covered at once.
They run in README order, in sessions: a session is a fresh copy of the repository
(its tracked and unignored files) in a temporary folder named ``keyguard``, with the
test's virtual environment standing in for the one ``make run`` makes, and one bash
that every command of the session runs in, so variables and the working directory
carry over from block to block as in a reader's terminal.

How blocks run:

- ```` ```sh ```` (or ``bash``, ``shell``): a script; each command must exit 0. ``curl``
  runs with ``--fail-with-body``, so an HTTP error fails the command.
- ```` ```console ````: commands after ``$ `` (continued on the lines that follow while
  incomplete), each followed by the output it must print. In that output ``…`` stands
  for any text and JSON spacing and line breaks do not count. Where output is shown,
  it is the contract and the exit status is not checked; elsewhere it must be 0.
- ```` ```python ````: a block whose first line is a comment naming a file
  (``# myapp/app.py``) is saved there, relative to the folder that holds the clone, and
  a later command of the session must use it (name its folder or file); any other
  Python block runs as ``python BLOCK.py`` from the session's working directory.
- A command that starts a server (``make run``, ``keyguard serve``, ``uvicorn``) runs
  in the background until the session ends; the next command runs once the server
  answers HTTP. A server on a port that another already serves replaces it, as a
  reader would stop the first. Keys a server prints, or writes to a ``first-key.txt``
  whose path it prints, count as shown.

What the harness substitutes (and nothing else):

- ports: ``127.0.0.1:N``, ``localhost:N``, ``--port N``, ``PORT=N``, and the default
  ports of ``make run`` and ``keyguard serve`` (8080) and ``uvicorn`` (8000), each README
  port consistently by a free port of its own; ``0.0.0.0`` by ``127.0.0.1``;
- ``kg_…`` or ``kg_...``: the last key shown so far, as a reader would paste it;
- ``KEYGUARD_NAME=…``: a 55-character value (a secret or a token);
- ``postgresql://…``: a fresh PostgreSQL schema; such a session needs
  KEYGUARD_TEST_POSTGRES_URL, and is skipped (or, under .ci/run, fails) without it.

Markers, an HTML comment on the line before a block (blank lines between allowed):

- ``<!-- illustration: why -->``: not run (a synopsis, a layout, a made-up output);
- ``<!-- tested-by: tests/test_x.py::test_name -->``: run by that test, which must exist
  (``tests/test_x.py`` alone names a whole file; ``.ci/run`` works too);
- ``<!-- session: name -->``: runs in the session of that name, not the main one. The
  main session starts as a fresh clone, without ``keyguard`` on the PATH; every other
  session starts as a reader has it after the quick start: the virtual environment
  active, no server running, no database.

After each session, every file its commands left in the copy must be covered by
``.gitignore``.
"""

import os
import re
import select
import shlex
import shutil
import signal
import subprocess
import sys
import time
from contextlib import suppress
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from tests.server import HOST, free_port

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
MAIN = "main"
SCRIPT_LANGUAGES = {"sh", "bash", "shell"}
RUNNABLE_LANGUAGES = {*SCRIPT_LANGUAGES, "console", "python"}
MARKERS = {"illustration", "tested-by", "session"}
COMMAND_TIMEOUT = 60.0
SERVER_TIMEOUT = 30.0
STOP_TIMEOUT = 10.0
PLACEHOLDER_VALUE = "readme-" + "0123456789abcdef" * 3
# <prefix>_<32 base62 characters><6 base62 characters of checksum>
TOKEN = re.compile(r"\b[a-z0-9]{1,16}_[0-9A-Za-z]{38}\b")
KEY_PLACEHOLDER = re.compile(r"kg_(?:…|\.\.\.)")
SERVER_START = re.compile(r"^(?:\w+=\S*\s+)*(make run|keyguard serve|uvicorn)\b")
DEFAULT_PORTS = {"make run": 8080, "keyguard serve": 8080, "uvicorn": 8000}
PORT_OPTIONS = {"make run": "PORT={}", "keyguard serve": "--port {}", "uvicorn": "--port {}"}
README_PORT = re.compile(
    r"(?<=127\.0\.0\.1:)\d{2,5}\b|(?<=localhost:)\d{2,5}\b|(?<=--port )\d{2,5}\b"
    r"|(?<=--port=)\d{2,5}\b|(?<=\bPORT=)\d{2,5}\b"
)


# -- the README's blocks ---------------------------------------------------------------


@dataclass(frozen=True)
class Block:
    """One fenced block: where it starts, its language, its text and its markers."""

    line: int
    language: str
    text: str
    markers: dict[str, str]

    @property
    def session(self) -> str | None:
        """The session it runs in, or None when it runs nowhere in this file."""
        if "illustration" in self.markers or "tested-by" in self.markers:
            return None
        return self.markers.get("session", MAIN)

    @property
    def where(self) -> str:
        return f"README.md:{self.line}"


def readme_blocks(text: str) -> tuple[list[Block], list[str]]:
    """Every fenced block of ``text``, and a sentence for each marker that is wrong."""
    blocks: list[Block] = []
    problems: list[str] = []
    markers: dict[str, str] = {}
    lines = text.splitlines()
    number = 0
    while number < len(lines):
        line = lines[number].strip()
        number += 1
        if line.startswith("<!--") and line.endswith("-->"):
            name, _, value = line[4:-3].strip().partition(":")
            if name.strip() not in MARKERS:
                problems.append(f"README.md:{number}: unknown marker {line}; known: {MARKERS}")
            markers[name.strip()] = value.strip()
        elif line.startswith("```"):
            start = number
            body: list[str] = []
            while number < len(lines) and lines[number].strip() != "```":
                body.append(lines[number])
                number += 1
            number += 1
            blocks.append(Block(start, line[3:].strip(), "\n".join(body), markers))
            markers = {}
        elif line:
            markers = {}
    return blocks, problems


@dataclass(frozen=True)
class Command:
    """A command as the README shows it, and the output it shows for it, if any."""

    line: int
    text: str
    output: str | None = None


def is_complete(command: str) -> bool:
    """Whether bash would run ``command`` as it is, rather than wait for more lines."""
    if command.rstrip().endswith("\\"):
        return False
    checked = subprocess.run(
        ["bash", "-n", "-c", command], capture_output=True, text=True, check=False, timeout=10
    )
    return re.search("unexpected (end of file|EOF)", checked.stderr) is None


def script_commands(block: Block) -> list[Command]:
    commands: list[Command] = []
    pending: list[str] = []
    for offset, line in enumerate(block.text.splitlines(), start=1):
        if not pending and (not line.strip() or line.lstrip().startswith("#")):
            continue
        pending.append(line)
        if is_complete("\n".join(pending)):
            commands.append(Command(block.line + offset - len(pending) + 1, "\n".join(pending)))
            pending = []
    assert not pending, f"{block.where}: the block ends inside a command"
    return commands


def console_commands(block: Block) -> list[Command]:
    commands: list[Command] = []
    lines = block.text.splitlines()
    index = 0
    while index < len(lines):
        line = lines[index]
        assert line.startswith("$ "), f"{block.where}: console line {line!r} is no command"
        start, command = block.line + index + 1, line[2:]
        index += 1
        while not is_complete(command):
            assert index < len(lines), f"{block.where}: the block ends inside a command"
            command += "\n" + lines[index]
            index += 1
        output = []
        while index < len(lines) and not lines[index].startswith("$ "):
            output.append(lines[index])
            index += 1
        commands.append(Command(start, command, "\n".join(output)))
    return commands


def squeezed(text: str) -> str:
    """``text`` with runs of whitespace as one space, and none around JSON punctuation."""
    return re.sub(r" ?([{}\[\],:]) ?", r"\1", re.sub(r"\s+", " ", text.strip()))


def shows(expected: str, actual: str) -> bool:
    """Whether ``actual`` is the output ``expected`` shows, ``…`` standing for any text."""
    parts = squeezed(expected).split("…")
    pattern = ".*?".join(re.escape(part) for part in parts)
    return re.fullmatch(pattern, squeezed(actual), re.DOTALL) is not None


# -- one reader's terminal ---------------------------------------------------------------


class Shell:
    """One bash for a whole session, each command's output kept in a file of its own."""

    MARK = "@@readme-command-done"

    def __init__(self, cwd: Path, env: dict[str, str], logs: Path) -> None:
        self.logs = logs
        self.count = 0
        self.process = subprocess.Popen(
            ["bash", "--noprofile", "--norc"],
            cwd=cwd,
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        self._unread = b""
        # Background jobs get process groups of their own: a server and its workers
        # stop together.
        self.run("set -m")

    def run(self, script: str, timeout: float = COMMAND_TIMEOUT) -> tuple[int, str]:
        """Run ``script`` in this shell; its exit status and everything it printed."""
        self.count += 1
        source = self.logs / f"{self.count}.sh"
        output = self.logs / f"{self.count}.out"
        source.write_text(script + "\n")
        line = (
            f". {shlex.quote(str(source))} </dev/null >{shlex.quote(str(output))} 2>&1; "
            f"printf '\\n{self.MARK} %d\\n' $?\n"
        )
        assert self.process.stdin is not None
        self.process.stdin.write(line.encode())
        self.process.stdin.flush()
        status = self._wait_for_mark(time.monotonic() + timeout, script)
        return status, output.read_text(errors="replace")

    def _wait_for_mark(self, deadline: float, script: str) -> int:
        assert self.process.stdout is not None
        descriptor = self.process.stdout.fileno()
        while True:
            found = re.search(rf"{self.MARK} (\d+)\n".encode(), self._unread)
            if found:
                self._unread = self._unread[found.end() :]
                return int(found.group(1))
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                pytest.fail(f"still running after {COMMAND_TIMEOUT:g} s: {script}")
            ready, _, _ = select.select([descriptor], [], [], remaining)
            if ready:
                chunk = os.read(descriptor, 65536)
                if not chunk:
                    pytest.fail(f"the shell ended while running: {script}")
                self._unread += chunk

    def close(self) -> None:
        assert self.process.stdin is not None
        assert self.process.stdout is not None
        with suppress(OSError):
            self.process.stdin.close()
        try:
            self.process.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(STOP_TIMEOUT)
        self.process.stdout.close()


@dataclass
class Server:
    command: str
    pid: int
    port: int
    log: Path


def stop(server: Server) -> None:
    """SIGTERM to the server's process group, as Ctrl-C would; SIGKILL if it lingers."""
    with suppress(ProcessLookupError):
        os.killpg(server.pid, signal.SIGTERM)
    deadline = time.monotonic() + STOP_TIMEOUT
    while time.monotonic() < deadline and _group_alive(server.pid):
        time.sleep(0.05)
    with suppress(ProcessLookupError):
        os.killpg(server.pid, signal.SIGKILL)


def _group_alive(group: int) -> bool:
    try:
        os.killpg(group, 0)
    except ProcessLookupError:
        return False
    return any(_is_running_in(group, entry) for entry in Path("/proc").iterdir())


def _is_running_in(group: int, entry: Path) -> bool:
    if not entry.name.isdigit():
        return False
    try:
        fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return False
    return int(fields[2]) == group and fields[0] != "Z"


def listening_port(command: str) -> int | None:
    """The port a server command names, outside its comments."""
    words = shlex.split(command, comments=True)
    for word, following in zip(words, [*words[1:], ""], strict=True):
        if word == "--port":
            return int(following)
        for prefix in ("--port=", "PORT="):
            if word.startswith(prefix):
                return int(word.removeprefix(prefix))
    return None


# -- a session ---------------------------------------------------------------------------


def repository_files() -> list[str]:
    """The repository's files as a fresh clone has them, with uncommitted work."""
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT,
        capture_output=True,
        check=True,
        timeout=30,
    )
    return [name for name in listed.stdout.decode().split("\0") if name]


def git(clone: Path, *args: str) -> str:
    environment = {**os.environ, "GIT_CONFIG_GLOBAL": os.devnull, "GIT_CONFIG_NOSYSTEM": "1"}
    done = subprocess.run(
        ["git", *args], cwd=clone, env=environment, capture_output=True, text=True, timeout=30
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def fresh_copy(folder: Path) -> Path:
    """The repository copied into ``folder/keyguard``, as its own git repository, with a
    ``.venv`` whose ``bin`` is this test's virtual environment (installed, as ``make``
    sees it: ``make run`` runs keyguard from this checkout and installs nothing)."""
    clone = folder / "keyguard"
    for name in repository_files():
        source = ROOT / name
        if source.is_file():
            target = clone / name
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target)  # with its time: make compares them
    venv = clone / ".venv"
    venv.mkdir()
    (venv / "bin").symlink_to(Path(sys.executable).parent, target_is_directory=True)
    for marker in (".installed", ".dev-installed"):
        (venv / marker).touch()
    git(clone, "init", "-q")
    git(clone, "add", "-A")
    return clone


def reader_environment(active_venv: Path | None) -> dict[str, str]:
    """This process's environment as a new terminal has it: no KEYGUARD_* setting, no
    active virtual environment and no outer make; curl fails on HTTP errors."""
    venv_bin = str(Path(sys.executable).parent)
    environment = {
        name: value
        for name, value in os.environ.items()
        if not name.startswith(("KEYGUARD_", "MAKE", "MFLAGS")) and name != "VIRTUAL_ENV"
    }
    path = [entry for entry in environment.get("PATH", "").split(os.pathsep) if entry != venv_bin]
    if active_venv is not None:
        path.insert(0, str(active_venv))
        environment["VIRTUAL_ENV"] = str(active_venv.parent)
    return environment | {"PATH": os.pathsep.join(path)}


def curl_that_fails_on_http_errors(folder: Path) -> Path:
    real = shutil.which("curl")
    assert real is not None, "curl is not installed"
    folder.mkdir()
    shim = folder / "curl"
    shim.write_text(f'#!/bin/sh\nexec {shlex.quote(real)} --fail-with-body "$@"\n')
    shim.chmod(0o755)
    return folder


@dataclass
class Session:
    """The blocks of one session, run in README order."""

    name: str
    folder: Path
    postgres_url: str | None = None
    shell: Shell = field(init=False)
    clone: Path = field(init=False)
    logs: Path = field(init=False)
    ports: dict[int, int] = field(default_factory=dict)
    servers: dict[int, Server] = field(default_factory=dict)
    keys: list[str] = field(default_factory=list)
    unused_files: dict[Path, Block] = field(default_factory=dict)
    ran: list[int] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.clone = fresh_copy(self.folder)
        self.logs = self.folder / "readme-logs"
        self.logs.mkdir()
        environment = reader_environment(
            None if self.name == MAIN else self.clone / ".venv" / "bin"
        )
        curl = curl_that_fails_on_http_errors(self.folder / "readme-bin")
        environment["PATH"] = f"{curl}{os.pathsep}{environment['PATH']}"
        self.shell = Shell(self.clone, environment, self.logs)

    def close(self) -> None:
        for server in self.servers.values():
            stop(server)
        self.shell.close()

    # -- blocks

    def run(self, block: Block) -> None:
        if block.language in SCRIPT_LANGUAGES:
            for command in script_commands(block):
                self.run_command(command)
        elif block.language == "console":
            for command in console_commands(block):
                self.run_command(command)
        elif block.language == "python":
            self.run_python(block)
        else:
            pytest.fail(
                f"{block.where}: a {block.language or 'plain'} block runs nowhere: mark it "
                "<!-- illustration: why --> or <!-- tested-by: tests/test_x.py::test_y -->"
            )
        self.ran.append(block.line)

    def run_python(self, block: Block) -> None:
        first = block.text.splitlines()[0] if block.text else ""
        named = re.fullmatch(r"#\s*([\w./-]+\.py)", first.strip())
        if named:
            path = self.folder / named.group(1)
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(block.text + "\n")
            self.unused_files[Path(named.group(1))] = block
            return
        script = self.folder / f"readme-{block.line}.py"
        script.write_text(block.text + "\n")
        self.run_command(Command(block.line, f"python {shlex.quote(str(script))}"))

    # -- commands

    def run_command(self, command: Command) -> None:
        text = self.substituted(command.text)
        for path in list(self.unused_files):
            if str(path) in text or path.parts[0] in text:
                del self.unused_files[path]
        started = SERVER_START.match(text.replace("\\\n", " ").strip())
        if started:
            self.start_server(command, text, started.group(1))
            return
        status, output = self.shell.run(text)
        self.note_keys(output)
        where = f"README.md:{command.line}: {text}"
        if command.output:
            assert shows(command.output, output), (
                f"{where}\nprinted:\n{output}\nwhere the README shows:\n{command.output}"
            )
        else:
            assert status == 0, f"{where}\nexited {status}:\n{output}"

    def substituted(self, text: str) -> str:
        text = text.replace("0.0.0.0", HOST)  # tests listen on loopback only
        text = README_PORT.sub(lambda found: str(self.port_for(int(found.group()))), text)
        text = re.sub(r"(KEYGUARD_[A-Z_]+=)…", rf"\g<1>{PLACEHOLDER_VALUE}", text)
        if "postgresql://" in text:
            assert self.postgres_url is not None, "a postgresql:// command outside its session"
            text = re.sub(r"postgresql://\S*", shlex.quote(self.postgres_url), text)
        if KEY_PLACEHOLDER.search(text):
            assert self.keys, f"{text}: a placeholder key before any key was shown"
            text = KEY_PLACEHOLDER.sub(self.keys[-1], text)
        return text

    def port_for(self, readme_port: int) -> int:
        if readme_port not in self.ports:
            self.ports[readme_port] = free_port()
        return self.ports[readme_port]

    def note_keys(self, output: str) -> None:
        """Remember the keys ``output`` shows, and those in a first-key.txt it names."""
        for found in re.finditer(rf"{TOKEN.pattern}|[^\s'\"]*first-key\.txt", output):
            shown = found.group()
            if shown.endswith("first-key.txt"):
                path = self.clone / shown
                shown = path.read_text().strip() if path.is_file() else ""
            if TOKEN.fullmatch(shown):
                self.keys.append(shown)

    # -- servers

    def start_server(self, command: Command, text: str, program: str) -> None:
        readme_port = listening_port(command.text)
        port = self.port_for(readme_port or DEFAULT_PORTS[program])
        if readme_port is None:
            text = text.replace(program, f"{program} {PORT_OPTIONS[program].format(port)}", 1)
        readme_port = readme_port or DEFAULT_PORTS[program]
        if readme_port in self.servers:
            stop(self.servers.pop(readme_port))
        log = self.logs / f"server-{command.line}.log"
        status, output = self.shell.run(
            f"{{\n{text}\n}} >{shlex.quote(str(log))} 2>&1 &\nprintf '%s' $!"
        )
        assert status == 0, output
        server = Server(text, int(output), port, log)
        self.servers[readme_port] = server
        self.wait_until_answering(server, command)
        self.note_keys(log.read_text(errors="replace"))

    def wait_until_answering(self, server: Server, command: Command) -> None:
        deadline = time.monotonic() + SERVER_TIMEOUT
        with httpx.Client(timeout=2) as client:
            while time.monotonic() < deadline:
                if not _group_alive(server.pid):
                    pytest.fail(
                        f"README.md:{command.line}: {server.command}\nexited:\n"
                        + server.log.read_text(errors="replace")
                    )
                with suppress(httpx.TransportError):
                    client.get(f"http://{HOST}:{server.port}/")
                    return
                time.sleep(0.05)
        pytest.fail(
            f"README.md:{command.line}: {server.command}\nnot answering after "
            f"{SERVER_TIMEOUT:g} s:\n" + server.log.read_text(errors="replace")
        )

    # -- what the session leaves behind

    def files_left_unignored(self) -> list[str]:
        status = git(self.clone, "status", "--porcelain", "--untracked-files=all")
        return [line[3:] for line in status.splitlines() if line.startswith("??")]
