"""How the console shows a key: status, masked value, scopes, times.

Plain functions of a :class:`~keyguard.service.KeyView` and the clock; the
templates call them and decide nothing themselves.
"""

from datetime import UTC, datetime

from keyguard.domain import keys
from keyguard.domain.credits import remaining_at
from keyguard.domain.scopes import Level, ScopeGroups
from keyguard.service import NOT_DISPLAYABLE, KeyView

SHOWN_SCOPES = 3
PER = {1: "second", 60: "minute", 3600: "hour", 86400: "day"}


def status(view: KeyView, now: datetime) -> str:
    """active, inactive, expired or leaked: what the gate does with the key now."""
    key = view.key
    if key.leaked_at is not None:
        return "leaked"
    expires = key.settings.expires_at
    if expires is not None and expires <= now:
        return "expired"
    return "active" if key.settings.active else "inactive"


def masked(view: KeyView) -> str:
    """The value as every page but the reveal-once panel shows it."""
    return keys.mask(view.value) if view.value else NOT_DISPLAYABLE


def restriction(view: KeyView) -> str:
    settings = view.key.settings
    if not settings.restricted:
        return "Any address"
    ips = settings.permitted_ips
    if not ips:
        return "No address"
    if len(ips) == 1:
        return ips[0]
    return f"{ips[0]} and {len(ips) - 1} more"


def rate_limit(view: KeyView) -> str:
    """``100 per minute``, ``5 per 90 seconds``, or ``None``."""
    limit = view.key.settings.ratelimit
    if limit is None:
        return "None"
    per = PER.get(limit.duration, f"{limit.duration:,} seconds")
    return f"{limit.limit:,} per {per}"


def remaining(view: KeyView, now: datetime | None = None) -> int | None:
    """The key's credits as its API object shows them: refilled if a period began."""
    key = view.key
    moment = now or datetime.now(UTC)
    return remaining_at(key.settings.remaining, key.settings.refill, key.credits_period, moment)


def credits(view: KeyView, now: datetime) -> str:
    """``480 left, 500 daily``, ``480 left``, or ``Unlimited``."""
    left = remaining(view, now)
    if left is None:
        return "Unlimited"
    refill = view.key.settings.refill
    shown = f"{left:,} left"
    return shown if refill is None else f"{shown}, {refill.amount:,} {refill.interval}"


def scopes(view: KeyView, groups: ScopeGroups) -> str:
    settings = view.key.settings
    if not settings.scopes_enabled:
        return "Full access"
    granted = [
        f"{name}: {level.label}"
        for name, level in groups.complete(settings.scopes).items()
        if level is not Level.NONE
    ]
    if not granted:
        return "No scopes"
    more = len(granted) - SHOWN_SCOPES
    shown = ", ".join(granted[:SHOWN_SCOPES])
    return f"{shown} and {more} more" if more > 0 else shown


def exact(moment: datetime | None) -> str:
    return "" if moment is None else moment.strftime("%Y-%m-%d %H:%M:%S UTC")


def iso(moment: datetime | None) -> str:
    return "" if moment is None else moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def relative(moment: datetime | None, now: datetime) -> str:
    """``3 minutes ago``, ``in 2 days``, or ``never``."""
    if moment is None:
        return "never"
    seconds = int((now - moment).total_seconds())
    future = seconds < 0
    seconds = abs(seconds)
    if seconds < 60:
        return "just now" if not future else "in under a minute"
    for unit, size in (("day", 86400), ("hour", 3600), ("minute", 60)):
        if seconds >= size:
            count = seconds // size
            text = f"{count} {unit}{'s' if count != 1 else ''}"
            return f"in {text}" if future else f"{text} ago"
    return "just now"  # unreachable: seconds >= 60 matched a unit
