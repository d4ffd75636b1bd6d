"""Lifecycle events: what a webhook receiver is told, and when a failed delivery is retried.

Events are not stored apart: each is an audit record (written in the transaction
of the change it records) whose action a receiver is told about. The audit trail
is the outbox; delivery only remembers how far along it has got.
"""

import base64
import binascii
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Literal

from keyguard.domain.records import Action

# What each audit action is announced as; actions missing here are not delivered.
EVENT_TYPES: dict[Action, str] = {
    "key.create": "key.created",
    "key.update": "key.updated",
    "key.activate": "key.updated",
    "key.deactivate": "key.updated",
    "key.delete": "key.deleted",
    "key.roll": "key.rolled",
    "key.leak": "key.leaked",
    "key.expiring": "key.expiring",
    "key.expire": "key.expired",
    "key.import": "key.imported",
    "account.suspend": "account.suspended",
    "account.resume": "account.resumed",
    "account.delete": "account.deleted",
}
EVENT_ACTIONS: tuple[Action, ...] = tuple(EVENT_TYPES)

FIRST_RETRY = 1.0  # seconds after the first failure
RETRY_CAP = 30.0  # the longest wait, so a receiver back from an outage hears within 30 s
RETRY_WINDOW = timedelta(hours=24)  # an event still failing at this age is given up


SECRET_PREFIX = "whsec_"  # noqa: S105 - the format's prefix, not a secret
SECRET_BYTES = range(24, 65)  # the Standard Webhooks specification's bounds
WHSEC_COMMAND = (
    "python3 -c 'import base64, secrets; "
    'print("whsec_" + base64.b64encode(secrets.token_bytes(32)).decode())\''
)


def signing_secret(text: str) -> bytes:
    """The key of a Standard Webhooks secret, ``whsec_`` and the key in base64.

    Raises ``ValueError`` with a sentence that says what is wrong: the
    ``standardwebhooks`` package itself would skip characters that are not base64
    and sign with whatever key is left.
    """
    if not text.startswith(SECRET_PREFIX):
        raise ValueError(f"must start with {SECRET_PREFIX}")
    encoded = text.removeprefix(SECRET_PREFIX)
    try:
        key = base64.b64decode(encoded + "=" * (-len(encoded) % 4), validate=True)
    except binascii.Error:
        raise ValueError(f"must be {SECRET_PREFIX} followed by base64") from None
    if len(key) not in SECRET_BYTES:
        raise ValueError(
            f"must hold {SECRET_BYTES.start} to {SECRET_BYTES.stop - 1} bytes, not {len(key)}"
        )
    return key


def event_id(audit_id: int) -> str:
    """The ``webhook-id`` of the event an audit record announces: the same on every
    attempt and from every instance, so that a receiver can drop duplicates."""
    return f"evt_{audit_id}"


def retry_delay(attempts: int) -> float:
    """Seconds to wait after the ``attempts``-th failed attempt: 1, 2, 4 … up to 30."""
    return min(RETRY_CAP, FIRST_RETRY * 2.0 ** min(attempts - 1, 32))


def given_up(occurred_at: datetime, now: datetime) -> bool:
    """Whether an event whose delivery just failed is too old to try again."""
    return now - occurred_at >= RETRY_WINDOW


@dataclass(frozen=True, slots=True)
class Delivery:
    """How far delivery has got, as every instance sees it.

    ``delivered_through`` is the id of the last audit record delivered or passed
    over. While the next event keeps failing, ``retry_event`` names it, with the
    number of failed ``attempts`` and when the next one is due (``retry_at``), so
    that an instance taking over keeps the backoff where the last one left it.
    """

    delivered_through: int
    retry_event: int | None = None
    attempts: int = 0
    retry_at: datetime | None = None

    def waiting(self, next_event: int, now: datetime) -> bool:
        """Whether ``next_event`` failed and its next attempt is not due yet."""
        return self.retry_event == next_event and self.retry_at is not None and now < self.retry_at

    def attempts_at(self, next_event: int) -> int:
        """Failed attempts so far at delivering ``next_event``."""
        return self.attempts if self.retry_event == next_event else 0


ExpiryNotice = Literal["key.expiring", "key.expire"]


def expiry_notice(
    expires_at: datetime | None,
    now: datetime,
    warning: timedelta,
    warned_for: datetime | None,
    expired_for: datetime | None,
) -> ExpiryNotice | None:
    """The notice a key's expiry calls for now, if it was not given yet.

    ``warned_for`` and ``expired_for`` are the expiry times the key's earlier
    notices were given for: a key is warned once and noted expired once per
    expiry, and a new expiry calls for notices of its own. A key whose warning
    time went by unnoticed (no process delivered then) gets ``key.expire`` only.
    """
    if expires_at is None:
        return None
    if expires_at <= now:
        return None if expired_for == expires_at else "key.expire"
    if expires_at - warning <= now:
        return None if warned_for == expires_at else "key.expiring"
    return None


@dataclass(frozen=True, slots=True)
class Sweep:
    """Where a sweep for expiry notices got to: the time it looked at and the newest
    revision it saw. The next sweep looks only at keys whose notice came due since,
    and at keys changed since."""

    at: datetime
    revision: int
