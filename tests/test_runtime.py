"""Composition: settings become a running keyguard, or a sentence that says what to fix."""

import logging
import re
from pathlib import Path

import pytest
from starlette.testclient import TestClient

from keyguard.config import Settings, load_settings
from keyguard.domain.network import ClientIPHeader
from keyguard.domain.routes import UnknownRoutes
from keyguard.errors import ConfigurationError
from keyguard.runtime import MANAGEMENT_ROUTES, Keyguard, not_set_up
from keyguard.storage.migrations import upgrade
from keyguard.storage.sql import SQLStore
from tests.conftest import TEST_SECRET

SHOP_ROUTES = (
    "groups\torders\treports\nGET\t/v1/orders\torders\tread\nPOST\t/v1/orders\torders\twrite\n"
)


def _settings(tmp_path: Path, **overrides: object) -> Settings:
    values: dict[str, object] = {
        "database_url": f"sqlite:///{tmp_path}/keyguard.db",
        "secret_key": TEST_SECRET,
        **overrides,
    }
    return Settings(**values)  # type: ignore[arg-type]


def test_route_map_file_replaces_wavix_routes_and_keeps_management(tmp_path: Path) -> None:
    routes = tmp_path / "shop.tsv"
    routes.write_text(SHOP_ROUTES)
    keyguard = Keyguard(_settings(tmp_path, routes=routes))
    assert keyguard.routes.groups.names == ("orders", "reports")
    assert keyguard.service.groups.names == ("orders", "reports")
    orders = keyguard.routes.match("POST", "/v1/orders")
    assert orders is not None
    assert orders.label == "orders:write"
    management = keyguard.routes.match("PATCH", "/v1/api-keys/5")
    assert management is not None
    assert management.needs_full_access
    assert keyguard.routes.match("GET", "/v1/numbers") is None


def test_broken_route_map_stops_the_start_naming_file_and_line(tmp_path: Path) -> None:
    routes = tmp_path / "shop.tsv"
    routes.write_text(SHOP_ROUTES + "GET\t/v1/reports\treportz\tread\n")
    with pytest.raises(ConfigurationError) as caught:
        Keyguard(_settings(tmp_path, routes=routes))
    assert caught.value.message == f"Invalid route map: {routes}:4: unknown scope group 'reportz'"


def test_route_map_with_spaces_for_tabs_stops_the_start_saying_so(tmp_path: Path) -> None:
    routes = tmp_path / "shop.tsv"
    routes.write_text(SHOP_ROUTES + "GET     /v1/reports     reports     read\n")

    with pytest.raises(ConfigurationError) as caught:
        Keyguard(_settings(tmp_path, routes=routes))

    assert caught.value.message == (
        f"Invalid route map: {routes}:4: columns must be separated by tabs, not spaces"
    )


def _keys_on_wavix_map(tmp_path: Path, *grants: dict[str, object]) -> None:
    """An account on Wavix's map, with a scoped key for each of ``grants``."""
    keyguard = Keyguard(_settings(tmp_path))
    keyguard.store.migrate()
    account, _first = keyguard.service.create_account("acme")
    for grant in grants:
        keyguard.service.create_key(account.id, {"label": "k", "scopes_enabled": True, **grant})
    keyguard.store.close()


def _started(settings: Settings) -> None:
    keyguard = Keyguard(settings)
    keyguard.start()
    keyguard.stop()


def test_if_keys_grant_groups_the_new_route_map_lacks_then_the_start_warns_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    _keys_on_wavix_map(
        tmp_path,
        {"numbers": {"allow": "read"}},
        {"numbers": {"allow": "write"}, "messages": {"allow": "write"}},
        {},  # scoped, granting nothing
    )
    routes = tmp_path / "shop.tsv"
    routes.write_text(SHOP_ROUTES)

    with caplog.at_level(logging.WARNING, logger="keyguard"):
        _started(_settings(tmp_path, routes=routes))

    assert [record.getMessage() for record in caplog.records] == [
        f"2 keys grant scope groups that the route map {routes} does not have "
        "(messages, numbers): those grants allow nothing until the map declares the "
        "groups again"
    ]


def test_if_every_granted_group_is_in_the_route_map_then_the_start_is_quiet(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    _keys_on_wavix_map(tmp_path, {"numbers": {"allow": "read"}})
    routes = tmp_path / "numbers.tsv"
    routes.write_text("groups\tnumbers\nGET\t/v1/numbers\tnumbers\tread\n")

    with caplog.at_level(logging.WARNING, logger="keyguard"):
        _started(_settings(tmp_path, routes=routes))
        _started(_settings(tmp_path))

    assert caplog.records == []


def test_missing_route_map_is_explained(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match=r"Cannot read the route map .*missing\.tsv"):
        Keyguard(_settings(tmp_path, routes=tmp_path / "missing.tsv"))


def test_client_ip_header_defaults_to_x_forwarded_for(tmp_path: Path) -> None:
    assert Keyguard(_settings(tmp_path)).client_ip_header is ClientIPHeader.X_FORWARDED_FOR


def test_unknown_routes_setting_reaches_the_map(tmp_path: Path) -> None:
    keyguard = Keyguard(_settings(tmp_path, unknown_routes="deny"))
    assert keyguard.routes.unknown is UnknownRoutes.DENY


def test_settings_come_from_keyguard_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KEYGUARD_TRUSTED_PROXIES", "127.0.0.1, 10.0.0.0/8")
    monkeypatch.setenv("KEYGUARD_SECRET_DISPLAY", "masked")
    monkeypatch.setenv("KEYGUARD_UNKNOWN_ROUTES", "deny")
    monkeypatch.setenv("KEYGUARD_CLIENT_IP_HEADER", "X-Real-IP")
    settings = load_settings()
    assert settings.trusted_proxies == ["127.0.0.1", "10.0.0.0/8"]
    assert settings.client_ip_header is ClientIPHeader.X_REAL_IP
    assert settings.secret_display.value == "masked"
    assert settings.unknown_routes is UnknownRoutes.DENY


@pytest.mark.parametrize(
    ("name", "value", "problem"),
    [
        ("KEYGUARD_TRUSTED_PROXIES", "10.0.0.1/8", "KEYGUARD_TRUSTED_PROXIES"),
        ("KEYGUARD_SECRET_DISPLAY", "partial", "KEYGUARD_SECRET_DISPLAY"),
        ("KEYGUARD_UNKNOWN_ROUTES", "allow", "KEYGUARD_UNKNOWN_ROUTES"),
        ("KEYGUARD_CLIENT_IP_HEADER", "forwarded", "KEYGUARD_CLIENT_IP_HEADER"),
        ("KEYGUARD_USAGE_FLUSH_INTERVAL", "0", "KEYGUARD_USAGE_FLUSH_INTERVAL"),
    ],
)
def test_bad_setting_fails_loudly_naming_the_variable(
    monkeypatch: pytest.MonkeyPatch, name: str, value: str, problem: str
) -> None:
    monkeypatch.setenv(name, value)
    with pytest.raises(ConfigurationError, match=f"^Invalid settings: {problem}: "):
        load_settings()


def test_short_secret_file_is_refused(tmp_path: Path) -> None:
    secret_file = tmp_path / "keyguard.secret"
    secret_file.write_text("short")
    secret_file.chmod(0o600)
    with pytest.raises(ConfigurationError, match="at least 32 bytes"):
        Keyguard(_settings(tmp_path, secret_key=None))


def test_generated_secret_lives_beside_the_database(tmp_path: Path) -> None:
    Keyguard(_settings(tmp_path, secret_key=None))
    assert (tmp_path / "keyguard.secret").stat().st_mode & 0o777 == 0o600


def test_start_on_a_database_keyguard_never_set_up_stops_naming_what_to_run(
    settings: Settings,
) -> None:
    """An app that embeds keyguard with the wrong KEYGUARD_DATABASE_URL gets a new, empty
    database: it must not start refusing every key, nor set that database up."""
    keyguard = Keyguard(settings)
    try:
        with pytest.raises(ConfigurationError) as caught:
            keyguard.start()
        assert keyguard.store.needs_migration()
    finally:
        keyguard.stop()
    assert caught.value.message.startswith("The database ")
    assert caught.value.message.endswith(
        "has no keyguard schema, or an older one. Give this process the keyguard service's "
        "own database and server secret (its KEYGUARD_DATABASE_URL, and KEYGUARD_SECRET_KEY "
        "or KEYGUARD_SECRET_FILE), and run `keyguard migrate` with them."
    )


def test_start_on_an_older_schema_stops_and_after_migrate_starts(settings: Settings) -> None:
    keyguard = Keyguard(settings)
    sql = keyguard.store
    assert isinstance(sql, SQLStore)
    with sql.engine.begin() as connection:
        upgrade(connection, "0003")
    try:
        with pytest.raises(ConfigurationError, match="run `keyguard migrate`"):
            keyguard.start()
        keyguard.store.migrate()
        keyguard.start()
        assert not keyguard.store.needs_migration()
    finally:
        keyguard.stop()


def test_the_sentence_shows_where_a_relative_sqlite_path_points_and_hides_passwords() -> None:
    relative = not_set_up("sqlite:///./data/keyguard.db")
    remote = not_set_up("postgresql://keyguard:hunter2@db.internal/keyguard")

    assert f"sqlite:///./data/keyguard.db ({Path('data/keyguard.db').resolve()})" in relative
    assert "hunter2" not in remote
    assert "postgresql://keyguard:***@db.internal/keyguard" in remote


def test_management_routes_are_exactly_the_routes_the_api_serves_under_v1(
    client: TestClient,
) -> None:
    """A route the API serves but the map lacks would be refused under
    KEYGUARD_UNKNOWN_ROUTES=deny; one the map has but the API lacks is dead weight."""
    document = client.get("/openapi.json").json()
    served = {
        (method.upper(), re.sub(r"\{[^}]+\}", "{}", path))
        for path, item in document["paths"].items()
        if path.startswith("/v1/")
        for method in item
    }
    mapped = {
        (route.method, re.sub(r"\{[^}]+\}", "{}", route.template)) for route in MANAGEMENT_ROUTES
    }
    assert served == mapped
