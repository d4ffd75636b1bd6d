"""Settings: every bad value names its variable; a misspelt one is pointed out."""

import pytest

from keyguard.config import load_settings, unknown_variables
from keyguard.errors import ConfigurationError


def test_short_secret_names_its_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KEYGUARD_SECRET_KEY", "x" * 31)
    with pytest.raises(ConfigurationError) as refused:
        load_settings()
    assert refused.value.message == (
        "Invalid settings: KEYGUARD_SECRET_KEY: Value error, must be at least 32 bytes."
    )


def test_a_secret_of_32_bytes_is_enough(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KEYGUARD_SECRET_KEY", "é" * 16)  # 16 characters, 32 bytes
    secret = load_settings().secret_key
    assert secret is not None
    assert secret.get_secret_value() == "é" * 16


def test_unknown_variable_is_reported_with_the_closest_setting() -> None:
    environ = {
        "KEYGUARD_DATABSE_URL": "sqlite:///x.db",
        "KEYGUARD_TRUSTED_PROXIES": "10.0.0.1",
        "KEYGUARD_ZZZ": "1",
        "KEYGUARD_TEST_POSTGRES_URL": "postgresql://",
        "PATH": "/usr/bin",
    }
    assert unknown_variables(environ) == [
        "KEYGUARD_DATABSE_URL is not a keyguard setting and is ignored;"
        " did you mean KEYGUARD_DATABASE_URL?",
        "KEYGUARD_ZZZ is not a keyguard setting and is ignored",
    ]


def test_unknown_variable_is_logged_at_start(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("KEYGUARD_REFRESH_INTERVALL", "0.5")
    load_settings()
    assert "did you mean KEYGUARD_REFRESH_INTERVAL?" in caplog.text


@pytest.mark.parametrize(
    ("primary", "replica", "complaint"),
    [
        (None, "postgresql://kg:pa55-w0rd@replica/kg", "needs KEYGUARD_DATABASE_URL on PostgreSQL"),
        (
            "postgresql://kg@primary/kg",
            "sqlite:///pa55-w0rd.db",
            "read replicas are PostgreSQL only",
        ),
        ("memory://", "postgresql://kg:pa55-w0rd@replica/kg", "needs KEYGUARD_DATABASE_URL"),
    ],
    ids=["sqlite-primary", "sqlite-replica", "memory-primary"],
)
def test_a_read_replica_needs_postgresql_on_both_sides(
    monkeypatch: pytest.MonkeyPatch, primary: str | None, replica: str, complaint: str
) -> None:
    if primary is not None:
        monkeypatch.setenv("KEYGUARD_DATABASE_URL", primary)
    monkeypatch.setenv("KEYGUARD_DATABASE_READ_URL", replica)
    with pytest.raises(ConfigurationError) as refused:
        load_settings()
    assert refused.value.message.startswith("Invalid settings: KEYGUARD_DATABASE_READ_URL: ")
    assert complaint in refused.value.message
    assert "pa55-w0rd" not in refused.value.message


def test_a_read_replica_on_postgresql_is_accepted(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KEYGUARD_DATABASE_URL", "postgresql+psycopg://kg@primary/kg")
    monkeypatch.setenv("KEYGUARD_DATABASE_READ_URL", "postgresql://kg@replica/kg")
    assert load_settings().database_read_url == "postgresql://kg@replica/kg"


@pytest.mark.parametrize("value", ["0", "-5", "many"])
def test_a_bounded_snapshot_holds_at_least_one_key(
    monkeypatch: pytest.MonkeyPatch, value: str
) -> None:
    monkeypatch.setenv("KEYGUARD_SNAPSHOT_MAX_KEYS", value)
    with pytest.raises(ConfigurationError) as refused:
        load_settings()
    assert refused.value.message.startswith("Invalid settings: KEYGUARD_SNAPSHOT_MAX_KEYS: ")


def test_a_bounded_snapshot_is_off_unless_set(monkeypatch: pytest.MonkeyPatch) -> None:
    assert load_settings().snapshot_max_keys is None
    monkeypatch.setenv("KEYGUARD_SNAPSHOT_MAX_KEYS", "100000")
    assert load_settings().snapshot_max_keys == 100_000
