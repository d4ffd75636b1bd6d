"""Keys brought over from another system: one record of an import file, checked.

A record is a JSON object (a line of JSON Lines) or a CSV row turned into one by
:func:`csv_record`. It names the secret as ``value`` (the key itself, as a Wavix key
object has it) or as ``sha256`` (the SHA-256 digest another system kept, in hex
or base64), and may carry Wavix's key fields: ``label``, ``active``/``is_active``,
``restricted``/``is_restriction``, ``permitted_ips``,
``scopes_enabled``/``is_scopes_enabled``, the scope groups as
``{"allow": "read"}``, ``expires_at`` and ``ratelimit``. Other fields (``id``,
``created_at``, ``last_used_at``…) are ignored, so Wavix's own key objects import
as they are. Refusals are :class:`~keyguard.errors.InvalidInput` with the API's
messages; none repeats a secret.
"""

import base64
import binascii
import re
from collections.abc import Mapping
from dataclasses import dataclass, fields
from datetime import UTC, datetime
from operator import attrgetter
from typing import Any

from keyguard.domain.fields import parse_create, parse_label, settings_for_new_key
from keyguard.domain.records import KeySettings
from keyguard.domain.scopes import ScopeGroups
from keyguard.errors import InvalidInput

DEFAULT_LABEL = "Imported key"
MAX_VALUE_LENGTH = 512  # what decide() looks up for a token of another system's shape
# Printable ASCII without spaces: what an Authorization header carries intact.
_VALUE = re.compile(rf"[\x21-\x7e]{{1,{MAX_VALUE_LENGTH}}}")
_HEX_SHA256 = re.compile(r"[0-9a-fA-F]{64}")
_TRUE = frozenset({"true", "1", "yes"})
_FALSE = frozenset({"false", "0", "no"})
_FLAG_COLUMNS = frozenset(
    {"active", "is_active", "restricted", "is_restriction", "scopes_enabled", "is_scopes_enabled"}
)
_LIST_SEPARATORS = re.compile(r"[\s,;]+")
# Fields of one key alone, never shared with another's settings: its secret, its label,
# and what a Wavix key object says of its identity and use (ignored).
_OWN_FIELDS = frozenset({"value", "sha256", "label", "id", "created_at", "last_used_at"})
_REMEMBERED = 4096  # distinct settings remembered at once
# Past expiries are kept: an expired key imports as expired, and is refused.
_ANY_TIME = datetime(1, 1, 1, tzinfo=UTC)


@dataclass(frozen=True, slots=True)
class Incoming:
    """A key to import: exactly one of ``value`` and ``sha256`` (32 raw bytes)."""

    settings: KeySettings
    value: str | None = None
    sha256: bytes | None = None


class RecordParser:
    """Records into keys to import. Records that differ only in their secret, label
    and identity (``id``, times) share settings, checked once."""

    def __init__(self, groups: ScopeGroups) -> None:
        self._groups = groups
        self._settings: dict[str, KeySettings] = {}

    def parse(self, record: object) -> Incoming:
        """The key a record describes; ``InvalidInput`` saying what is wrong with it."""
        if not isinstance(record, dict):
            raise InvalidInput("Not a JSON object", 400)
        value, sha256 = record.get("value"), record.get("sha256")
        if (value is None) == (sha256 is None):
            raise InvalidInput("Exactly one of value and sha256 is required", 400)
        label = parse_label(record.get("label")) or DEFAULT_LABEL
        rest = {name: field for name, field in record.items() if name not in _OWN_FIELDS}
        shared = repr(rest)  # records from one exporter list their fields in one order
        settings = self._settings.get(shared)
        if settings is None:
            body = {**rest, "label": DEFAULT_LABEL}
            settings = settings_for_new_key(parse_create(body, self._groups, now=_ANY_TIME))
            if len(self._settings) >= _REMEMBERED:
                self._settings.clear()
            self._settings[shared] = settings
        return _incoming(_labelled(settings, label), value, sha256)


# KeySettings with another label, once per key: dataclasses.replace costs twice as much.
_LABEL, *_OTHERS = (field.name for field in fields(KeySettings))
_others = attrgetter(*_OTHERS)
assert _LABEL == "label", "KeySettings must start with its label"


def _labelled(settings: KeySettings, label: str) -> KeySettings:
    return KeySettings(label, *_others(settings))


def _incoming(settings: KeySettings, value: object, sha256: object) -> Incoming:
    if value is not None:
        if not isinstance(value, str) or _VALUE.fullmatch(value) is None:
            raise InvalidInput(
                f"Missing or invalid parameter value (1 to {MAX_VALUE_LENGTH} printable "
                "ASCII characters, no spaces)",
                400,
            )
        return Incoming(settings, value=value)
    return Incoming(settings, sha256=_sha256(sha256))


def _sha256(text: object) -> bytes:
    if isinstance(text, str):
        if _HEX_SHA256.fullmatch(text):
            return bytes.fromhex(text)
        try:
            raw = base64.b64decode(text, validate=True)
        except binascii.Error:
            raw = b""
        if len(raw) == 32:
            return raw
    raise InvalidInput(
        "Missing or invalid parameter sha256 (64 hex digits, or 32 bytes in base64)", 400
    )


def csv_record(row: Mapping[str | None, str | None], groups: ScopeGroups) -> dict[str, Any]:
    """A CSV row as the JSON object it stands for, by column name.

    An empty cell is a field not given. Flags read ``true``/``false`` (or ``1``/``0``,
    ``yes``/``no``); ``permitted_ips`` is a list separated by spaces, commas or
    semicolons; a scope group's column holds its level (``read``).
    """
    record: dict[str, Any] = {}
    for name, cell in row.items():
        if name is None or cell is None or not cell.strip():
            continue
        name, cell = name.strip(), cell.strip()
        if name in _FLAG_COLUMNS:
            record[name] = _flag(cell)
        elif name == "permitted_ips":
            record[name] = [entry for entry in _LIST_SEPARATORS.split(cell) if entry]
        elif name in groups:
            record[name] = {"allow": cell.lower()}
        else:
            record[name] = cell
    return record


def _flag(cell: str) -> bool | str:
    lowered = cell.lower()
    if lowered in _TRUE:
        return True
    if lowered in _FALSE:
        return False
    return cell  # refused by the field's own check, by name
