"""Validation of the key fields a management request sends.

Both generations of Wavix field names are accepted (``is_active`` and
``active``, …); when a body gives both, the current name wins. JSON ``null``
means "not given", so an expiry is removed with ``"expires_at": "never"``, a
rate limit with ``"ratelimit": "none"`` and credits with ``"remaining": "none"``
(which removes their refill too). Every
refusal is an :class:`~keyguard.errors.InvalidInput` carrying Wavix's own message,
raised before anything is changed.
"""

import re
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Any, Final, Literal, TypeVar

from keyguard.domain.credits import NO_CREDITS, Refill, parse_refill, parse_remaining
from keyguard.domain.network import canonical_entry
from keyguard.domain.ratelimit import RateLimit, parse_rate_limit
from keyguard.domain.records import KeySettings, is_expired
from keyguard.domain.scopes import LEVEL_NAMES, Level, ScopeGroups
from keyguard.errors import Conflict, InvalidInput

T = TypeVar("T")

# As a JSON Schema pattern too, so that the OpenAPI document says what is accepted.
UNCLEAN_CHARACTERS = "\\x00-\\x1f\\x7f-\\x9f\\ud800-\\udfff"
CLEAN_TEXT_PATTERN = f"^[^{UNCLEAN_CHARACTERS}]*[^\\s{UNCLEAN_CHARACTERS}][^{UNCLEAN_CHARACTERS}]*$"
_UNCLEAN = re.compile(f"[{UNCLEAN_CHARACTERS}]")

MAX_LABEL_LENGTH = 255
MAX_PERMITTED_IPS = 100
DEFAULT_GRACE_SECONDS = 24 * 3600
MAX_GRACE_SECONDS = 7 * 24 * 3600
# PATCH treats JSON null as "not given", so removing an expiry needs a value of its own.
NEVER: Final = "never"
EXPIRES_AT_FORMAT = "UTC, as in 2027-01-31T00:00:00Z"

# current name -> the seed-era name Wavix documented first
FLAG_ALIASES: dict[str, str] = {
    "active": "is_active",
    "restricted": "is_restriction",
    "scopes_enabled": "is_scopes_enabled",
}


@dataclass(frozen=True, slots=True)
class KeyChanges:
    """The fields a request sets; ``None`` means "leave as it is"."""

    label: str | None = None
    active: bool | None = None
    restricted: bool | None = None
    permitted_ips: tuple[str, ...] | None = None
    scopes_enabled: bool | None = None
    scopes: dict[str, Level] = field(default_factory=dict)
    expires_at: datetime | Literal["never"] | None = None
    ratelimit: RateLimit | Literal["none"] | None = None
    remaining: int | Literal["none"] | None = None
    refill: Refill | Literal["none"] | None = None

    @property
    def credits(self) -> bool:
        """Whether the request sets the key's credits, which moves their epoch."""
        return self.remaining is not None or self.refill is not None


def parse_create(body: object, groups: ScopeGroups, now: datetime | None = None) -> KeyChanges:
    """The fields of ``POST /v1/api-keys``; unknown fields are ignored.

    ``now`` (default: the clock) is what ``expires_at`` must be later than.
    """
    data = _as_object(body)
    changes = _parse(data, groups, now)
    if changes.label is None:
        raise InvalidInput.parameter("label")
    if changes.restricted and changes.permitted_ips is None:
        raise InvalidInput.parameter("permitted_ips")
    return changes


def parse_update(body: object, groups: ScopeGroups, now: datetime | None = None) -> KeyChanges:
    """The fields of ``PATCH /v1/api-keys/{id}``; unknown fields are refused."""
    data = _as_object(body)
    known = {
        "label",
        "permitted_ips",
        "expires_at",
        "ratelimit",
        "remaining",
        "refill",
        *FLAG_ALIASES,
        *FLAG_ALIASES.values(),
        *groups,
    }
    for name in data:
        if name not in known:
            raise InvalidInput.parameter(_printable(name))
    return _parse(data, groups, now)


def parse_roll(body: object) -> int:
    """The grace period of ``POST /v1/api-keys/{id}/roll``, in seconds."""
    data = _as_object(body)
    for name in data:
        if name != "grace_seconds":
            raise InvalidInput.parameter(_printable(name))
    grace = data.get("grace_seconds")
    if grace is None:
        return DEFAULT_GRACE_SECONDS
    if not isinstance(grace, int) or isinstance(grace, bool):
        raise InvalidInput.parameter("grace_seconds")
    if not 0 <= grace <= MAX_GRACE_SECONDS:
        message = f"Grace seconds must be between 0 and {MAX_GRACE_SECONDS} (7 days)"
        raise InvalidInput(message, 422)
    return grace


def _as_object(body: object) -> Mapping[str, Any]:
    if not isinstance(body, dict):
        raise InvalidInput.parameter("body")
    return body


def _parse(data: Mapping[str, Any], groups: ScopeGroups, now: datetime | None) -> KeyChanges:
    return KeyChanges(
        label=parse_label(data.get("label")),
        active=_flag(data, "active"),
        restricted=_flag(data, "restricted"),
        permitted_ips=_permitted_ips(data.get("permitted_ips")),
        scopes_enabled=_flag(data, "scopes_enabled"),
        scopes={name: _level(name, data[name]) for name in groups if data.get(name) is not None},
        expires_at=_expires_at(data.get("expires_at"), now or datetime.now(UTC)),
        ratelimit=parse_rate_limit(data.get("ratelimit")),
        remaining=parse_remaining(data.get("remaining")),
        refill=parse_refill(data.get("refill")),
    )


def is_clean_text(value: object) -> bool:
    """A non-blank string without control characters or lone surrogates (which no
    database can store as UTF-8). Emoji, joiners and every script are welcome."""
    return isinstance(value, str) and bool(value.strip()) and not _UNCLEAN.search(value)


def parse_filter(name: str, value: str | None) -> str | None:
    """A text filter of a listing (``label``, an audit ``action``), as given.

    Text longer than any stored field, or with a character no stored field holds,
    is refused rather than matched against nothing: NUL above all, which
    PostgreSQL can neither store nor compare.
    """
    if value is not None and (len(value) > MAX_LABEL_LENGTH or _UNCLEAN.search(value)):
        raise InvalidInput.parameter(name)
    return value


def parse_label(value: object) -> str | None:
    """A label as given; ``None`` if not given."""
    if value is None:
        return None
    if not isinstance(value, str) or not is_clean_text(value):
        raise InvalidInput.parameter("label")
    if len(value) > MAX_LABEL_LENGTH:
        raise InvalidInput(f"Label is too long (maximum is {MAX_LABEL_LENGTH} characters)", 422)
    return value


def _flag(data: Mapping[str, Any], name: str) -> bool | None:
    given = name if data.get(name) is not None else FLAG_ALIASES[name]
    value = data.get(given)
    if value is None:
        return None
    if not isinstance(value, bool):
        raise InvalidInput.parameter(given)
    return value


def _permitted_ips(value: object) -> tuple[str, ...] | None:
    if value is None:
        return None
    if not isinstance(value, list) or not all(isinstance(entry, str) for entry in value):
        raise InvalidInput.parameter("permitted_ips")
    if len(value) > MAX_PERMITTED_IPS:
        raise InvalidInput(f"Too many permitted_ips (maximum is {MAX_PERMITTED_IPS})", 422)
    entries: dict[str, None] = {}
    for entry in value:
        canonical = canonical_entry(entry)
        if canonical is None:
            raise InvalidInput("Ip has incorrect format", 422)
        entries[canonical] = None
    return tuple(entries)


def _expires_at(value: object, now: datetime) -> datetime | Literal["never"] | None:
    if value is None:
        return None
    if value == NEVER:
        return NEVER
    if not isinstance(value, str):
        raise InvalidInput.parameter("expires_at")
    moment = parse_time(value)
    if moment is None:
        raise InvalidInput(f"Expires at has incorrect format ({EXPIRES_AT_FORMAT})", 422)
    if moment <= now:
        raise InvalidInput("Expires at must be in the future", 422)
    return moment


DURATION_UNITS = {"d": 86_400, "h": 3_600, "m": 60, "s": 1}


def parse_duration(text: str) -> timedelta | None:
    """A span of time as a number and a unit, ``90d``, ``12h``, ``30m`` or ``45s``;
    ``None`` if it is not one."""
    number, unit = text[:-1], text[-1:].lower()
    if not (number.isascii() and number.isdigit()) or unit not in DURATION_UNITS:
        return None
    if len(number) > 6:  # a million days is already past any datetime
        return None
    return timedelta(seconds=int(number) * DURATION_UNITS[unit])


def parse_time(text: str) -> datetime | None:
    """An RFC 3339 time with its offset, in UTC to the second (a fraction is dropped,
    so that the key object shows the very second it expires); ``None`` if it is not one."""
    text = text.upper()  # RFC 3339 allows "t" and "z"
    if len(text) > 40 or "T" not in text:
        return None
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        return None
    if moment.tzinfo is None:  # a time without an offset is ambiguous: refused
        return None
    return moment.astimezone(UTC).replace(microsecond=0)


def _level(group: str, value: object) -> Level:
    if not isinstance(value, dict):
        raise InvalidInput(f"API key scope {group}: must be a hash", 422)
    if set(value) - {"allow"}:
        raise InvalidInput(f'API key scope {group}: must have only "allow" key', 422)
    allow = value.get("allow", "none")  # documented default: {} and {"allow": null} are none
    if allow is None:
        allow = "none"
    if allow not in LEVEL_NAMES:
        choices = ", ".join(LEVEL_NAMES)
        raise InvalidInput(f"API key scope {group}: allow must be one of: {choices}", 422)
    return Level.parse(allow)


def _printable(name: str) -> str:
    """A client-supplied field name, made safe to echo in an error message."""
    cleaned = "".join(char if char.isprintable() else "?" for char in name[:64])
    return cleaned or "body"


def apply(settings: KeySettings, changes: KeyChanges) -> KeySettings:
    """``settings`` with every field that ``changes`` gives replaced.

    Removing credits removes their refill, unless the same change gives a new one: a
    refill without credits is refused, on PATCH as on create.
    """
    remaining = _given(changes.remaining, settings.remaining)
    refill = _given(changes.refill, settings.refill)
    if remaining == NO_CREDITS:
        remaining = None
        if changes.refill is None:  # not given: it goes with the credits
            refill = None
    if refill == NO_CREDITS:
        refill = None
    if refill is not None and remaining is None:
        raise InvalidInput("Refill needs remaining credits (remaining must be a number)", 422)
    assert not isinstance(remaining, str)
    assert not isinstance(refill, str)
    return KeySettings(
        label=changes.label if changes.label is not None else settings.label,
        active=_given(changes.active, settings.active),
        restricted=_given(changes.restricted, settings.restricted),
        permitted_ips=_given(changes.permitted_ips, settings.permitted_ips),
        scopes_enabled=_given(changes.scopes_enabled, settings.scopes_enabled),
        scopes=_granted({**settings.scopes, **changes.scopes}),
        expires_at=_expiry(changes.expires_at, settings.expires_at),
        ratelimit=_rate_limit(changes.ratelimit, settings.ratelimit),
        remaining=remaining,
        refill=refill,
    )


def settings_for_new_key(changes: KeyChanges) -> KeySettings:
    """The settings of a key created from validated ``changes``, Wavix defaults elsewhere."""
    assert changes.label is not None  # parse_create guarantees it
    return apply(KeySettings(label=changes.label), changes)


def _expiry(value: datetime | Literal["never"] | None, current: datetime | None) -> datetime | None:
    if isinstance(value, str):  # NEVER
        return None
    return current if value is None else value


def _rate_limit(
    value: RateLimit | Literal["none"] | None, current: RateLimit | None
) -> RateLimit | None:
    if isinstance(value, str):  # NO_LIMIT
        return None
    return current if value is None else value


def _given(value: T | None, current: T) -> T:
    return current if value is None else value


def _granted(levels: Mapping[str, Level]) -> dict[str, Level]:
    return {name: level for name, level in levels.items() if level is not Level.NONE}


def rolled_settings(settings: KeySettings, grace_until: datetime, now: datetime) -> KeySettings:
    """The settings of a key being rolled: it now expires when the grace ends, or at
    its own expiry if that comes first. An expired key cannot be rolled."""
    if is_expired(settings, now):
        raise Conflict("API key has expired; create a new key instead")
    expires_at = grace_until
    if settings.expires_at is not None:
        expires_at = min(settings.expires_at, grace_until)
    return replace(settings, expires_at=expires_at)
