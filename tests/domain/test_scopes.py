import pytest

from keyguard.domain.scopes import WAVIX_GROUPS, Level, ScopeGroups, compact, expand


def test_default_groups_are_wavix_thirteen_in_wavix_order() -> None:
    assert ScopeGroups().names == (
        "numbers", "trunks", "calls", "messages", "recordings", "campaigns", "two_fa",
        "validator", "webhooks", "embeddable", "billing", "account", "subaccounts",
    )  # fmt: skip
    assert len(WAVIX_GROUPS) == 13


def test_deployment_can_define_its_own_groups() -> None:
    groups = ScopeGroups(("orders", "reports"))
    assert "orders" in groups
    assert "numbers" not in groups
    assert groups.complete({"orders": Level.WRITE}) == {
        "orders": Level.WRITE,
        "reports": Level.NONE,
    }


def test_duplicate_group_names_are_refused() -> None:
    with pytest.raises(ValueError, match="unique"):
        ScopeGroups(("a", "a"))


def test_write_includes_read_includes_none() -> None:
    assert Level.NONE < Level.READ < Level.WRITE


def test_compact_stores_only_granted_levels_and_expands_back() -> None:
    levels = {"numbers": Level.READ, "calls": Level.NONE, "messages": Level.WRITE}
    assert compact(levels) == {"numbers": "read", "messages": "write"}
    assert expand(compact(levels)) == {"numbers": Level.READ, "messages": Level.WRITE}
