"""The ``keyguard`` command: serve, migrate, and manage accounts and keys.

A thin shell over :class:`~keyguard.service.KeyService`: it builds the same
request bodies the HTTP API receives, so both validate alike. Tables for people,
``--json`` for scripts; written anywhere but a terminal, nothing is cut to fit a
width. Errors print one sentence to stderr and exit with 1; a command line that
does not parse is click's usage error (exit status 2).
"""

import json
import os
import re
import shlex
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

import click
from pydantic import TypeAdapter, ValidationError
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeRemainingColumn,
)
from rich.table import Table

from keyguard.config import SecretDisplay, Settings, load_settings
from keyguard.domain import keys
from keyguard.domain.audit import ACTIONS, utc_bound
from keyguard.domain.counts import Granularity, Point
from keyguard.domain.credits import INTERVALS, NO_CREDITS
from keyguard.domain.fields import DURATION_UNITS, parse_duration
from keyguard.domain.ratelimit import NO_LIMIT
from keyguard.domain.records import AccountStatus, timestamp
from keyguard.domain.scopes import ScopeGroups
from keyguard.errors import ConfigurationError, InvalidInput, KeyguardError, NotFound
from keyguard.importing import (
    DEFAULT_BATCH,
    FORMATS,
    Importer,
    Tally,
    count_lines,
    file_format,
    read_records,
)
from keyguard.metrics import MULTIPROCESS_DIR
from keyguard.runtime import Keyguard, in_memory
from keyguard.service import NOT_DISPLAYABLE, KeyView, Span
from keyguard.storage import AuditQuery
from keyguard.vault import ROTATION_BATCH, rotate
from keyguard.wire import account_object, audit_object, key_object

F = TypeVar("F", bound=Callable[..., Any])

# Wide enough for any row: a file or a pipe has no width, and a cut secret or label is lost.
UNLIMITED_WIDTH = 1_000_000


def _console() -> Console:
    """Rich output to standard output: fitted to a terminal, never cut anywhere else."""
    if sys.stdout.isatty():
        return Console()
    return Console(width=UNLIMITED_WIDTH, soft_wrap=True)


def _table(*headers: str, title: str | None = None) -> Table:
    """A table whose cells wrap on a narrow terminal rather than lose characters."""
    table = Table(title=title)
    for header in headers:
        table.add_column(header, overflow="fold")
    return table


def _print_secret(*parts: str) -> None:
    """A secret on one line of its own, however narrow the terminal: copied, it stays whole."""
    _console().print(*parts, markup=False, highlight=False, soft_wrap=True)


def _key_shown(display: SecretDisplay) -> str:
    """What the operator may rely on about a new key's secret, for the display mode in force."""
    if display is SecretDisplay.MASKED:
        return "shown only now"
    return "also shown in full by GET /v1/api-keys (KEYGUARD_SECRET_DISPLAY=full)"


@contextmanager
def _keyguard(settings: Settings | None = None) -> Iterator[Keyguard]:
    """A migrated keyguard, its secret checked, for one command; closed afterwards."""
    runtime = Keyguard(settings or load_settings())
    try:
        runtime.store.migrate()
        runtime.check_secret()
        yield runtime
    finally:
        runtime.store.close()


def _fail_cleanly(function: F) -> F:
    """Turn keyguard's errors into one sentence on stderr and exit status 1."""
    import functools

    @functools.wraps(function)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return function(*args, **kwargs)
        except KeyguardError as error:
            click.echo(f"keyguard: {error.message}", err=True)
            sys.exit(1)

    return wrapper  # type: ignore[return-value]


def _echo_json(data: object) -> None:
    click.echo(json.dumps(data, indent=2))


def _when(value: datetime | None) -> str:
    return "-" if value is None else value.strftime("%Y-%m-%d %H:%M:%S")


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="keyguard")
def main() -> None:
    """keyguard: API keys with scopes and IP allow-lists, wire-compatible with Wavix.

    Every command reads its database from KEYGUARD_DATABASE_URL
    (default: sqlite:///./data/keyguard.db).
    """


@main.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option(
    "--port", default=8080, show_default=True, type=click.IntRange(0, 65535), help="Port."
)
@click.option(
    "--workers",
    default=1,
    show_default=True,
    type=click.IntRange(1, 64),
    help="Worker processes; each keeps its own key snapshot, and /metrics covers them all.",
)
@click.option(
    "--access-log/--no-access-log",
    default=False,
    show_default=True,
    help="Log every request (path only, never the query string).",
)
@_fail_cleanly
def serve(host: str, port: int, workers: int, access_log: bool) -> None:
    """Migrate the database and serve the HTTP API.

    On an empty database, creates the account "default" with a full-access key:
    printed on a terminal, otherwise written to first-key.txt (mode 0600) and
    only the file's path printed. With memory:// everything lives in one process:
    one worker only.
    """
    import uvicorn

    from keyguard.logs import uvicorn_log_config

    settings = load_settings()
    app: Any = "keyguard.api.app:create_app"
    if in_memory(settings):
        app = _in_memory_app(settings, host, port, workers)
    else:
        with _keyguard(settings) as runtime:
            if not runtime.service.list_accounts():
                _announce_first_key(runtime, host, port)
    with _shared_metrics(workers):
        uvicorn.run(
            app,
            factory=isinstance(app, str),
            host=host,
            port=port,
            workers=workers,
            access_log=access_log,
            log_config=uvicorn_log_config(),
            server_header=False,
            # keyguard alone decides the client address, from KEYGUARD_TRUSTED_PROXIES and
            # KEYGUARD_CLIENT_IP_HEADER; uvicorn's own (on by default, for 127.0.0.1 or
            # FORWARDED_ALLOW_IPS) would believe X-Forwarded-For first.
            proxy_headers=False,
        )


@contextmanager
def _shared_metrics(workers: int) -> Iterator[None]:
    """With several workers, a fresh folder in which they keep their metrics, so that
    any one of them answers a scrape for all; removed when the server stops.

    Fresh for every serve: counts a previous run left would be added to this one's.
    The workers, started after this, read it from the environment.
    """
    if workers == 1:
        yield
        return
    with tempfile.TemporaryDirectory(prefix="keyguard-metrics-") as folder:
        previous = os.environ.get(MULTIPROCESS_DIR)
        os.environ[MULTIPROCESS_DIR] = folder
        try:
            yield
        finally:
            if previous is None:
                del os.environ[MULTIPROCESS_DIR]
            else:
                os.environ[MULTIPROCESS_DIR] = previous


def _in_memory_app(settings: Settings, host: str, port: int, workers: int) -> Any:
    """The app for memory://, its first key made in the process that serves it.

    Another process (a second worker, or this command before it hands over to
    uvicorn's factory) would hold keys of its own that the server never sees.
    """
    from keyguard.api.app import create_app

    if workers > 1:
        raise ConfigurationError(
            "memory:// keeps every key inside one process: serve it with --workers 1, or give "
            "the workers a database they share (sqlite:///path/to/keyguard.db or postgresql://…)."
        )
    runtime = Keyguard(settings)
    _announce_first_key(runtime, host, port)
    return create_app(keyguard=runtime)


FIRST_KEY_FILE = "first-key.txt"


def _announce_first_key(runtime: Keyguard, host: str, port: int) -> None:
    """Create the account "default" and hand its key to the operator, once.

    On a terminal the key is printed. Anywhere else standard output usually ends
    up in a service's log, so the key goes to a file only its owner can read, and
    only the file's path is printed.
    """
    _account, view = runtime.service.create_account("default")
    shown_host = "127.0.0.1" if host in ("0.0.0.0", "::") else host  # noqa: S104
    if ":" in shown_host:
        shown_host = f"[{shown_host}]"  # an IPv6 address in a URL
    url = f"http://{shown_host}:{port}/v1/api-keys"
    if sys.stdout.isatty():
        shown = _key_shown(runtime.settings.secret_display)
        _console().print(
            f"[bold]Created account 'default'. Its full-access key, {shown}:[/bold]",
            soft_wrap=True,
        )
        _print_secret(view.value)
        credential = view.value
    else:
        path = _write_first_key(runtime.settings, view.value)
        click.echo(f"Created account 'default'. Its full-access key is in {path} (mode 0600);")
        click.echo("keep it somewhere safe, then delete that file.")
        credential = f"$(cat {shlex.quote(str(path))})"
    click.echo("Try it:")
    click.echo(f'curl -H "Authorization: Bearer {credential}" {url}')


def first_key_file(settings: Settings) -> Path:
    """Where a first key goes: beside the SQLite database, else beside the server secret's file."""
    url = settings.database_url
    if url.startswith("sqlite:///") and url != "sqlite:///":
        return Path(url.removeprefix("sqlite:///")).resolve().parent / FIRST_KEY_FILE
    return settings.resolved_secret_file().resolve().parent / FIRST_KEY_FILE


def _write_first_key(settings: Settings, key: str) -> Path:
    """Write ``key`` to :func:`first_key_file`, readable by this user only."""
    path = first_key_file(settings)
    path.parent.mkdir(parents=True, exist_ok=True)
    # Not through a link someone else planted; and 0600 even if the file was there before.
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
    with os.fdopen(descriptor, "w") as handle:
        os.fchmod(handle.fileno(), 0o600)
        handle.write(key + "\n")
    return path


@main.command()
@_fail_cleanly
def migrate() -> None:
    """Bring the database schema up to date, and recount each account's keys.

    Run it before new instances start, and once more when the last old one stopped.
    """
    with _keyguard() as runtime:
        runtime.store.recount_keys()
    click.echo("Database schema is up to date.")


def _batch_size_option(default: int, help: str) -> Callable[[F], F]:
    return click.option(
        "--batch-size",
        default=default,
        show_default=True,
        type=click.IntRange(1, 10_000),
        help=help,
    )


@main.command("rotate-secret")
@_batch_size_option(ROTATION_BATCH, "Keys rewritten per transaction.")
@_fail_cleanly
def rotate_secret(batch_size: int) -> None:
    """Rewrite every key from the previous server secret to the current one, online.

    Run it with the servers' settings, once every instance runs with the new
    secret as KEYGUARD_SECRET_KEY (or in the secret file) and the old one as
    KEYGUARD_PREVIOUS_SECRET_KEY (or KEYGUARD_PREVIOUS_SECRET_FILE): they answer
    for every key throughout. When it is done the database expects the new
    secret alone; then remove the previous one from every instance. Interrupted,
    it resumes where it stopped when run again.
    """
    with _keyguard() as runtime:
        if runtime.vault.previous is None:
            raise ConfigurationError(
                "rotate-secret moves keys from the previous server secret to the current one, "
                "and no previous secret is set: set KEYGUARD_PREVIOUS_SECRET_KEY (or "
                "KEYGUARD_PREVIOUS_SECRET_FILE) to the secret being replaced, and "
                "KEYGUARD_SECRET_KEY (or the secret file) to the new one, as on every instance."
            )
        reported = 0

        def report(moved: int) -> None:
            nonlocal reported
            if moved - reported >= 10_000:
                click.echo(f"{moved} keys rewritten so far", err=True)
                reported = moved

        moved = rotate(runtime.vault, runtime.store, batch_size, report)
    click.echo(
        f"Rewrote {moved} keys under the current server secret; the database now expects it "
        "alone. Remove the previous secret from every instance and restart them."
    )


# -- accounts ------------------------------------------------------------------


@main.group()
def accounts() -> None:
    """Create, list, suspend and resume accounts."""


@accounts.command("create")
@click.argument("name")
@click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts.")
@_fail_cleanly
def accounts_create(name: str, as_json: bool) -> None:
    """Create an account and print its first, full-access key in full."""
    with _keyguard() as runtime:
        account, view = runtime.service.create_account(name)
        if as_json:
            groups = runtime.service.groups
            _echo_json({"account": account_object(account), "api_key": key_object(view, groups)})
            return
        shown = _key_shown(runtime.settings.secret_display)
    click.echo(f"Created account {account.id} ({account.name}). Its key, {shown}:")
    _print_secret(view.value)


@accounts.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts.")
@_fail_cleanly
def accounts_list(as_json: bool) -> None:
    """List every account that is not deleted, with its status."""
    with _keyguard() as runtime:
        found = runtime.service.list_accounts()
    if as_json:
        _echo_json([account_object(account) for account in found])
        return
    table = _table("id", "name", "status", "created")
    for account in found:
        table.add_row(
            str(account.id), account.name, account.status.value, _when(account.created_at)
        )
    _console().print(table)


# -- keys ----------------------------------------------------------------------


class _Duration(click.ParamType[timedelta, "str | timedelta"]):
    """A span of time as a number and a unit: ``90d``, ``12h``, ``30m``, ``45s``."""

    name = "DURATION"

    def convert(
        self, value: str | timedelta, param: click.Parameter | None, ctx: click.Context | None
    ) -> timedelta:
        if isinstance(value, timedelta):
            return value
        duration = parse_duration(value)
        if duration is None:
            self.fail(f"{value!r} is not a duration such as 90d, 12h, 30m or 45s", param, ctx)
        return duration


_RATE_LIMIT = re.compile(r"([0-9]{1,12})/([0-9]{1,6})([smhdSMHD]?)", re.ASCII)


class _RateLimit(click.ParamType[object, "str | object"]):
    """A rate limit as requests per duration, ``100/60s`` or ``5000/1h``, or ``none``."""

    name = "N/DURATION"

    def convert(
        self, value: object, param: click.Parameter | None, ctx: click.Context | None
    ) -> object:
        if not isinstance(value, str):
            return value
        if value.strip().lower() == NO_LIMIT:
            return NO_LIMIT
        found = _RATE_LIMIT.fullmatch(value.strip())
        if found is None:
            self.fail(f"{value!r} is not a rate limit such as 100/60s, 5000/1h or none", param, ctx)
        limit, number, unit = found.groups()
        seconds = int(number) * DURATION_UNITS[(unit or "s").lower()]
        return {"limit": int(limit), "duration": seconds}


class _Credits(click.ParamType[object, "str | object"]):
    """A number of credits, or ``none`` for unlimited."""

    name = "N"

    def convert(
        self, value: object, param: click.Parameter | None, ctx: click.Context | None
    ) -> object:
        if not isinstance(value, str):
            return value
        text = value.strip().lower()
        if text == NO_CREDITS:
            return NO_CREDITS
        credits = _count(text)
        if credits is None:
            self.fail(f"{value!r} is not a number of credits such as 1000, or none", param, ctx)
        return credits


class _Refill(click.ParamType[object, "str | object"]):
    """A refill as amount per interval, ``1000/daily`` or ``50000/monthly``, or ``none``."""

    name = "N/INTERVAL"

    def convert(
        self, value: object, param: click.Parameter | None, ctx: click.Context | None
    ) -> object:
        if not isinstance(value, str):
            return value
        text = value.strip().lower()
        if text == NO_CREDITS:
            return NO_CREDITS
        amount, _, interval = text.partition("/")
        count = _count(amount)
        if count is None or interval not in INTERVALS:
            self.fail(
                f"{value!r} is not a refill such as 1000/daily, 5000/monthly or none", param, ctx
            )
        return {"amount": count, "interval": interval}


def _count(text: str) -> int | None:
    """A whole number of credits written in ASCII digits (the API bounds it), or None."""
    if not (text.isascii() and text.isdigit()) or len(text) > 13:
        return None
    return int(text)


@main.group("keys")
def keys_group() -> None:
    """Manage the keys of one account, as the HTTP API does."""


def _account_option(function: F) -> F:
    option = click.option(
        "--account", "account_id", required=True, type=int, help="The account's id."
    )
    return option(function)


def _json_option(function: F) -> F:
    return click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts.")(function)


def _key_options(function: F) -> F:
    """Options that map one-to-one onto the fields of a key."""
    options = [
        click.option("--label", help="The key's label."),
        click.option("--active/--inactive", default=None, help="Whether the key can authenticate."),
        click.option(
            "--restricted/--unrestricted",
            default=None,
            help="Whether only --permitted-ip addresses may use the key.",
        ),
        click.option(
            "--permitted-ip",
            "permitted_ips",
            multiple=True,
            help="An IPv4/IPv6 address or CIDR range; repeat for several. On update, the "
            "addresses given replace the key's list.",
        ),
        click.option(
            "--scopes-enabled/--full-access",
            default=None,
            help="Limit the key to its --scope grants, or give it full access.",
        ),
        click.option(
            "--scope",
            "scopes",
            multiple=True,
            metavar="GROUP=LEVEL",
            help="A scope grant such as messages=write (or =none); repeat for several. On "
            "update, groups not named keep their level.",
        ),
        click.option(
            "--expires-at",
            metavar="TIME",
            help="When the key stops working, as in 2027-01-31T00:00:00Z; on update, "
            "'never' removes an expiry.",
        ),
        click.option(
            "--expires-in",
            type=_Duration(),
            help="When the key stops working, from now: 90d, 12h, 30m or 45s.",
        ),
        click.option(
            "--ratelimit",
            type=_RateLimit(),
            help="At most N requests per DURATION, as in 100/60s or 5000/1h (1s to 1d); "
            "on update, 'none' removes a limit.",
        ),
        click.option(
            "--credits",
            type=_Credits(),
            help="Requests the key may still make (each allowed request spends one); "
            "on update, sets them anew, and 'none' makes the key unlimited.",
        ),
        click.option(
            "--refill",
            type=_Refill(),
            help="Set the credits to N at the start of each UTC day or month, as in "
            "1000/daily or 50000/monthly; on update, 'none' removes a refill.",
        ),
    ]
    for option in reversed(options):
        function = option(function)
    return function


def _key_body(
    groups: ScopeGroups,
    label: str | None,
    active: bool | None,
    restricted: bool | None,
    permitted_ips: tuple[str, ...],
    scopes_enabled: bool | None,
    scopes: tuple[str, ...],
    expires_at: str | None,
    expires_in: timedelta | None,
    ratelimit: object,
    credits: object,
    refill: object,
) -> dict[str, Any]:
    """The API body for the options given, refusing any that would not do what they say.

    A grant without ``--scopes-enabled`` would leave a full-access key, and an
    address without ``--restricted`` would be allowed along with every other:
    a command line must never widen access silently.
    """
    if scopes and not scopes_enabled:
        raise InvalidInput("--scope needs --scopes-enabled: without it the key has full access")
    if permitted_ips and not restricted:
        raise InvalidInput(
            "--permitted-ip needs --restricted: without it any address may use the key"
        )
    if expires_at is not None and expires_in is not None:
        raise InvalidInput("Give --expires-at or --expires-in, not both")
    if expires_in is not None:
        expires_at = timestamp(datetime.now(UTC) + expires_in)
    body: dict[str, Any] = {
        "label": label,
        "active": active,
        "restricted": restricted,
        "permitted_ips": list(permitted_ips) if permitted_ips else None,
        "scopes_enabled": scopes_enabled,
        "expires_at": expires_at,
        "ratelimit": ratelimit,
        "remaining": credits,
        "refill": refill,
    }
    for grant in scopes:
        group, sep, level = (part.strip() for part in grant.partition("="))
        if not sep:
            raise InvalidInput(f"--scope {grant!r} is not GROUP=LEVEL")
        if group not in groups:
            raise InvalidInput(
                f"--scope: unknown scope group {group!r}; the groups are {', '.join(groups)}"
            )
        body[group] = {"allow": level}
    return {name: value for name, value in body.items() if value is not None}


def _credits(body: dict[str, Any]) -> str:
    """A key's credits as a table shows them: ``950 (1000/daily)``, or ``-`` for unlimited."""
    if body["remaining"] is None:
        return "-"
    refill = body["refill"]
    return f"{body['remaining']}" + (
        f" ({refill['amount']}/{refill['interval']})" if refill else ""
    )


def _print_keys(views: list[KeyView], runtime: Keyguard, as_json: bool) -> None:
    groups = runtime.service.groups
    if as_json:
        _echo_json([key_object(view, groups) for view in views])
        return
    headers = (
        "id", "label", "key", "active", "ips", "scopes", "last used", "created", "expires", "limit",
        "credits",
    )  # fmt: skip
    table = _table(*headers)
    for view in views:
        settings = view.key.settings
        scopes = (
            ", ".join(f"{name}:{level.label}" for name, level in settings.scopes.items()) or "none"
            if settings.scopes_enabled
            else "full access"
        )
        ips = ", ".join(settings.permitted_ips) or "-" if settings.restricted else "any"
        table.add_row(
            str(view.key.id),
            settings.label,
            keys.mask(view.value) if view.value else NOT_DISPLAYABLE,
            "yes" if settings.active else "no",
            ips,
            scopes,
            _when(view.last_used_at),
            _when(view.key.created_at),
            _when(settings.expires_at) if settings.expires_at else "never",
            f"{limit.limit}/{limit.duration}s" if (limit := settings.ratelimit) else "-",
            _credits(key_object(view, groups)),
        )
    _console().print(table)


@keys_group.command("list")
@_account_option
@click.option("--label", help="Only keys whose label contains this text (case-insensitive).")
@click.option(
    "--page", type=click.IntRange(min=1), help="Show this page only (from 1), as the API pages."
)
@click.option(
    "--per-page",
    type=click.IntRange(1, 1000),
    default=100,
    show_default=True,
    help="Keys per page, with --page.",
)
@_json_option
@_fail_cleanly
def keys_list(
    account_id: int, label: str | None, page: int | None, per_page: int, as_json: bool
) -> None:
    """List an account's keys, all of them or one page.

    Tables mask secrets; --json shows them as KEYGUARD_SECRET_DISPLAY says (in
    full by default).
    """
    with _keyguard() as runtime:
        runtime.service.get_account(account_id)
        if page is None:
            _print_keys(runtime.service.list_keys(account_id, label), runtime, as_json)
            return
        found = runtime.service.page_of_keys(account_id, label, page, per_page)
        _print_keys(found.views, runtime, as_json)
    if not as_json:
        pages = max(1, -(-found.total // per_page))
        click.echo(f"Page {page} of {pages} ({found.total} keys).")


@keys_group.command("show")
@click.argument("key_id", type=int)
@_account_option
@_json_option
@_fail_cleanly
def keys_show(key_id: int, account_id: int, as_json: bool) -> None:
    """Show one key: its settings, rate limit and credits (the secret masked in the table)."""
    with _keyguard() as runtime:
        _print_keys([runtime.service.get_key(account_id, key_id)], runtime, as_json)


@keys_group.command("create")
@_account_option
@_key_options
@_json_option
@_fail_cleanly
def keys_create(account_id: int, as_json: bool, **fields: Any) -> None:
    """Create a key and print it, with its secret in full."""
    with _keyguard() as runtime:
        view = runtime.service.create_key(account_id, _key_body(runtime.service.groups, **fields))
        if as_json:
            _echo_json(key_object(view, runtime.service.groups))
            return
        _print_keys([view], runtime, as_json=False)
    _print_secret("Secret:", view.value)


@keys_group.command("update")
@click.argument("key_id", type=int)
@_account_option
@_key_options
@_json_option
@_fail_cleanly
def keys_update(key_id: int, account_id: int, as_json: bool, **fields: Any) -> None:
    """Change only the given fields of a key."""
    with _keyguard() as runtime:
        body = _key_body(runtime.service.groups, **fields)
        view = runtime.service.update_key(account_id, key_id, body)
        if as_json:
            _echo_json(key_object(view, runtime.service.groups))
            return
        _print_keys([view], runtime, as_json=False)


@keys_group.command("roll")
@click.argument("key_id", type=int)
@_account_option
@click.option(
    "--grace",
    type=_Duration(),
    default="24h",
    show_default=True,
    help="How long the old key keeps working: 0s to 7d.",
)
@_json_option
@_fail_cleanly
def keys_roll(key_id: int, account_id: int, grace: timedelta, as_json: bool) -> None:
    """Replace a key by a new one with the same settings, and print the new secret.

    The old key keeps working until the grace period ends (never past its own
    expiry), so that its users can move to the new one.
    """
    with _keyguard() as runtime:
        body = {"grace_seconds": int(grace.total_seconds())}
        old, new = runtime.service.roll_key(account_id, key_id, body)
        if as_json:
            _echo_json(key_object(new, runtime.service.groups))
            return
        _print_keys([old, new], runtime, as_json=False)
    _print_secret("Secret:", new.value)
    click.echo(f"Key {key_id} works until {_when(old.key.settings.expires_at)}.")


@keys_group.command("usage")
@click.argument("key_id", type=int)
@_account_option
@click.option(
    "--granularity",
    type=click.Choice([granularity.value for granularity in Granularity]),
    default=Granularity.HOUR.value,
    show_default=True,
    help="One bar per minute, hour or day.",
)
@click.option(
    "--last",
    type=_Duration(),
    default="1d",
    show_default=True,
    help="How far back from now: 1h, 1d, 7d …",
)
@_json_option
@_fail_cleanly
def keys_usage(
    key_id: int, account_id: int, granularity: str, last: timedelta, as_json: bool
) -> None:
    """Chart a key's requests: allowed, and refused (401, 403, 429), per bucket."""
    until = datetime.now(UTC)
    chosen = Granularity(granularity)
    with _keyguard() as runtime:
        points = runtime.service.usage_series(account_id, key_id, chosen, Span(until - last, until))
    if as_json:
        _echo_json([point.document() for point in points])
        return
    _console().print(_usage_chart(points, chosen))


def _usage_chart(points: list[Point], granularity: Granularity) -> Table:
    """A bar per bucket: allowed as full blocks, refused as shaded ones."""
    width = 40
    largest = max((sum(point.counts) for point in points), default=0) or 1
    table = _table(f"{granularity.value} (UTC)", "allowed", "refused", "")
    shown = "%Y-%m-%d %H:%M" if granularity is not Granularity.DAY else "%Y-%m-%d"
    for point in points:
        allowed, refused = point.counts[0], sum(point.counts[1:])
        bar = "█" * round(width * allowed / largest) + "░" * round(width * refused / largest)
        table.add_row(point.start.strftime(shown), str(allowed), str(refused), bar)
    return table


@keys_group.command("delete")
@click.argument("key_id", type=int)
@_account_option
@_fail_cleanly
def keys_delete(key_id: int, account_id: int) -> None:
    """Delete a key; every keyguard process refuses it within a second."""
    with _keyguard() as runtime:
        runtime.service.delete_key(account_id, key_id)
    click.echo(f"Deleted key {key_id}.")


# -- audit -----------------------------------------------------------------------


class _Time(click.ParamType[datetime, "str | datetime"]):
    """A time as ``GET /v1/audit-log`` takes ``from`` and ``to``, parsed by the same parser.

    ISO 8601 (``2026-11-01``, ``2026-11-01T00:00:00Z``, ``…+01:00``) or Unix
    seconds; UTC when no offset is given.
    """

    name = "TIME"

    def convert(
        self, value: str | datetime, param: click.Parameter | None, ctx: click.Context | None
    ) -> datetime:
        try:
            moment = utc_bound(TypeAdapter(datetime).validate_python(value), "time")
        except (ValidationError, InvalidInput):
            self.fail(f"{value!r} is not a time such as 2026-11-01T00:00:00Z", param, ctx)
        assert moment is not None
        return moment


@main.command()
@click.option(
    "--account",
    "account_id",
    type=int,
    help="Only this account's records, also after it was deleted; default: every account.",
)
@click.option("--key", "key_id", type=int, help="Only changes to this key.")
@click.option("--action", type=click.Choice(ACTIONS), help="Only this action.")
@click.option(
    "--from",
    "since",
    type=_Time(),
    help="From this time on, e.g. 2026-11-01T00:00:00Z (ISO 8601; UTC without an offset).",
)
@click.option("--to", "until", type=_Time(), help="Before this time, in the same form.")
@click.option("--since", "old_since", type=_Time(), hidden=True)  # --from's older name
@click.option("--until", "old_until", type=_Time(), hidden=True)  # --to's older name
@click.option(
    "--limit",
    default=50,
    show_default=True,
    type=click.IntRange(1, 10_000),
    help="How many records to show, newest first.",
)
@_json_option
@_fail_cleanly
def audit(
    account_id: int | None,
    key_id: int | None,
    action: str | None,
    since: datetime | None,
    until: datetime | None,
    old_since: datetime | None,
    old_until: datetime | None,
    limit: int,
    as_json: bool,
) -> None:
    """Show the audit trail, newest first: every account's, or one account's.

    Changes to keys and accounts, by keys, operators and this command line, with
    the settings before and after (never a secret).
    """
    query = AuditQuery(
        account_id=account_id,
        key_id=key_id,
        action=action,
        # The current name wins when both are given, as in the API's bodies.
        since=since if since is not None else old_since,
        until=until if until is not None else old_until,
        limit=limit,
    )
    with _keyguard() as runtime:
        if account_id is not None:
            _require_trail(runtime, account_id)
        records, total = runtime.service.audit(query)
    if as_json:
        _echo_json([audit_object(record) for record in records])
        return
    headers = ["when", "action", "key", "by", "from", "changed"]
    if account_id is None:
        headers.insert(1, "account")
    table = _table(*headers, title=f"{total} records")
    for record in records:
        actor = record.actor.kind + (f" {record.actor.key_id}" if record.actor.key_id else "")
        row = [
            _when(record.occurred_at),
            record.action,
            str(record.key_id or "-"),
            actor,
            record.actor.ip or "-",
            _difference(record.before, record.after),
        ]
        if account_id is None:
            row.insert(1, str(record.account_id))
        table.add_row(*row)
    _console().print(table)


def _require_trail(runtime: Keyguard, account_id: int) -> None:
    """Refuse an account that never existed; a deleted one still has its trail."""
    if runtime.store.get_account(account_id) is None:
        _records, total = runtime.service.audit(AuditQuery(account_id, limit=1))
        if total == 0:
            raise NotFound()


def _difference(before: Mapping[str, Any] | None, after: Mapping[str, Any] | None) -> str:
    """The fields that changed, as ``name: old -> new``."""
    before, after = before or {}, after or {}
    changed = [
        f"{name}: {before.get(name, '-')} -> {after.get(name, '-')}"
        for name in {**before, **after}
        if before.get(name) != after.get(name)
    ]
    return "; ".join(changed) or "-"


# -- account status ----------------------------------------------------------------


@accounts.command("suspend")
@click.argument("account_id", type=int)
@_fail_cleanly
def accounts_suspend(account_id: int) -> None:
    """Suspend an account: every one of its keys fails with 401 within a second."""
    with _keyguard() as runtime:
        runtime.service.set_account_status(account_id, AccountStatus.SUSPENDED)
    click.echo(f"Suspended account {account_id}.")


@accounts.command("resume")
@click.argument("account_id", type=int)
@_fail_cleanly
def accounts_resume(account_id: int) -> None:
    """Resume a suspended account: its keys work again."""
    with _keyguard() as runtime:
        runtime.service.set_account_status(account_id, AccountStatus.ACTIVE)
    click.echo(f"Resumed account {account_id}.")


# -- import --------------------------------------------------------------------


@main.command("import")
@_account_option
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option(
    "--format",
    "form",
    type=click.Choice(FORMATS),
    help="The file's format (default: by its extension, .jsonl or .csv).",
)
@click.option("--strict", is_flag=True, help="Stop at the first bad line, before its batch.")
@_batch_size_option(DEFAULT_BATCH, "Keys written per transaction.")
@_fail_cleanly
def import_keys(
    account_id: int, file: Path, form: str | None, strict: bool, batch_size: int
) -> None:
    """Import keys from another system into an account, from JSON Lines or CSV.

    Each line holds a key's value (`value`) or the SHA-256 digest another system
    kept (`sha256`), with any of a Wavix key object's fields. Keys already in the
    database are skipped, so running it again completes an interrupted import.
    A bad line is reported by its number and skipped (--strict: the import stops
    there); the exit status is then 1. Progress goes to stderr.
    """
    form = file_format(file, form)
    with _keyguard() as runtime:
        runtime.service.get_account(account_id)
        importer = Importer(
            runtime.store,
            runtime.vault,
            runtime.service.groups,
            account_id,
            batch=batch_size,
            strict=strict,
        )
        started = time.perf_counter()
        with _import_progress(count_lines(file)) as progress:
            tally = importer.run(read_records(file, form, runtime.service.groups), progress)
            progress(tally)
        seconds = time.perf_counter() - started
    for refusal in tally.bad:
        click.echo(f"line {refusal.line}: {refusal.reason}", err=True)
    for line in tally.elsewhere:
        click.echo(f"line {line}: a key of another account; skipped", err=True)
    stopped = f"; stopped at line {tally.bad[-1].line} (--strict)" if tally.stopped else ""
    read = tally.imported + tally.skipped + len(tally.elsewhere)
    click.echo(
        f"Imported {tally.imported} keys; skipped {tally.skipped} already there and "
        f"{len(tally.elsewhere)} of other accounts; {len(tally.bad)} bad lines{stopped}. "
        f"{read} keys in {seconds:.2f} s ({read / max(seconds, 1e-9):,.0f} keys/s)."
    )
    if tally.bad:
        sys.exit(1)


@contextmanager
def _import_progress(total: int) -> Iterator[Callable[[Tally], None]]:
    """Progress on stderr: a bar with rate and ETA on a terminal, else a line a second."""
    if not sys.stderr.isatty():
        started = last = time.monotonic()
        shown = -1

        def line(tally: Tally) -> None:
            nonlocal last, shown
            now = time.monotonic()
            if tally.lines == shown or (now - last < 1 and tally.lines < total):
                return
            last, shown = now, tally.lines
            rate = tally.lines / max(now - started, 1e-9)
            left = (total - tally.lines) / rate if rate else 0
            click.echo(
                f"{tally.lines}/{total} lines, {tally.imported} imported, "
                f"{rate:,.0f} lines/s, {left:.0f} s left",
                err=True,
            )

        yield line
        return
    columns = (
        TextColumn("Importing"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[rate]} keys/s"),
        TimeRemainingColumn(),
    )
    with Progress(*columns, console=Console(stderr=True), transient=False) as bar:
        task = bar.add_task("import", total=total, rate="-")

        def advance(tally: Tally) -> None:
            speed = bar.tasks[0].speed
            rate = "-" if speed is None else f"{speed:,.0f}"
            bar.update(task, completed=tally.lines, rate=rate)

        yield advance
