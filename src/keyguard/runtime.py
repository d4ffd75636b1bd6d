"""One keyguard process, composed in one place.

:class:`Keyguard` wires the store, the vault, the key snapshot, the usage
recorder, the decider and the management service from a :class:`Settings`.
The CLI and the app factory build one; nothing else constructs these parts.
"""

import logging
import secrets
import time
from datetime import timedelta
from importlib.resources import files
from pathlib import Path
from typing import TYPE_CHECKING

from sqlalchemy.engine import make_url

from keyguard.cache import ChangeFollower, KeyCache, Snapshot
from keyguard.config import Settings
from keyguard.credits import CreditLeases
from keyguard.decide import Decider
from keyguard.domain.counts import Granularity
from keyguard.domain.network import Network, parse_networks
from keyguard.domain.routes import Route, RouteMap, UnknownRoutes, parse_route_map
from keyguard.errors import ConfigurationError
from keyguard.limits import WindowLimiter
from keyguard.metering import SYNC_INTERVAL, Meter
from keyguard.metrics import EXPORT_INTERVAL, Metrics
from keyguard.periodic import Periodic
from keyguard.replica import ReplicaLag
from keyguard.scanning_keys import ScanningKeys
from keyguard.service import KeyService
from keyguard.storage import Store, open_store
from keyguard.storage.counters import open_counters
from keyguard.usage import UsageRecorder
from keyguard.vault import Vault, load_or_create_secret, read_secret, verify_secret, wrong_secret
from keyguard.workingset import WorkingSet

if TYPE_CHECKING:
    from keyguard.webhooks import WebhookDeliverer

log = logging.getLogger("keyguard.runtime")

# keyguard's own management API; a key must have full access to use it.
PRUNE_INTERVAL = 3600.0  # seconds between deletions of counts past their retention
REPLICA_POOL_SIZE = 2  # the change feed's polls, and the start-up checks
REPLICA_SCHEMA_WAIT = 10.0  # seconds a replica may take to replay the migration `serve` ran

MANAGEMENT_ROUTES = (
    Route("GET", "/v1/api-keys", None),
    Route("POST", "/v1/api-keys", None),
    Route("GET", "/v1/api-keys/{id}", None),
    Route("PATCH", "/v1/api-keys/{id}", None),
    Route("DELETE", "/v1/api-keys/{id}", None),
    Route("POST", "/v1/api-keys/{id}/roll", None),
    Route("PATCH", "/v1/api-keys/{id}/activate", None),
    Route("PATCH", "/v1/api-keys/{id}/deactivate", None),
    Route("GET", "/v1/api-keys/{id}/usage", None),
    Route("GET", "/v1/usage", None),
    Route("GET", "/v1/audit-log", None),
)


def wavix_route_map(unknown: UnknownRoutes = UnknownRoutes.FULL_ACCESS_ONLY) -> RouteMap:
    """Wavix's route map: every route of its API with the scope it needs."""
    text = files("keyguard.domain").joinpath("wavix_routes.tsv").read_text("utf-8")
    return parse_route_map(text.splitlines(), "wavix_routes.tsv", unknown)


def load_route_map(path: Path | None, unknown: UnknownRoutes) -> RouteMap:
    """The deployment's route map (Wavix's when ``path`` is None), plus keyguard's own routes."""
    if path is None:
        route_map = wavix_route_map(unknown)
    else:
        try:
            text = path.read_text("utf-8")
        except (OSError, UnicodeDecodeError) as error:
            raise ConfigurationError(f"Cannot read the route map {path}: {error}") from None
        try:
            route_map = parse_route_map(text.splitlines(), str(path), unknown)
        except ValueError as error:
            raise ConfigurationError(f"Invalid route map: {error}") from None
    return route_map.with_routes(MANAGEMENT_ROUTES)


def warn_about_missing_groups(route_map: RouteMap, cache: Snapshot, source: Path | None) -> None:
    """Log once if keys grant scope groups that ``route_map`` lacks.

    Such grants allow nothing: the usual cause is a new ``KEYGUARD_ROUTES`` (or
    none, back to Wavix's groups) on a database whose keys were made for another.
    """
    known = set(route_map.groups)
    missing = [(set(profile.levels) - known, profile.holders) for profile in cache.profiles()]
    holders = [(groups, count) for groups, count in missing if groups]
    if not holders:
        return
    names = ", ".join(sorted(set().union(*(groups for groups, _ in holders))))
    where = f"the route map {source}" if source is not None else "Wavix's route map"
    log.warning(
        "%d keys grant scope groups that %s does not have (%s): those grants allow nothing "
        "until the map declares the groups again",
        sum(count for _, count in holders),
        where,
        names,
    )


def _limiter(per_minute: int) -> WindowLimiter | None:
    return WindowLimiter(per_minute, 60.0) if per_minute > 0 else None


def in_memory(settings: Settings) -> bool:
    """Whether keys live in this process only (``memory://``)."""
    return settings.database_url.partition(":")[0] == "memory"


def server_secret(settings: Settings) -> bytes:
    if settings.secret_key is not None:
        return settings.secret_key.get_secret_value().encode()
    if in_memory(settings):
        # Nothing it protects outlives the process, so nothing is written for it.
        return secrets.token_urlsafe(48).encode()
    return load_or_create_secret(settings.resolved_secret_file())


def previous_server_secret(settings: Settings) -> bytes | None:
    """The secret being rotated away from, if one is configured (never generated)."""
    if settings.previous_secret_key is not None:
        return settings.previous_secret_key.get_secret_value().encode()
    if settings.previous_secret_file is not None:
        return read_secret(settings.previous_secret_file, "previous secret file")
    return None


def previous_secret_name(settings: Settings) -> str | None:
    """Where the previous secret comes from, as errors name it."""
    if settings.previous_secret_key is not None:
        return "KEYGUARD_PREVIOUS_SECRET_KEY"
    if settings.previous_secret_file is not None:
        return f"the previous secret file {settings.previous_secret_file}"
    return None


def not_set_up(database_url: str) -> str:
    """The sentence that stops a start on a database without keyguard's current schema."""
    shown = make_url(database_url).render_as_string(hide_password=True)
    if database_url.startswith("sqlite:///") and database_url != "sqlite:///":
        shown = f"{shown} ({Path(database_url.removeprefix('sqlite:///')).resolve()})"
    return (
        f"The database {shown} has no keyguard schema, or an older one. Give this process "
        "the keyguard service's own database and server secret (its KEYGUARD_DATABASE_URL, "
        "and KEYGUARD_SECRET_KEY or KEYGUARD_SECRET_FILE), and run `keyguard migrate` with them."
    )


def replica_not_set_up() -> str:
    """The sentence that stops a start on a read replica without keyguard's current schema."""
    return (
        "The read replica (KEYGUARD_DATABASE_READ_URL) has no keyguard schema, or an older "
        "one. It must be a streaming replica of KEYGUARD_DATABASE_URL's database that has "
        f"replayed `keyguard migrate` (waited {REPLICA_SCHEMA_WAIT:g} s): check that it "
        "follows that primary and that its replay is not paused."
    )


def webhook_deliverer(settings: Settings, store: Store) -> "WebhookDeliverer | None":
    """The lifecycle-webhook deliverer, if ``KEYGUARD_WEBHOOK_URL`` is set.

    Every process configured with it takes part; the delivery lease in the
    database keeps the delivering to one of them at a time.
    """
    if settings.webhook_url is None or settings.webhook_secret is None:
        return None
    from keyguard.webhooks import WebhookDeliverer, WebhookEndpoint

    endpoint = WebhookEndpoint(settings.webhook_url, settings.webhook_secret.get_secret_value())
    return WebhookDeliverer(store, endpoint, settings.expiry_warning)


class Keyguard:
    """The parts of a running keyguard, and their background tasks."""

    def __init__(self, settings: Settings, store: Store | None = None) -> None:
        self.settings = settings
        self.store = (
            store
            if store is not None
            else open_store(settings.database_url, settings.database_pool_size)
        )
        self._secret_generated = (
            settings.secret_key is None and not settings.resolved_secret_file().exists()
        )
        self.vault = Vault(server_secret(settings), previous_server_secret(settings))
        self.metrics = Metrics()
        # With a read replica only the snapshot's change feed reads there. Management
        # reads stay on the primary: a caller must see its own write at once (create
        # then list, PATCH then GET), which a replica cannot promise.
        self.feed = self.store
        if settings.database_read_url is not None:
            self.feed = open_store(
                settings.database_read_url, REPLICA_POOL_SIZE, "KEYGUARD_DATABASE_READ_URL"
            )
        observe_lag = self.metrics.propagation_seconds.observe
        self.cache: Snapshot = (
            KeyCache(self.feed, observe_lag)
            if settings.snapshot_max_keys is None
            else WorkingSet(self.feed, settings.snapshot_max_keys, observe_lag, reader=self.store)
        )
        self.replica = None if self.feed is self.store else ReplicaLag(self.store, self.cache)
        # Uses are whole seconds: a key is rewritten once its stored time is a full
        # interval old, so all processes together write it at most once per interval.
        settle = max(0.0, settings.usage_flush_interval - 1)
        self.usage = UsageRecorder(self.store, settle=settle)
        self.routes = load_route_map(settings.routes, settings.unknown_routes)
        self.trusted_proxies: tuple[Network, ...] = parse_networks(settings.trusted_proxies)
        self.client_ip_header = settings.client_ip_header
        # Failed authentications per client, by key or by operator token alike.
        self.auth_failures = _limiter(settings.auth_failures_per_minute)
        self.meter = Meter(open_counters(self.store, settings.redis_url, settings.redis_prefix))
        # On memory:// the store is this process's own: exact, leased on the hot path.
        inline = settings.database_url.startswith("memory:")
        self.credits = CreditLeases(self.store, self.cache, inline=inline)
        self.decider = Decider(
            self.vault,
            self.cache,
            self.routes,
            self.usage,
            observe_latency=self.metrics.decision_seconds.observe,
            failures=self.auth_failures,
            meter=self.meter,
            credits=self.credits,
        )
        self.management_writes = _limiter(settings.management_writes_per_minute)
        # GitHub's keys, when it may report leaked keys (POST /v1/secret-scanning/github).
        keys_file = settings.github_scanning_keys
        self.scanning_keys = None if keys_file is None else ScanningKeys(keys_file)
        self.service = KeyService(
            self.store,
            self.vault,
            self.cache,
            self.usage,
            groups=self.routes.groups,
            prefix=settings.key_prefix,
            display=settings.secret_display,
            retention={
                Granularity.MINUTE: timedelta(days=settings.minute_counts_days),
                Granularity.HOUR: timedelta(days=settings.hour_counts_days),
                Granularity.DAY: timedelta(days=settings.day_counts_days),
            },
            credits=self.credits,
        )
        self.metrics.watch(self.decider, self.cache, self.usage)
        if self.replica is not None:
            self.metrics.watch_replica(self.replica)
        self.webhooks = webhook_deliverer(settings, self.store)
        if self.webhooks is not None:
            self.metrics.watch_webhooks(self.webhooks)
        self._tasks: list[Periodic | ChangeFollower | WebhookDeliverer | CreditLeases] = [
            Periodic("snapshot refresh", self.cache.refresh, settings.refresh_interval),
            Periodic(
                "usage flush", self.usage.flush, settings.usage_flush_interval, run_on_stop=True
            ),
        ]
        self._tasks.append(Periodic("usage pruning", self.service.prune_usage, PRUNE_INTERVAL))
        if self.replica is not None:
            self._tasks.append(
                Periodic("replica lag", self.replica.sample, settings.refresh_interval)
            )
        if self.meter.shared:
            self._tasks.append(Periodic("rate-limit sync", self.meter.sync, SYNC_INTERVAL))
        self._tasks.append(self.credits)
        if self.metrics.shared:  # one of several workers: keep its figures current for all
            self._tasks.append(
                Periodic("metrics export", self.metrics.export, EXPORT_INTERVAL, run_on_stop=True)
            )

    def check_secret(self) -> None:
        """Refuse to go on with a server secret other than the database's."""
        settings = self.settings
        secret_file = None if settings.secret_key is not None else settings.resolved_secret_file()
        wrong = wrong_secret(secret_file, self._secret_generated, previous_secret_name(settings))
        verify_secret(self.vault, self.store, wrong)

    def start(self) -> None:
        """Check the schema and the secret, load the snapshot, then keep it and
        ``last_used_at`` current.

        It never sets up a database: an app that embeds keyguard uses the keyguard
        service's, which ``keyguard serve`` and ``keyguard migrate`` keep up to date.
        """
        if self.store.needs_migration():
            raise ConfigurationError(not_set_up(self.settings.database_url))
        self.check_secret()
        if self.replica is not None:
            self._await_replica_schema()
        self.cache.refresh()
        warn_about_missing_groups(self.routes, self.cache, self.settings.routes)
        # A standby cannot LISTEN: with a replica the periodic refresh alone follows it.
        signal = self.store.change_signal() if self.replica is None else None
        if signal is not None:
            self._tasks.append(ChangeFollower(self.cache, signal))
        if self.replica is not None:
            self.replica.sample()
        if self.webhooks is not None:
            self._tasks.append(self.webhooks)
        for task in self._tasks:
            task.start()

    def _await_replica_schema(self) -> None:
        """Wait for the replica to replay the migration ``serve`` may just have run."""
        deadline = time.monotonic() + REPLICA_SCHEMA_WAIT
        while self.feed.needs_migration():
            if time.monotonic() > deadline:
                raise ConfigurationError(replica_not_set_up())
            time.sleep(0.1)

    def stop(self) -> None:
        """Stop the tasks (flushing usage) and release the database."""
        for task in self._tasks:
            task.stop()
        self.meter.close()
        if self.feed is not self.store:
            self.feed.close()
        self.store.close()
