"""Prometheus metrics of one keyguard process, served at ``/metrics``.

The hot path only bumps plain counters and, for one decision in 64, reads the
clock; everything else is read from the running parts when Prometheus scrapes.
With ``--workers N`` each worker answers for itself (``pid`` label).
"""

import os
from collections.abc import Iterable
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    from keyguard.runtime import Keyguard

OUTCOMES = {200: "allowed", 401: "unauthorized", 403: "forbidden", 429: "throttled"}


class Metrics:
    """The registry, the two histograms, and a collector for everything else."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.decision_seconds = Histogram(
            "keyguard_decision_seconds",
            "Time to decide one request (sampled: one decision in 64).",
            buckets=(1e-6, 2e-6, 3e-6, 5e-6, 1e-5, 2e-5, 5e-5, 1e-4, 1e-3),
            registry=self.registry,
        )
        self.propagation_seconds = Histogram(
            "keyguard_propagation_seconds",
            "Time from a key change's commit until this process enforces it.",
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0),
            registry=self.registry,
        )

    def watch(self, keyguard: "Keyguard") -> None:
        self.registry.register(_RuntimeCollector(keyguard))

    def render(self) -> bytes:
        return generate_latest(self.registry)


class _RuntimeCollector(Collector):
    def __init__(self, keyguard: "Keyguard") -> None:
        self._keyguard = keyguard
        self._pid = str(os.getpid())

    def collect(self) -> Iterable[Metric]:
        keyguard, pid = self._keyguard, self._pid
        decisions = CounterMetricFamily(
            "keyguard_decisions", "Decisions by outcome.", labels=["outcome", "pid"]
        )
        for status, count in keyguard.decider.outcomes.items():
            decisions.add_metric([OUTCOMES[status], pid], count)
        yield decisions
        cache = keyguard.cache
        yield _gauge("keyguard_snapshot_keys", "Live keys in the snapshot.", len(cache), pid)
        yield _gauge(
            "keyguard_snapshot_age_seconds",
            "Seconds since the snapshot last caught up with the database.",
            cache.age if cache.age is not None else float("nan"),
            pid,
        )
        yield _gauge(
            "keyguard_snapshot_revision", "Newest change in the snapshot.", cache.revision, pid
        )
        yield _gauge(
            "keyguard_usage_backlog",
            "Keys whose last_used_at awaits the next flush.",
            keyguard.usage.backlog,
            pid,
        )
        yield _gauge(
            "keyguard_database_up",
            "1 if the last snapshot refresh reached the database.",
            1.0 if cache.store_reachable else 0.0,
            pid,
        )


def _gauge(name: str, documentation: str, value: float, pid: str) -> GaugeMetricFamily:
    gauge = GaugeMetricFamily(name, documentation, labels=["pid"])
    gauge.add_metric([pid], value)
    return gauge
