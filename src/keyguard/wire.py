"""The Wavix wire format: key objects and error bodies, as plain dicts."""

from collections.abc import Callable, Iterable, Mapping
from datetime import UTC, datetime
from typing import Any

import orjson

from keyguard.domain.credits import remaining_at
from keyguard.domain.records import Account, AuditRecord
from keyguard.domain.records import timestamp as _timestamp
from keyguard.domain.scopes import Level, ScopeGroups
from keyguard.service import KeyView

_LEVEL_LABELS = {level: level.label for level in Level}


def key_object(view: KeyView, groups: ScopeGroups) -> dict[str, Any]:
    """A key in Wavix's field order, with both generations of flag names, then
    keyguard's own fields: the key's life, and how it was imported, if it was."""
    return _key_body(view, _scope_section(view.key.settings.scopes, groups), _timestamp)


def key_list(views: Iterable[KeyView], groups: ScopeGroups) -> bytes:
    """Key objects as a JSON array: the bytes of :func:`key_object`'s dicts as orjson
    renders them, with less work for each key of a long list.

    Keys that share their scopes (a store's list shares them) share their groups'
    rendering, and orjson writes the times itself (UTC, whole seconds, ``Z``).
    """
    sections: dict[int, dict[str, Any]] = {}  # by the scopes' identity: they live on
    bodies = []
    for view in views:
        scopes = view.key.settings.scopes
        section = sections.get(id(scopes))
        if section is None:
            section = sections[id(scopes)] = _scope_section(scopes, groups)
        bodies.append(_key_body(view, section, _as_it_is))
    return orjson.dumps(bodies, option=orjson.OPT_UTC_Z | orjson.OPT_OMIT_MICROSECONDS)


def _key_body(
    view: KeyView, section: dict[str, Any], time: Callable[[datetime | None], Any]
) -> dict[str, Any]:
    key, settings = view.key, view.key.settings
    ratelimit, refill = settings.ratelimit, settings.refill
    # What the store holds, refilled if a period began since: credits that
    # processes hold in leases are not in it until given back.
    remaining = settings.remaining
    if remaining is not None and refill is not None:
        remaining = remaining_at(remaining, refill, key.credits_period, datetime.now(UTC))
    return {
        "id": key.id,
        "label": settings.label,
        "value": view.value,
        "is_active": settings.active,
        "active": settings.active,
        "is_restriction": settings.restricted,
        "restricted": settings.restricted,
        "permitted_ips": list(settings.permitted_ips),
        "is_scopes_enabled": settings.scopes_enabled,
        "scopes_enabled": settings.scopes_enabled,
        "last_used_at": time(view.last_used_at),
        **section,
        "created_at": time(key.created_at),
        "expires_at": time(settings.expires_at),
        "rolled_from": key.rolled_from,
        "leaked_at": time(key.leaked_at),
        "ratelimit": None if ratelimit is None else ratelimit.document(),
        "remaining": remaining,
        "refill": None if refill is None else refill.document(),
        # "sha256": imported by its digest, so ``value`` is "" and can never be shown.
        "imported": key.imported,
    }


def _scope_section(scopes: Mapping[str, Level], groups: ScopeGroups) -> dict[str, Any]:
    """Every group as ``{"allow": level}``; a list renders 13 of them per key."""
    return {group: {"allow": _LEVEL_LABELS[scopes.get(group, Level.NONE)]} for group in groups}


def _as_it_is(value: datetime | None) -> datetime | None:
    return value


def account_object(account: Account) -> dict[str, Any]:
    return {
        "id": account.id,
        "name": account.name,
        "status": account.status.value,
        "created_at": _timestamp(account.created_at),
    }


def audit_object(record: AuditRecord) -> dict[str, Any]:
    return {
        "id": record.id,
        "account_id": record.account_id,
        "occurred_at": _timestamp(record.occurred_at),
        "action": record.action,
        "key_id": record.key_id,
        "actor": {"type": record.actor.kind, "key_id": record.actor.key_id, "ip": record.actor.ip},
        "before": record.before,
        "after": record.after,
    }


def page(items: list[dict[str, Any]], number: int, per_page: int, total: int) -> dict[str, Any]:
    """A Wavix-style paginated list."""
    return {
        "items": items,
        "pagination": {
            "current_page": number,
            "per_page": per_page,
            "total": total,
            "total_pages": -(-total // per_page),
        },
    }
