"""Lifecycle webhooks: every announced audit record, signed and posted to one endpoint.

The audit trail is the outbox: a change and its record commit together, so an
event exists exactly when its change does. Delivery walks the trail in commit
order from a cursor kept in the database, and moves the cursor only once the
receiver has answered 2xx: at least once, in order, across restarts and crashes.

Of all the processes that share a database, the one holding the delivery lease
delivers; the others stand by, and one of them takes over when the holder stops
(at once) or dies (when its lease lapses, within :data:`LEASE`).
"""

import json
import logging
import os
import secrets
import socket
import threading
from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
from standardwebhooks import Webhook

from keyguard import __version__
from keyguard.domain.events import (
    EVENT_ACTIONS,
    EVENT_TYPES,
    Delivery,
    Sweep,
    event_id,
    given_up,
    retry_delay,
)
from keyguard.domain.records import AuditRecord
from keyguard.periodic import Periodic
from keyguard.storage import Store
from keyguard.wire import audit_object

log = logging.getLogger("keyguard.webhooks")

# A dead holder's successor waits this long. A live holder renews it every
# RENEW_INTERVAL from a thread of its own, so a slow attempt does not lose it.
LEASE = timedelta(seconds=5)
RENEW_INTERVAL = LEASE.total_seconds() / 3
TIMEOUT = httpx.Timeout(5.0, connect=3.0)
POLL_INTERVAL = 0.5  # seconds between looks for new events: their delivery latency
BATCH = 100  # events read at once
BACKLOG_INTERVAL = 5.0  # seconds between counts of undelivered events, for /metrics
SWEEP_INTERVAL = timedelta(seconds=1)  # between sweeps for expiry notices: their latency


def event_document(record: AuditRecord) -> dict[str, Any]:
    """The JSON body of the event ``record`` announces: the audit record as the
    audit log shows it, which holds settings and never a secret."""
    data = audit_object(record)
    return {"type": EVENT_TYPES[record.action], "timestamp": data["occurred_at"], "data": data}


class WebhookEndpoint:
    """The receiver: each event signed per Standard Webhooks and posted as JSON."""

    def __init__(self, url: str, secret: str) -> None:
        self.url = url
        # What logs name: the host alone, as a path or query may hold a token.
        self.host = httpx.URL(url).host
        self._signer = Webhook(secret)
        self._client = httpx.Client(
            timeout=TIMEOUT,
            follow_redirects=False,  # a redirect is an answer other than 2xx: a failure
            headers={"User-Agent": f"keyguard/{__version__}"},
        )

    def post(self, record: AuditRecord) -> str | None:
        """Deliver one event; ``None`` if the receiver took it, else why not."""
        body = json.dumps(event_document(record), separators=(",", ":"))
        message_id = event_id(record.id)
        now = datetime.now(UTC)  # the attempt's own time: receivers refuse stale ones
        headers = {
            "Content-Type": "application/json",
            "webhook-id": message_id,
            "webhook-timestamp": str(int(now.timestamp())),
            "webhook-signature": self._signer.sign(message_id, now, body),
        }
        try:
            answer = self._client.post(self.url, content=body.encode(), headers=headers)
        except httpx.HTTPError as error:
            return type(error).__name__
        return None if answer.is_success else f"HTTP {answer.status_code}"

    def close(self) -> None:
        self._client.close()


def _owner() -> str:
    """This process's name in the lease: unique, and telling an operator where it runs."""
    return f"{socket.gethostname()[:40]}:{os.getpid()}:{secrets.token_hex(4)}"


class WebhookDeliverer:
    """Delivers events from the store to the endpoint while this process holds the lease.

    The holder also notes keys' expiries (``key.expiring`` ``expiry_warning`` ahead,
    ``key.expire`` when it comes) in the audit trail, whence they are delivered.

    Figures for ``/metrics``: ``delivered``, ``failures`` (failed attempts) and
    ``dropped`` (events given up) in this process, and ``backlog``, the events
    not yet delivered by any process.
    """

    def __init__(
        self,
        store: Store,
        endpoint: WebhookEndpoint,
        expiry_warning: timedelta,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self._store = store
        self._endpoint = endpoint
        self._expiry_warning = expiry_warning
        self._clock = clock
        self._swept: Sweep | None = None
        self.owner = _owner()
        self.delivered = self.failures = self.dropped = self.backlog = 0
        self._counted_at: datetime | None = None
        self._delivery: Delivery | None = None  # while this process holds the lease
        self._held_until = datetime.min.replace(tzinfo=UTC)
        self._stopping = threading.Event()
        self._task = Periodic("webhook delivery", self.step, POLL_INTERVAL)
        self._heartbeat = Periodic("webhook lease", self._renew, RENEW_INTERVAL)

    def start(self) -> None:
        # Claimed at once: the very first claim fixes where delivery starts, and
        # changes made from the moment this process serves must be announced.
        self._claim(self._clock())
        self._task.start()
        self._heartbeat.start()

    def stop(self) -> None:
        """Finish the attempt under way, then hand the lease over at once."""
        self._stopping.set()
        self._task.stop()
        self._heartbeat.stop()
        try:
            self._store.release_delivery(self.owner)
        finally:
            self._endpoint.close()

    def step(self) -> None:
        """Deliver what is pending, in order, until an attempt fails or none is left."""
        now = self._clock()
        self._count_backlog(now)
        delivery = self._held(now)
        if delivery is None:
            return
        if self._swept is None or now - self._swept.at >= SWEEP_INTERVAL:
            self._swept = self._store.note_expiries(now, self._expiry_warning, self._swept)
        for record in self._store.pending_events(delivery.delivered_through, EVENT_ACTIONS, BATCH):
            if self._stopping.is_set():
                return
            # Checked before every attempt: a holder that lost the lease (it stalled
            # past it) must not start another.
            delivery = self._held(now)
            if delivery is None or delivery.waiting(record.id, now):
                return
            if record.id <= delivery.delivered_through:
                continue  # delivered meanwhile by a process that held the lease before
            if not self._attempt(record, delivery):
                return
            self._counted_at = None  # the backlog moved: count it again next time
            now = self._clock()

    def _held(self, now: datetime) -> Delivery | None:
        """The delivery state if this process holds the lease; claimed anew when the
        lease is half gone (the heartbeat keeps it fresher while it runs)."""
        if self._delivery is not None and now < self._held_until - LEASE / 2:
            return self._delivery
        return self._claim(now)

    def _renew(self) -> None:
        """Keep the lease while this process holds it, through long attempts too."""
        if self._delivery is not None:
            now = self._clock()
            if self._store.claim_delivery(self.owner, now, LEASE) is None:
                self._delivery = None  # lost (this process stalled): the next step sees it
            else:
                self._held_until = now + LEASE

    def _claim(self, now: datetime) -> Delivery | None:
        self._delivery = self._store.claim_delivery(self.owner, now, LEASE)
        self._held_until = now + LEASE
        return self._delivery

    def _attempt(self, record: AuditRecord, delivery: Delivery) -> bool:
        """Post one event and record the outcome; whether delivery may go on."""
        failure = self._endpoint.post(record)
        now = self._clock()
        name = f"{event_id(record.id)} ({EVENT_TYPES[record.action]})"
        failed_before = delivery.attempts_at(record.id)
        if failure is None:
            self._advance(record.id)
            self.delivered += 1
            if failed_before:
                log.warning("webhook %s delivered after %d failed attempts", name, failed_before)
            return True
        self.failures += 1
        attempts = failed_before + 1
        if given_up(record.occurred_at, now):
            self._advance(record.id)
            self.dropped += 1
            log.error(
                "webhook %s dropped, failed attempts: %d (the last: %s); the event is over "
                "24 hours old, and delivery goes on with the next one",
                name,
                attempts,
                failure,
            )
            return True
        retry_at = now + timedelta(seconds=retry_delay(attempts))
        self._store.delay_delivery(self.owner, record.id, attempts, retry_at)
        self._delivery = replace(
            delivery, retry_event=record.id, attempts=attempts, retry_at=retry_at
        )
        if attempts == 1:
            log.warning(
                "webhook %s to %s failed (%s); retrying with backoff, later events wait",
                name,
                self._endpoint.host,
                failure,
            )
        return False

    def _advance(self, through: int) -> None:
        self._store.advance_delivery(through)
        self._delivery = Delivery(through)

    def _count_backlog(self, now: datetime) -> None:
        if self._counted_at is None or (now - self._counted_at).total_seconds() >= BACKLOG_INTERVAL:
            self.backlog = self._store.delivery_backlog(EVENT_ACTIONS)
            self._counted_at = now
