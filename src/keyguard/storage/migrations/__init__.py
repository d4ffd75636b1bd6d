"""Alembic migrations, run from code: ``keyguard migrate`` and ``keyguard serve``."""

from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection

_HERE = Path(__file__).parent


def alembic_config(connection: Connection | None = None) -> Config:
    config = Config()
    config.set_main_option("script_location", str(_HERE))
    config.attributes["connection"] = connection
    return config


def upgrade(connection: Connection, revision: str = "head") -> None:
    command.upgrade(alembic_config(connection), revision)


def is_behind(connection: Connection) -> bool:
    """Whether the database lacks a migration of this version; one newer than it is not."""
    script = ScriptDirectory.from_config(alembic_config())
    applied = set(MigrationContext.configure(connection).get_current_heads())
    known = {revision.revision for revision in script.walk_revisions()}
    return not applied or (script.get_current_head() not in applied and applied <= known)
