from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from keyguard.domain.fields import (
    NEVER,
    KeyChanges,
    apply,
    parse_create,
    parse_roll,
    parse_time,
    parse_update,
    rolled_settings,
    settings_for_new_key,
)
from keyguard.domain.ratelimit import NO_LIMIT, RateLimit
from keyguard.domain.records import KeySettings
from keyguard.domain.scopes import Level, ScopeGroups
from keyguard.errors import Conflict, InvalidInput

GROUPS = ScopeGroups()


def _refusal(parse: Any, body: object) -> tuple[int, str]:
    with pytest.raises(InvalidInput) as caught:
        parse(body, GROUPS)
    return caught.value.status, caught.value.message


def test_create_defaults_follow_wavix() -> None:
    settings = settings_for_new_key(parse_create({"label": "ci"}, GROUPS))
    assert settings == KeySettings(label="ci")
    assert settings.active
    assert not settings.restricted
    assert not settings.scopes_enabled
    assert settings.permitted_ips == ()
    assert settings.scopes == {}


def test_both_generations_of_flag_names_are_accepted() -> None:
    legacy = parse_create(
        {"label": "x", "is_active": False, "is_restriction": True, "permitted_ips": [],
         "is_scopes_enabled": True},
        GROUPS,
    )  # fmt: skip
    assert (legacy.active, legacy.restricted, legacy.scopes_enabled) == (False, True, True)


def test_current_name_wins_when_both_are_given() -> None:
    changes = parse_update({"active": True, "is_active": False}, GROUPS)
    assert changes.active is True


def test_null_means_not_given() -> None:
    assert parse_update({"label": None, "active": None, "numbers": None}, GROUPS) == KeyChanges()


def test_legacy_name_is_named_in_its_type_error() -> None:
    assert _refusal(parse_update, {"is_active": "yes"}) == (
        400,
        "Missing or invalid parameter is_active",
    )


@pytest.mark.parametrize(
    ("body", "refusal"),
    [
        ([], (400, "Missing or invalid parameter body")),
        ("label", (400, "Missing or invalid parameter body")),
        ({}, (400, "Missing or invalid parameter label")),
        ({"label": ""}, (400, "Missing or invalid parameter label")),
        ({"label": "   "}, (400, "Missing or invalid parameter label")),
        ({"label": 5}, (400, "Missing or invalid parameter label")),
        ({"label": "a\x00b"}, (400, "Missing or invalid parameter label")),
        ({"label": "x" * 256}, (422, "Label is too long (maximum is 255 characters)")),
        ({"label": "x", "active": "true"}, (400, "Missing or invalid parameter active")),
        ({"label": "x", "active": 1}, (400, "Missing or invalid parameter active")),
        ({"label": "x", "permitted_ips": "1.2.3.4"},
         (400, "Missing or invalid parameter permitted_ips")),
        ({"label": "x", "permitted_ips": [1]}, (400, "Missing or invalid parameter permitted_ips")),
        ({"label": "x", "permitted_ips": ["1.2.3.999"]}, (422, "Ip has incorrect format")),
        ({"label": "x", "permitted_ips": ["1.2.3.4"] * 101},
         (422, "Too many permitted_ips (maximum is 100)")),
        ({"label": "x", "restricted": True}, (400, "Missing or invalid parameter permitted_ips")),
        ({"label": "x", "numbers": "read"}, (422, "API key scope numbers: must be a hash")),
        ({"label": "x", "two_fa": {"allow": "read", "deny": "x"}},
         (422, 'API key scope two_fa: must have only "allow" key')),
        ({"label": "x", "billing": {"allow": "admin"}},
         (422, "API key scope billing: allow must be one of: none, read, write")),
        ({"label": "x", "calls": {"allow": ["read"]}},
         (422, "API key scope calls: allow must be one of: none, read, write")),
    ],
    ids=lambda value: str(value)[:40] if isinstance(value, dict | list | str) else None,
)  # fmt: skip
def test_create_refusals_carry_wavix_messages(body: object, refusal: tuple[int, str]) -> None:
    assert _refusal(parse_create, body) == refusal


def test_restricted_with_empty_list_is_accepted_and_blocks_everyone() -> None:
    changes = parse_create({"label": "x", "restricted": True, "permitted_ips": []}, GROUPS)
    assert changes.restricted is True
    assert changes.permitted_ips == ()


def test_permitted_ips_are_canonical_and_deduplicated() -> None:
    changes = parse_create(
        {"label": "x", "permitted_ips": ["2001:DB8::1", "10.0.0.0/8", "2001:db8::1"]}, GROUPS
    )
    assert changes.permitted_ips == ("2001:db8::1", "10.0.0.0/8")


def test_unknown_fields_are_ignored_on_create_and_refused_on_update() -> None:
    assert parse_create({"label": "x", "colour": "red"}, GROUPS).label == "x"
    assert _refusal(parse_update, {"colour": "red"}) == (
        400,
        "Missing or invalid parameter colour",
    )


@pytest.mark.parametrize("field", ["id", "value", "created_at", "last_used_at"])
def test_read_only_fields_are_refused_on_update(field: str) -> None:
    assert _refusal(parse_update, {field: 1}) == (400, f"Missing or invalid parameter {field}")


def test_unknown_field_name_is_sanitised_in_the_message() -> None:
    status, message = _refusal(parse_update, {"\x1b[31m" + "x" * 500: 1})
    assert status == 400
    assert "\x1b" not in message
    assert len(message) < 100


def test_scope_groups_follow_the_deployment() -> None:
    groups = ScopeGroups(("orders",))
    changes = parse_create({"label": "x", "orders": {"allow": "write"}, "numbers": 5}, groups)
    assert changes.scopes == {"orders": Level.WRITE}


def test_apply_changes_only_given_fields_and_drops_none_levels() -> None:
    before = KeySettings(
        label="a",
        restricted=True,
        permitted_ips=("10.0.0.1",),
        scopes_enabled=True,
        scopes={"numbers": Level.READ, "calls": Level.WRITE},
    )
    after = apply(
        before, KeyChanges(label="b", scopes={"numbers": Level.NONE, "billing": Level.READ})
    )
    assert after == KeySettings(
        label="b",
        restricted=True,
        permitted_ips=("10.0.0.1",),
        scopes_enabled=True,
        scopes={"calls": Level.WRITE, "billing": Level.READ},
    )


@pytest.mark.parametrize("scope", [{}, {"allow": None}], ids=["empty", "null_allow"])
def test_scope_object_without_allow_means_none(scope: dict[str, object]) -> None:
    changes = parse_update({"calls": scope}, GROUPS)
    assert changes.scopes == {"calls": Level.NONE}


# -- expiry and roll ----------------------------------------------------------------

NOW = datetime(2030, 6, 1, 12, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2030-06-02T00:00:00Z", datetime(2030, 6, 2, tzinfo=UTC)),
        ("2030-06-02T02:00:00+02:00", datetime(2030, 6, 2, tzinfo=UTC)),
        ("2030-06-02T00:00:00.999Z", datetime(2030, 6, 2, tzinfo=UTC)),
        ("2030-06-02t00:00:00z", datetime(2030, 6, 2, tzinfo=UTC)),
        ("2030-06-02T00:00:00", None),
        ("2030-06-02", None),
        ("2030-13-02T00:00:00Z", None),
        ("now", None),
        ("2030-06-02T00:00:00Z" + " " * 40, None),
    ],
)
def test_parse_time_takes_rfc3339_with_an_offset_to_the_second(
    text: str, expected: datetime | None
) -> None:
    assert parse_time(text) == expected


def test_expiry_must_be_later_than_now() -> None:
    with pytest.raises(InvalidInput) as caught:
        parse_create({"label": "k", "expires_at": "2030-06-01T12:00:00Z"}, GROUPS, NOW)
    assert (caught.value.status, caught.value.message) == (422, "Expires at must be in the future")
    later = parse_create({"label": "k", "expires_at": "2030-06-01T12:00:01Z"}, GROUPS, NOW)
    assert later.expires_at == NOW + timedelta(seconds=1)


def test_never_removes_an_expiry_and_null_keeps_it() -> None:
    expiring = KeySettings(label="k", expires_at=NOW)
    assert apply(expiring, parse_update({"expires_at": NEVER}, GROUPS, NOW)).expires_at is None
    assert apply(expiring, parse_update({"expires_at": None}, GROUPS, NOW)).expires_at == NOW


def test_roll_grace_defaults_to_a_day_and_is_bounded_to_a_week() -> None:
    assert parse_roll({}) == 86_400
    assert parse_roll({"grace_seconds": None}) == 86_400
    assert parse_roll({"grace_seconds": 0}) == 0
    assert parse_roll({"grace_seconds": 604_800}) == 604_800
    for refused in (-1, 604_801, True, "1", 1.0):
        with pytest.raises(InvalidInput):
            parse_roll({"grace_seconds": refused})


def test_rolled_key_expires_at_the_end_of_grace_or_its_own_expiry_if_sooner() -> None:
    grace_end = NOW + timedelta(days=1)
    forever = KeySettings(label="k")
    soon = KeySettings(label="k", expires_at=NOW + timedelta(hours=1))

    assert rolled_settings(forever, grace_end, NOW).expires_at == grace_end
    assert rolled_settings(soon, grace_end, NOW) == soon
    with pytest.raises(Conflict):
        rolled_settings(soon, grace_end, NOW + timedelta(hours=1))


def test_a_rate_limit_is_set_kept_on_null_and_removed_with_none() -> None:
    created = settings_for_new_key(
        parse_create({"label": "k", "ratelimit": {"limit": 10, "duration": 60}}, GROUPS)
    )
    kept = apply(created, parse_update({"ratelimit": None, "label": "j"}, GROUPS))
    removed = apply(created, parse_update({"ratelimit": NO_LIMIT}, GROUPS))

    assert created.ratelimit == RateLimit(10, 60)
    assert kept.ratelimit == RateLimit(10, 60)
    assert removed.ratelimit is None


@pytest.mark.parametrize(
    ("value", "status"),
    [
        ({"limit": 0, "duration": 60}, 422),
        ({"limit": 1_000_000_001, "duration": 60}, 422),
        ({"limit": 1, "duration": 86_401}, 422),
        ({"limit": 1, "duration": 0}, 422),
        ({"limit": 1.0, "duration": 60}, 400),
        ({"limit": False, "duration": 60}, 400),
        ({"limit": 1}, 400),
        ("none ", 400),
        ([], 400),
    ],
)
def test_a_rate_limit_out_of_range_is_422_and_of_a_wrong_type_400(
    value: object, status: int
) -> None:
    assert _refusal(parse_create, {"label": "k", "ratelimit": value})[0] == status
    assert _refusal(parse_update, {"ratelimit": value})[0] == status


def test_the_largest_rate_limit_is_accepted() -> None:
    changes = parse_update({"ratelimit": {"limit": 1_000_000_000, "duration": 86_400}}, GROUPS)
    assert changes.ratelimit == RateLimit(1_000_000_000, 86_400)
