"""The audit trail's vocabulary: the actions it records, and the bounds of a search."""

from datetime import UTC, datetime
from typing import get_args

from keyguard.domain.records import AccountStatus, Action
from keyguard.errors import InvalidInput

ACTIONS: tuple[str, ...] = get_args(Action)
# What a change of an account's status is recorded as.
STATUS_ACTIONS: dict[AccountStatus, Action] = {
    AccountStatus.ACTIVE: "account.resume",
    AccountStatus.SUSPENDED: "account.suspend",
    AccountStatus.DELETED: "account.delete",
}


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
