"""keyguard's settings: ``KEYGUARD_*`` environment variables, read once.

Only the CLI entry point and the app factory build a :class:`Settings`; every
other module receives what it needs through its constructor.
"""

import difflib
import logging
import os
from collections.abc import Mapping
from datetime import timedelta
from enum import Enum
from pathlib import Path
from typing import Annotated
from urllib.parse import urlsplit

from pydantic import Field, SecretStr, ValidationError, ValidationInfo, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from keyguard.domain import keys
from keyguard.domain.events import WHSEC_COMMAND, signing_secret
from keyguard.domain.fields import parse_duration
from keyguard.domain.network import ClientIPHeader, canonical_entry
from keyguard.domain.routes import UnknownRoutes
from keyguard.errors import ConfigurationError
from keyguard.vault import MIN_SECRET_BYTES

log = logging.getLogger("keyguard")

DEFAULT_DATABASE_URL = "sqlite:///./data/keyguard.db"


class SecretDisplay(Enum):
    """How a key's secret appears outside its create response."""

    FULL = "full"
    MASKED = "masked"


class Settings(BaseSettings):
    """Every setting, with the default that runs keyguard on SQLite."""

    model_config = SettingsConfigDict(env_prefix="KEYGUARD_", frozen=True, extra="ignore")

    database_url: str = DEFAULT_DATABASE_URL
    database_pool_size: int = Field(
        default=5, ge=1, le=100, description="Database connections per process (PostgreSQL)."
    )
    database_read_url: str | None = Field(
        default=None,
        description="A PostgreSQL streaming replica of database_url's database: the key "
        "snapshot follows changes there, by polling; writes and management reads stay on "
        "database_url.",
    )
    secret_key: SecretStr | None = Field(
        default=None, description="Server secret; generated into secret_file when unset."
    )
    secret_file: Path | None = Field(
        default=None, description="Where a generated secret lives; default: beside the database."
    )
    previous_secret_key: SecretStr | None = Field(
        default=None,
        description="While the server secret is rotated: the secret being replaced, still "
        "accepted for keys not yet rewritten.",
    )
    previous_secret_file: Path | None = Field(
        default=None, description="The previous secret in a file (mode 0600) instead."
    )
    secret_display: SecretDisplay = SecretDisplay.FULL
    key_prefix: str = "kg"
    refresh_interval: float = Field(
        default=0.25, gt=0, le=1, description="Seconds between reads of the change feed."
    )
    snapshot_max_keys: int | None = Field(
        default=None,
        ge=1,
        description="Hold at most this many keys per process, those used lately (a "
        "bounded snapshot, for key bases beyond memory); unset: every live key.",
    )
    usage_flush_interval: float = Field(
        default=1.0, gt=0, le=3600, description="Seconds between last_used_at flushes."
    )
    minute_counts_days: int = Field(
        default=7, ge=1, le=3650, description="Days per-key counts by minute are kept."
    )
    hour_counts_days: int = Field(
        default=90, ge=1, le=3650, description="Days per-key counts by hour are kept."
    )
    day_counts_days: int = Field(
        default=730, ge=1, le=36500, description="Days per-key counts by day are kept."
    )
    routes: Path | None = Field(
        default=None, description="A route map file; default: Wavix's routes and scopes."
    )
    unknown_routes: UnknownRoutes = Field(
        default=UnknownRoutes.FULL_ACCESS_ONLY,
        description="Paths that match no route: full-access keys only, or deny for everyone.",
    )
    verify_token: SecretStr | None = Field(
        default=None, description="When set, POST /auth/verify requires it as a bearer token."
    )
    admin_token: SecretStr | None = Field(
        default=None,
        description="Enables the operator API under /admin/v1/ for callers presenting it.",
    )
    metrics_token: SecretStr | None = Field(
        default=None, description="When set, GET /metrics requires it as a bearer token."
    )
    github_scanning_keys: Path | None = Field(
        default=None,
        description="GitHub's secret scanning public keys, a JSON file as "
        "https://api.github.com/meta/public_keys/secret_scanning serves it: enables "
        "POST /v1/secret-scanning/github.",
    )
    auth_failures_per_minute: int = Field(
        default=30, ge=0, description="Failed authentications per client IP; 0 = no limit."
    )
    management_writes_per_minute: int = Field(
        default=120, ge=0, description="Key changes per account through the API; 0 = no limit."
    )
    max_body_bytes: int = Field(default=64 * 1024, ge=1024, le=16 * 1024 * 1024)
    max_header_bytes: int = Field(default=16 * 1024, ge=1024, le=1024 * 1024)
    trusted_proxies: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Comma-separated addresses or CIDR ranges of proxies whose "
        "client_ip_header is believed.",
    )
    redis_url: str | None = Field(
        default=None,
        description="Redis (redis://host:6379/0) for rate-limit counts shared by every "
        "process; without it they are shared through the database.",
    )
    redis_prefix: str = Field(
        default="keyguard:", max_length=64, description="Prefix of keyguard's Redis keys."
    )
    client_ip_header: ClientIPHeader = Field(
        default=ClientIPHeader.X_FORWARDED_FOR,
        description="The one header a trusted proxy names the client in: x-forwarded-for "
        "(its right-most address that is not a trusted proxy) or x-real-ip.",
    )

    webhook_url: str | None = Field(
        default=None,
        description="Where lifecycle events are posted (http or https); webhooks are off "
        "when unset.",
    )
    webhook_secret: SecretStr | None = Field(
        default=None,
        validate_default=True,
        description="The webhook endpoint's signing secret, whsec_ and base64 (Standard "
        "Webhooks); required with webhook_url.",
    )
    expiry_warning: timedelta = Field(
        default=timedelta(days=7),
        description="How long before a key expires key.expiring is sent: 7d, 12h, 30m, "
        "45s, or ISO 8601 (P7D).",
    )

    @field_validator("database_read_url")
    @classmethod
    def _replica(cls, value: str | None, info: ValidationInfo) -> str | None:
        if value is None:
            return None
        # The message never quotes a URL: it may carry a password.
        if not _is_postgres(value):
            raise ValueError("must be a postgresql:// URL: read replicas are PostgreSQL only")
        if not _is_postgres(info.data.get("database_url", DEFAULT_DATABASE_URL)):
            raise ValueError(
                "needs KEYGUARD_DATABASE_URL on PostgreSQL too (the replica's primary); "
                "unset it on SQLite or memory://"
            )
        return value

    @field_validator("webhook_url")
    @classmethod
    def _webhook_url(cls, value: str | None) -> str | None:
        if value is None:
            return None
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError("must be an http:// or https:// URL with a host")
        return value

    @field_validator("webhook_secret")
    @classmethod
    def _webhook_secret(cls, value: SecretStr | None, info: ValidationInfo) -> SecretStr | None:
        if value is None:
            if info.data.get("webhook_url") is not None:
                raise ValueError(
                    "is required when KEYGUARD_WEBHOOK_URL is set: the receiver verifies "
                    "every event with it. Make one with: " + WHSEC_COMMAND
                )
            return None
        try:
            signing_secret(value.get_secret_value())
        except ValueError as error:
            # The message describes the value's shape, never quotes it.
            raise ValueError(f"{error}; make one with: {WHSEC_COMMAND}") from None
        return value

    @field_validator("expiry_warning", mode="before")
    @classmethod
    def _duration(cls, value: object) -> object:
        if not isinstance(value, str) or value.startswith("P"):  # ISO 8601 too: P7D
            return value
        duration = parse_duration(value.strip())
        if duration is None:
            raise ValueError("must be a duration such as 7d, 12h, 30m or 45s")
        return duration

    @field_validator("expiry_warning")
    @classmethod
    def _positive(cls, value: timedelta) -> timedelta:
        if value <= timedelta(0):
            raise ValueError("must be longer than zero, e.g. 7d")
        return value

    @field_validator("admin_token", "metrics_token", "verify_token")
    @classmethod
    def _long_token(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and len(value.get_secret_value()) < 32:
            raise ValueError("must be at least 32 characters")
        return value

    @field_validator("key_prefix")
    @classmethod
    def _prefix(cls, value: str) -> str:
        if not keys.is_valid_prefix(value):
            raise ValueError("must be 1-16 lowercase letters or digits")
        return value

    @field_validator("secret_key", "previous_secret_key")
    @classmethod
    def _long_secret(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and len(value.get_secret_value().encode()) < MIN_SECRET_BYTES:
            raise ValueError(f"must be at least {MIN_SECRET_BYTES} bytes")
        return value

    @field_validator("previous_secret_file")
    @classmethod
    def _one_previous_secret(cls, value: Path | None, info: ValidationInfo) -> Path | None:
        if value is not None and info.data.get("previous_secret_key") is not None:
            raise ValueError("set either KEYGUARD_PREVIOUS_SECRET_KEY or this, not both")
        return value

    @field_validator("trusted_proxies", mode="before")
    @classmethod
    def _proxies(cls, value: object) -> object:
        if isinstance(value, str):
            value = [entry.strip() for entry in value.split(",") if entry.strip()]
        if isinstance(value, list):
            for entry in value:
                if not isinstance(entry, str) or canonical_entry(entry) is None:
                    raise ValueError(f"{entry!r} is not an IP address or CIDR range")
        return value

    def resolved_secret_file(self) -> Path:
        if self.secret_file is not None:
            return self.secret_file
        if self.database_url.startswith("sqlite:///") and self.database_url != "sqlite:///":
            database = Path(self.database_url.removeprefix("sqlite:///"))
            return database.parent / "keyguard.secret"
        return Path("./data/keyguard.secret")


def _is_postgres(url: str) -> bool:
    return url.partition(":")[0].partition("+")[0] in ("postgresql", "postgres")


def load_settings() -> Settings:
    """Settings from the environment, or a :class:`ConfigurationError` that says what to fix.

    A ``KEYGUARD_*`` variable that names no setting is most likely a typo of one
    that then keeps its default: it is reported, with the closest known name.
    """
    for warning in unknown_variables(os.environ):
        log.warning("%s", warning)
    try:
        return Settings()
    except ValidationError as error:
        problems = "; ".join(
            f"KEYGUARD_{'_'.join(str(part) for part in issue['loc']).upper()}: {issue['msg']}"
            for issue in error.errors()
        )
        raise ConfigurationError(f"Invalid settings: {problems}.") from None


def unknown_variables(environ: Mapping[str, str]) -> list[str]:
    """A sentence for each ``KEYGUARD_*`` variable in ``environ`` that is no setting."""
    known = [name.upper() for name in Settings.model_fields]
    sentences = []
    for variable in sorted(environ):
        prefix, _, name = variable.partition("_")
        # KEYGUARD_TEST_* configure the test suite, not keyguard.
        if prefix != "KEYGUARD" or name in known or name.startswith("TEST_"):
            continue
        closest = difflib.get_close_matches(name, known, n=1)
        hint = f"; did you mean KEYGUARD_{closest[0]}?" if closest else ""
        sentences.append(f"{variable} is not a keyguard setting and is ignored{hint}")
    return sentences
