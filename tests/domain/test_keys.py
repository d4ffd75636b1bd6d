import re

import pytest

from keyguard.domain import keys


def test_generated_token_has_prefix_base62_body_and_checksum() -> None:
    token = keys.generate("kg")
    assert re.fullmatch(r"kg_[0-9A-Za-z]{38}", token)
    assert keys.is_well_formed(token)


def test_generated_tokens_carry_at_least_160_bits_and_do_not_repeat() -> None:
    assert keys.BODY_LENGTH * 5.95 >= 160  # log2(62) ~ 5.954 bits per character
    assert len({keys.generate("kg") for _ in range(1000)}) == 1000


def test_configured_prefix_is_used() -> None:
    assert keys.generate("acme2").startswith("acme2_")


@pytest.mark.parametrize("prefix", ["", "KG", "k-g", "a" * 17, "kg_x"])
def test_invalid_prefix_is_refused(prefix: str) -> None:
    with pytest.raises(ValueError, match="prefix"):
        keys.generate(prefix)


def test_token_with_another_valid_prefix_stays_well_formed() -> None:
    assert keys.is_well_formed(keys.generate("old"))


def _flip(token: str, index: int) -> str:
    char = token[index]
    return token[:index] + ("A" if char != "A" else "B") + token[index + 1 :]


@pytest.mark.parametrize(
    ("name", "mangle"),
    [
        ("typo_in_body", lambda t: _flip(t, 10)),
        ("typo_in_checksum", lambda t: _flip(t, -1)),
        ("truncated", lambda t: t[:-1]),
        ("extended", lambda t: t + "A"),
        ("no_separator", lambda t: t.replace("_", "")),
        ("empty", lambda _t: ""),
        ("non_ascii", lambda t: t[:-1] + "é"),
        ("huge", lambda t: t * 1000),
        ("whitespace", lambda t: f" {t}"),
        ("uppercase_prefix", lambda t: t.upper()),
    ],
)
def test_malformed_token_is_rejected_before_lookup(name: str, mangle: object) -> None:
    assert callable(mangle)
    token = keys.generate("kg")
    assert not keys.is_well_formed(mangle(token)), name


def test_mask_keeps_prefix_and_last_four_characters() -> None:
    token = keys.generate("kg")
    masked = keys.mask(token)
    assert masked.startswith("kg_")
    assert masked.endswith(token[-4:])
    assert token[3:-4] not in masked


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        ("Bearer abc", "abc"),
        ("bearer abc", "abc"),
        ("BEARER  abc ", "abc"),
        ("Basic abc", None),
        ("Bearer", None),
        ("Bearer ", None),
        ("abc", None),
        (None, None),
    ],
)
def test_bearer_token(header: str | None, expected: str | None) -> None:
    assert keys.bearer_token(header) == expected


def test_header_wins_over_appid() -> None:
    assert keys.request_credential(["Bearer from-header"], ["from-query"]) == "from-header"


def test_appid_is_used_without_a_header() -> None:
    assert keys.request_credential([], ["from-query"]) == "from-query"


@pytest.mark.parametrize(
    ("authorizations", "appids"),
    [
        (["Bearer a", "Bearer b"], []),
        (["Bearer a", "Bearer a"], []),
        ([], ["a", "b"]),
        ([], [""]),
        ([], []),
        (["Basic a"], ["b"]),
    ],
    ids=["two_headers", "two_equal_headers", "two_appids", "empty_appid", "none", "not_bearer"],
)
def test_ambiguous_or_missing_credential_is_none(
    authorizations: list[str], appids: list[str]
) -> None:
    assert keys.request_credential(authorizations, appids) is None
