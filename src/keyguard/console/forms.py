"""The key form: what the browser posts, turned into the API's JSON body, and back.

The console validates nothing itself: it builds the body the API would receive
and lets :class:`~keyguard.service.KeyService` refuse it, so that a key set in
the browser is exactly what ``GET /v1/api-keys/{id}`` returns afterwards, and a
refusal carries the API's own message, shown next to the field it names.

Credits are the one exception to "the form sends every field": leases spend a
key's ``remaining`` while the form is open, and every change of it restarts the
key's leases, so an update sends ``remaining`` and ``refill`` only when they
differ from what the form showed.
"""

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from keyguard.console.present import remaining
from keyguard.domain.credits import NO_CREDITS
from keyguard.domain.fields import NEVER
from keyguard.domain.ratelimit import NO_LIMIT
from keyguard.domain.records import settings_document
from keyguard.domain.scopes import LEVEL_NAMES, Level, ScopeGroups
from keyguard.service import KeyView

Form = Mapping[str, list[str]]
# Fieldsets of whole numbers, each one object of the API's body: its name, the
# names of its fields, and the value that removes it on update. A fieldset shows
# the object's fields as ``{name}_{field}`` inputs (key_form.html's ``numbers``).
NUMBER_GROUPS: dict[str, tuple[tuple[str, ...], str]] = {
    "ratelimit": (("limit", "duration"), NO_LIMIT),
}
WHOLE_NUMBER = re.compile(r"-?[0-9]{1,30}")


def first(form: Form, name: str, default: str = "") -> str:
    values = form.get(name)
    return values[0] if values else default


@dataclass(frozen=True, slots=True)
class Credits:
    """The Credits fieldset as text: ``remaining`` empty for unlimited, ``amount``
    and ``interval`` empty for no refill."""

    remaining: str = ""
    amount: str = ""
    interval: str = ""

    @classmethod
    def of(cls, view: KeyView) -> "Credits":
        left, refill = remaining(view), view.key.settings.refill
        if refill is None:
            return cls("" if left is None else str(left))
        return cls("" if left is None else str(left), str(refill.amount), refill.interval)

    @classmethod
    def posted(cls, form: Form, prefix: str = "") -> "Credits":
        return cls(
            first(form, f"{prefix}remaining").strip(),
            first(form, f"{prefix}refill_amount").strip(),
            first(form, f"{prefix}refill_interval"),
        )

    def body(self, shown: "Credits | None") -> dict[str, Any]:
        """``remaining`` and ``refill`` of the API's body: all given on create
        (``shown`` None), only what differs from ``shown`` on update, where an
        emptied field removes what it held."""
        body: dict[str, Any] = {}
        if shown is None or self.remaining != shown.remaining:
            if self.remaining:
                body["remaining"] = _whole(self.remaining)
            elif shown is not None:
                body["remaining"] = NO_CREDITS
        if shown is None or (self.amount, self.interval) != (shown.amount, shown.interval):
            if self.amount or self.interval:
                # An interval is passed on as chosen, for the API to refuse by its rule.
                body["refill"] = {"amount": _whole(self.amount), "interval": self.interval[:16]}
            elif shown is not None:
                body["refill"] = NO_CREDITS
        return body


@dataclass(frozen=True, slots=True)
class KeyForm:
    """The values the create and edit form shows: blank, a key's, or as last posted."""

    label: str = ""
    active: bool = True
    restricted: bool = False
    permitted_ips: str = ""
    scopes_enabled: bool = False
    scopes: dict[str, str] = field(default_factory=dict)
    expires_at: str = ""  # as the datetime-local input shows it, in UTC
    numbers: dict[str, dict[str, str]] = field(default_factory=dict)  # by NUMBER_GROUPS
    credits: Credits = Credits()
    shown: Credits = Credits()  # the credits the edit form was opened with

    @classmethod
    def blank(cls, groups: ScopeGroups) -> "KeyForm":
        return cls(scopes=dict.fromkeys(groups, "none"), numbers=_numbers({}))

    @classmethod
    def of(cls, view: KeyView, groups: ScopeGroups) -> "KeyForm":
        settings = view.key.settings
        expires = settings.expires_at
        return cls(
            label=settings.label,
            active=settings.active,
            restricted=settings.restricted,
            permitted_ips="\n".join(settings.permitted_ips),
            scopes_enabled=settings.scopes_enabled,
            scopes={name: level.label for name, level in groups.complete(settings.scopes).items()},
            expires_at="" if expires is None else expires.strftime("%Y-%m-%dT%H:%M"),
            numbers=_numbers(settings_document(settings)),
            credits=Credits.of(view),
            shown=Credits.of(view),
        )

    @classmethod
    def posted(cls, form: Form, groups: ScopeGroups) -> "KeyForm":
        return cls(
            label=first(form, "label"),
            active=first(form, "active") == "on",
            restricted=first(form, "restricted") == "on",
            permitted_ips=first(form, "permitted_ips"),
            scopes_enabled=first(form, "scopes_enabled") == "on",
            scopes={name: first(form, f"scope_{name}", "none") for name in groups},
            expires_at=first(form, "expires_at").strip(),
            numbers={
                name: {part: first(form, f"{name}_{part}").strip() for part in parts}
                for name, (parts, _none) in NUMBER_GROUPS.items()
            },
            credits=Credits.posted(form),
            shown=Credits.posted(form, "shown_"),
        )

    def body(self, *, editing: bool) -> dict[str, Any]:
        """The JSON body of ``POST /v1/api-keys`` (or ``PATCH`` when ``editing``)."""
        body: dict[str, Any] = {
            "label": self.label,
            "active": self.active,
            "restricted": self.restricted,
            "permitted_ips": [
                line.strip() for line in self.permitted_ips.splitlines() if line.strip()
            ],
            "scopes_enabled": self.scopes_enabled,
        }
        for name, level in self.scopes.items():
            # An unknown level is passed on as given, for the API to refuse by name.
            body[name] = {"allow": level if level in LEVEL_NAMES else level[:16]}
        if self.expires_at:
            body["expires_at"] = _as_utc(self.expires_at)
        elif editing:
            body["expires_at"] = NEVER  # an emptied field removes the expiry
        for name, (_parts, none) in NUMBER_GROUPS.items():
            given = self.numbers.get(name, {})
            if any(given.values()):
                body[name] = {part: _whole(text) for part, text in given.items()}
            elif editing:
                body[name] = none  # emptied fields remove the limit
        body.update(self.credits.body(self.shown if editing else None))
        return body


def _numbers(document: Mapping[str, Any]) -> dict[str, dict[str, str]]:
    """The number fieldsets' values as a key's JSON document gives them, or empty."""
    shown: dict[str, dict[str, str]] = {}
    for name, (parts, _none) in NUMBER_GROUPS.items():
        value = document.get(name) or {}
        shown[name] = {part: "" if value.get(part) is None else str(value[part]) for part in parts}
    return shown


def _whole(text: str) -> object:
    """A whole number as the API takes it; else as given (None if empty), to be refused."""
    return int(text) if WHOLE_NUMBER.fullmatch(text) else text or None


def _as_utc(local: str) -> str:
    """A datetime-local value (no zone: the form says UTC) in RFC 3339, if it is one."""
    try:
        moment = datetime.fromisoformat(local)
    except ValueError:
        return local  # the API refuses it with its own message
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.isoformat().replace("+00:00", "Z")


def field_of(message: str, groups: ScopeGroups) -> str | None:
    """Which form field an API refusal is about, so it is shown next to that field."""
    lowered = message.lower()
    if "remaining" in lowered or "refill" in lowered:
        return "credits"
    if "rate limit" in lowered or "ratelimit" in lowered:
        return "ratelimit"
    if "label" in lowered:
        return "label"
    if lowered.startswith("ip ") or "permitted_ips" in lowered:
        return "permitted_ips"
    if "expires" in lowered:
        return "expires_at"
    if "scope" in lowered or any(lowered.endswith(f" {name}") for name in groups):
        return "scopes"
    return None


def level_names() -> tuple[str, ...]:
    return tuple(level.label for level in Level)
