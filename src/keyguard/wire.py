"""The Wavix wire format: key objects and error bodies, as plain dicts."""

from datetime import UTC, datetime
from typing import Any

from keyguard.domain.credits import remaining_at
from keyguard.domain.records import Account, AuditRecord
from keyguard.domain.records import timestamp as _timestamp
from keyguard.domain.scopes import Level, ScopeGroups
from keyguard.service import KeyView

_LEVEL_LABELS = {level: level.label for level in Level}


def key_object(view: KeyView, groups: ScopeGroups) -> dict[str, Any]:
    """A key in Wavix's field order, with both generations of flag names, then
    keyguard's own fields: the key's life, and how it was imported, if it was."""
    key, settings = view.key, view.key.settings
    body: dict[str, Any] = {
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
        "last_used_at": _timestamp(view.last_used_at),
    }
    # A list renders 13 groups per key: the labels come from a table, not the enum.
    scopes, labels = settings.scopes, _LEVEL_LABELS
    for group in groups:
        body[group] = {"allow": labels[scopes.get(group, Level.NONE)]}
    body["created_at"] = _timestamp(key.created_at)
    body["expires_at"] = _timestamp(settings.expires_at)
    body["rolled_from"] = key.rolled_from
    body["leaked_at"] = _timestamp(key.leaked_at)
    body["ratelimit"] = None if settings.ratelimit is None else settings.ratelimit.document()
    # What the store holds, refilled if a period began since: credits that
    # processes hold in leases are not in it until given back.
    refill = settings.refill
    body["remaining"] = remaining_at(
        settings.remaining, refill, key.credits_period, datetime.now(UTC)
    )
    body["refill"] = None if refill is None else refill.document()
    # "sha256": imported by its digest, so ``value`` is "" and can never be shown.
    body["imported"] = key.imported
    return body


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
