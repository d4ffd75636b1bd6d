"""Lifecycle events: which audit actions are announced, the retry schedule, the
signing secret's shape and when a key's expiry calls for a notice."""

import base64
from datetime import UTC, datetime, timedelta
from typing import get_args

import pytest

from keyguard.domain.events import (
    EVENT_TYPES,
    RETRY_WINDOW,
    Delivery,
    expiry_notice,
    given_up,
    retry_delay,
    signing_secret,
)
from keyguard.domain.records import Action

NOW = datetime(2026, 12, 8, 12, 0, tzinfo=UTC)
WEEK = timedelta(days=7)


def test_every_action_but_an_accounts_creation_is_announced() -> None:
    assert set(get_args(Action)) - set(EVENT_TYPES) == {"account.create"}
    assert set(EVENT_TYPES.values()) == {
        "key.created", "key.updated", "key.deleted", "key.rolled", "key.expiring",
        "key.expired", "key.leaked", "key.imported", "account.suspended", "account.resumed",
        "account.deleted",
    }  # fmt: skip


def test_retries_double_from_a_second_up_to_30_seconds() -> None:
    assert [retry_delay(n) for n in range(1, 9)] == [1, 2, 4, 8, 16, 30, 30, 30]
    assert retry_delay(10_000) == 30


def test_an_event_is_given_up_at_24_hours_old_and_not_before() -> None:
    assert not given_up(NOW, NOW + RETRY_WINDOW - timedelta(seconds=1))
    assert given_up(NOW, NOW + RETRY_WINDOW)


def test_a_retry_waits_only_for_the_event_it_was_noted_for() -> None:
    delivery = Delivery(10, retry_event=11, attempts=3, retry_at=NOW)
    assert delivery.waiting(11, NOW - timedelta(seconds=1))
    assert not delivery.waiting(11, NOW)
    assert not delivery.waiting(12, NOW - timedelta(seconds=1))
    assert (delivery.attempts_at(11), delivery.attempts_at(12)) == (3, 0)


@pytest.mark.parametrize(
    ("secret", "problem"),
    [
        ("c2VjcmV0LXNlY3JldC1zZWNyZXQtc2VjcmV0", "must start with whsec_"),
        ("whsec_not base64!", "must be whsec_ followed by base64"),
        ("whsec_" + base64.b64encode(b"x" * 23).decode(), "must hold 24 to 64 bytes, not 23"),
        ("whsec_" + base64.b64encode(b"x" * 65).decode(), "must hold 24 to 64 bytes, not 65"),
    ],
    ids=["no_prefix", "not_base64", "too_short", "too_long"],
)
def test_a_signing_secret_of_another_shape_is_refused(secret: str, problem: str) -> None:
    with pytest.raises(ValueError, match=problem):
        signing_secret(secret)


def test_a_signing_secret_is_its_key_with_or_without_padding() -> None:
    key = bytes(range(32))
    encoded = base64.b64encode(key).decode()
    assert signing_secret("whsec_" + encoded) == key
    assert signing_secret("whsec_" + encoded.rstrip("=")) == key


@pytest.mark.parametrize(
    ("expires_in", "warned", "expired", "notice"),
    [
        (None, False, False, None),
        (timedelta(days=8), False, False, None),
        (timedelta(days=7), False, False, "key.expiring"),
        (timedelta(hours=1), False, False, "key.expiring"),
        (timedelta(hours=1), True, False, None),
        (timedelta(0), True, False, "key.expire"),
        (-timedelta(days=30), False, False, "key.expire"),
        (-timedelta(hours=1), True, True, None),
    ],
    ids=[
        "never", "beyond_the_warning", "at_the_warning", "within_it", "already_warned",
        "expired_now", "expired_unwatched", "already_noted",
    ],
)  # fmt: skip
def test_an_expiry_calls_for_each_notice_once(
    expires_in: timedelta | None, warned: bool, expired: bool, notice: str | None
) -> None:
    expires_at = None if expires_in is None else NOW + expires_in
    warned_for = expires_at if warned else None
    expired_for = expires_at if expired else None
    assert expiry_notice(expires_at, NOW, WEEK, warned_for, expired_for) == notice


def test_a_new_expiry_calls_for_new_notices() -> None:
    old, new = NOW + timedelta(days=1), NOW + timedelta(days=2)
    assert expiry_notice(new, NOW, WEEK, warned_for=old, expired_for=None) == "key.expiring"
