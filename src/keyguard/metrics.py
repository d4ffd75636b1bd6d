"""Prometheus metrics of a keyguard server, served at ``/metrics``.

The hot path only bumps plain counters and, for one decision in 64, reads the
clock; :meth:`Metrics.export` copies the running parts' figures into the metrics.

One scrape covers the whole server. With one process, each scrape exports and
renders that process. With ``keyguard serve --workers N``, ``serve`` gives the
workers a fresh folder in ``PROMETHEUS_MULTIPROC_DIR`` (prometheus_client's
multiprocess mode): each worker exports into its files every second and
whenever it is scraped, and whichever worker takes a scrape answers for all of
them. Decisions and histograms are totals over every worker that ran; gauges
are per live worker, labelled ``pid``.
"""

import os
import threading
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import Metric
from prometheus_client.multiprocess import MultiProcessCollector, mark_process_dead
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    from keyguard.cache import Snapshot
    from keyguard.decide import Decider
    from keyguard.replica import ReplicaLag
    from keyguard.usage import UsageRecorder
    from keyguard.webhooks import WebhookDeliverer

MULTIPROCESS_DIR = "PROMETHEUS_MULTIPROC_DIR"
EXPORT_INTERVAL = 1.0  # seconds: how stale another worker's figures may be in a scrape
OUTCOMES = {200: "allowed", 401: "unauthorized", 403: "forbidden", 429: "throttled"}


class Metrics:
    """This process's metrics, and the scrape that reports the server's."""

    def __init__(self) -> None:
        # Set by ``serve`` before the workers start, and read by prometheus_client
        # when it is first imported: both agree on whether metrics live in files.
        folder = os.environ.get(MULTIPROCESS_DIR) or None
        self.shared_dir = Path(folder) if folder is not None else None
        self.pid = os.getpid()
        self._registry = CollectorRegistry()
        self._lock = threading.Lock()
        self._watched: tuple[Decider, Snapshot, UsageRecorder] | None = None
        self._exported: dict[int, int] = {}
        self._webhooks: _WebhookMetrics | None = None
        self._replica: _ReplicaMetrics | None = None
        self.decision_seconds = Histogram(
            "keyguard_decision_seconds",
            "Time to decide one request (sampled: one decision in 64).",
            buckets=(1e-6, 2e-6, 3e-6, 5e-6, 1e-5, 2e-5, 5e-5, 1e-4, 1e-3),
            registry=self._registry,
        )
        self.propagation_seconds = Histogram(
            "keyguard_propagation_seconds",
            "Time from a key change's commit until this process enforces it.",
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0),
            registry=self._registry,
        )
        self._decisions = Counter(
            "keyguard_decisions", "Decisions by outcome.", ["outcome"], registry=self._registry
        )
        self._rate_limited = Counter(
            "keyguard_rate_limited",
            "Requests refused because their key was over its rate limit (all keys together).",
            registry=self._registry,
        )
        self._credits_refused = Counter(
            "keyguard_credits_refused",
            "Requests refused because their key had no credits left (all keys together).",
            registry=self._registry,
        )
        self._snapshot_reads = Counter(
            "keyguard_snapshot_reads",
            "Store reads of keys a bounded snapshot did not hold (KEYGUARD_SNAPSHOT_MAX_KEYS).",
            registry=self._registry,
        )
        self._snapshot_evictions = Counter(
            "keyguard_snapshot_evictions",
            "Keys a bounded snapshot let go to hold others.",
            registry=self._registry,
        )
        self._snapshot_keys = self._gauge(
            "keyguard_snapshot_keys", "Live keys in the snapshot (held, when it is bounded)."
        )
        self._snapshot_age = self._gauge(
            "keyguard_snapshot_age_seconds",
            "Seconds since the snapshot last caught up with the database.",
        )
        self._snapshot_revision = self._gauge(
            "keyguard_snapshot_revision", "Newest change in the snapshot."
        )
        self._usage_backlog = self._gauge(
            "keyguard_usage_backlog", "Keys whose last_used_at awaits the next flush."
        )
        self._database_up = self._gauge(
            "keyguard_database_up", "1 if the last snapshot refresh reached the database."
        )
        self._scrape = self._registry
        if self.shared_dir is not None:
            self._scrape = CollectorRegistry()
            self._scrape.register(_Workers(self.shared_dir, str(self.pid)))

    @property
    def shared(self) -> bool:
        """Whether this process is one of several workers that report together."""
        return self.shared_dir is not None

    def _gauge(self, name: str, documentation: str) -> Gauge:
        """A gauge of this process, labelled with its pid."""
        if self.shared_dir is not None:
            # The multiprocess collector labels each worker's series with its pid,
            # and "live" drops a worker's series once the worker is gone.
            return Gauge(name, documentation, registry=self._registry, multiprocess_mode="liveall")
        return Gauge(name, documentation, ["pid"], registry=self._registry).labels(str(self.pid))

    def watch(self, decider: "Decider", cache: "Snapshot", usage: "UsageRecorder") -> None:
        """Report on the parts of a running keyguard that the figures come from."""
        self._watched = (decider, cache, usage)

    def watch_webhooks(self, deliverer: "WebhookDeliverer") -> None:
        """Report on lifecycle-webhook delivery too (only when webhooks are on)."""
        self._webhooks = _WebhookMetrics(deliverer, self._registry, shared=self.shared)

    def watch_replica(self, replica: "ReplicaLag") -> None:
        """Report on following a read replica too (only with KEYGUARD_DATABASE_READ_URL)."""
        self._replica = _ReplicaMetrics(replica, self._gauge)

    def export(self) -> None:
        """Copy the running parts' figures into the metrics (into the files, when shared)."""
        if self._watched is None:
            return
        decider, cache, usage = self._watched
        with self._lock:
            if self._webhooks is not None:
                self._webhooks.export()
            for status, count in decider.outcomes.items():
                new = count - self._exported.get(status, 0)
                if new > 0:
                    self._decisions.labels(OUTCOMES[status]).inc(new)
                    self._exported[status] = count
            refused = decider.meter.refused - self._exported.get(0, 0)
            if refused > 0:  # key 0: no status; the meter's count
                self._rate_limited.inc(refused)
                self._exported[0] = decider.meter.refused
            refused = decider.credits.refused - self._exported.get(-1, 0)
            if refused > 0:  # key -1: no status; the credit leases' count
                self._credits_refused.inc(refused)
                self._exported[-1] = decider.credits.refused
            for counter, mark, count in (
                (self._snapshot_reads, -2, cache.reads),
                (self._snapshot_evictions, -3, cache.evictions),
            ):  # keys -2 and -3: the snapshot's counts
                if count > self._exported.get(mark, 0):
                    counter.inc(count - self._exported.get(mark, 0))
                    self._exported[mark] = count
            self._snapshot_keys.set(len(cache))
            self._snapshot_age.set(cache.age if cache.age is not None else float("nan"))
            self._snapshot_revision.set(cache.revision)
            self._usage_backlog.set(usage.backlog)
            if self._replica is None:
                self._database_up.set(1.0 if cache.store_reachable else 0.0)
            else:  # the feed reads the replica: the primary answers the lag's samples
                self._database_up.set(1.0 if self._replica.lag.primary_reachable else 0.0)
                self._replica.export(cache)

    def render(self) -> bytes:
        """The exposition of a scrape: this process's, or every worker's when shared."""
        self.export()
        if self.shared_dir is not None:
            _forget_dead_workers(self.shared_dir)
        return generate_latest(self._scrape)


class _WebhookMetrics:
    """Delivery figures: counters of this process, and the backlog of the whole database."""

    def __init__(
        self, deliverer: "WebhookDeliverer", registry: CollectorRegistry, *, shared: bool
    ) -> None:
        self._deliverer = deliverer
        self._exported = {"delivered": 0, "failures": 0, "dropped": 0}
        # Every worker counts the same backlog in the database: one series, not one
        # per worker ("livemax" when workers report together).
        self._backlog = Gauge(
            "keyguard_webhook_backlog",
            "Lifecycle events committed but not yet delivered to the webhook endpoint.",
            registry=registry,
            multiprocess_mode="livemax" if shared else "all",
        )
        self._counters = {
            "delivered": Counter(
                "keyguard_webhook_deliveries",
                "Lifecycle events the webhook endpoint accepted (2xx).",
                registry=registry,
            ),
            "failures": Counter(
                "keyguard_webhook_failures",
                "Failed delivery attempts (an error or an answer other than 2xx); each is retried.",
                registry=registry,
            ),
            "dropped": Counter(
                "keyguard_webhook_dropped",
                "Events given up: still failing when 24 hours old.",
                registry=registry,
            ),
        }

    def export(self) -> None:
        self._backlog.set(self._deliverer.backlog)
        for name, counter in self._counters.items():
            count = getattr(self._deliverer, name)
            if count > self._exported[name]:
                counter.inc(count - self._exported[name])
                self._exported[name] = count


class _ReplicaMetrics:
    """How far the snapshot, fed by a read replica, is behind the primary."""

    def __init__(self, lag: "ReplicaLag", gauge: Callable[[str, str], Gauge]) -> None:
        self.lag = lag
        self._up = gauge(
            "keyguard_replica_up", "1 if the last snapshot refresh reached the read replica."
        )
        self._seconds = gauge(
            "keyguard_replica_lag_seconds",
            "Seconds since the primary first had a change the snapshot still lacks (0: none); "
            "a revocation is enforced within it.",
        )
        self._behind = gauge(
            "keyguard_replica_revisions_behind",
            "Revisions the primary has that the snapshot has not read from the replica yet.",
        )

    def export(self, cache: "Snapshot") -> None:
        self._up.set(1.0 if cache.store_reachable else 0.0)
        self._seconds.set(self.lag.seconds)
        self._behind.set(self.lag.behind)


class _Workers(Collector):
    """Every worker's metrics from the shared folder; the scraped worker's gauges first."""

    def __init__(self, folder: Path, pid: str) -> None:
        self._files = MultiProcessCollector(None, path=str(folder))  # type: ignore[no-untyped-call]
        self._pid = pid

    def collect(self) -> Iterable[Metric]:
        for metric in self._files.collect():  # type: ignore[no-untyped-call]
            metric.samples.sort(key=lambda sample: sample.labels.get("pid") != self._pid)
            yield metric


def _forget_dead_workers(folder: Path) -> None:
    """Drop the gauges of workers that are gone (crashed, or replaced by the server).

    Their counts stay: a total must never go down while the server runs.
    """
    for path in folder.glob("gauge_live*_*.db"):
        pid = int(path.stem.rpartition("_")[2])
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            mark_process_dead(pid, str(folder))  # type: ignore[no-untyped-call]
        except PermissionError:  # alive, as another user
            pass
