"""The audit trail's vocabulary: the actions it records, and the bounds of a search."""

from datetime import UTC, datetime
from typing import Literal, get_args

from keyguard.errors import InvalidInput

Action = Literal[
    "account.create", "account.suspend", "account.resume", "account.delete",
    "key.create", "key.update", "key.activate", "key.deactivate", "key.delete",
]  # fmt: skip
ACTIONS: tuple[str, ...] = get_args(Action)


def utc_bound(moment: datetime | None, name: str) -> datetime | None:
    """A search bound in UTC; one without a zone is read as UTC, like every keyguard time.

    A time whose UTC instant falls outside years 1-9999 (``9999-12-31T23:00:00-05:00``)
    has no representation in Python or in a database column, so it is refused as
    the parameter ``name``.
    """
    if moment is None:
        return None
    if moment.tzinfo is None:
        return moment.replace(tzinfo=UTC)
    try:
        return moment.astimezone(UTC)
    except OverflowError:
        raise InvalidInput.parameter(name) from None
