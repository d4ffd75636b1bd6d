"""Usage credits: the rule, with no clock and no I/O.

A key with ``remaining`` credits may make that many more allowed requests; each
allowed request spends one, and at 0 the key is refused (429, "Usage limit
exceeded") until its credits are raised or refilled. ``None`` means unlimited.

A :class:`Refill` sets ``remaining`` to ``amount`` at the start of each UTC day
or month (not adding to what is left: Unkey's semantics). Periods are numbered
(:func:`period_of`) so that the store can tell, with one integer comparison,
whether the refill of the current period has been made.
"""

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Final, Literal

from keyguard.errors import InvalidInput

MAX_CREDITS: Final = 1_000_000_000_000
INTERVALS: Final = ("daily", "monthly")
# PATCH treats JSON null as "not given", so removing credits needs a value of its own.
NO_CREDITS: Final = "none"
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
NO_END: Final = float("inf")  # when a period without a refill ends: one object, for `is`


@dataclass(frozen=True, slots=True)
class Refill:
    """``remaining`` becomes ``amount`` at the start of every UTC day or month."""

    amount: int
    interval: str  # "daily" or "monthly"

    def document(self) -> dict[str, Any]:
        """As the wire, the audit trail and the CLI show it."""
        return {"amount": self.amount, "interval": self.interval}

    @classmethod
    def of(cls, amount: int | None, interval: str | None) -> "Refill | None":
        """From the store's two columns, or ``None`` for a key without a refill."""
        if amount is None or interval is None:
            return None
        return cls(int(amount), interval)


@dataclass(frozen=True, slots=True)
class CreditGrant:
    """Credits a store handed to a process: ``granted`` of them, under the key's
    ``epoch`` (moved by every change of its credits) and refill ``period``."""

    granted: int
    epoch: int
    period: int
    left: int  # what the store still holds after the grant


def parse_remaining(value: object) -> int | Literal["none"] | None:
    """A request's ``remaining``: ``None`` when not given, ``"none"`` for unlimited."""
    if value is None:
        return None
    if value == NO_CREDITS:
        return NO_CREDITS
    if not _is_integer(value):
        raise InvalidInput.parameter("remaining")
    assert isinstance(value, int)
    if not 0 <= value <= MAX_CREDITS:
        raise InvalidInput(f"Remaining must be between 0 and {MAX_CREDITS} credits", 422)
    return value


def parse_refill(value: object) -> Refill | Literal["none"] | None:
    """A request's ``refill``: ``None`` when not given, ``"none"`` to remove one."""
    if value is None:
        return None
    if value == NO_CREDITS:
        return NO_CREDITS
    if not isinstance(value, dict) or set(value) != {"amount", "interval"}:
        raise InvalidInput.parameter("refill")
    amount, interval = value["amount"], value["interval"]
    if not _is_integer(amount) or not isinstance(interval, str):
        raise InvalidInput.parameter("refill")
    if not 1 <= amount <= MAX_CREDITS:
        raise InvalidInput(f"Refill amount must be between 1 and {MAX_CREDITS} credits", 422)
    if interval not in INTERVALS:
        raise InvalidInput('Refill interval must be "daily" or "monthly"', 422)
    return Refill(amount, interval)


def _is_integer(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def period_of(interval: str | None, now: datetime) -> int:
    """The number of the UTC day or month ``now`` falls in; 0 without a refill."""
    if interval == "daily":
        return (now - _EPOCH).days
    if interval == "monthly":
        return now.year * 12 + now.month - 1
    return 0


def period_end(interval: str | None, period: int) -> float:
    """When period number ``period`` ends, in POSIX seconds; infinity without a refill."""
    if interval == "daily":
        return (_EPOCH + timedelta(days=period + 1)).timestamp()
    if interval == "monthly":
        year, month = divmod(period + 1, 12)
        return datetime(year, month + 1, 1, tzinfo=UTC).timestamp()
    return NO_END


def remaining_at(
    remaining: int | None, refill: Refill | None, period: int, now: datetime
) -> int | None:
    """What a key has left at ``now``, when the store last refilled it in ``period``:
    a refill due since then is counted as made (stores make it when next asked)."""
    if remaining is not None and refill is not None and period < period_of(refill.interval, now):
        return refill.amount
    return remaining
