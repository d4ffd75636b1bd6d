"""Scope groups and access levels.

A key either has full access (``scopes_enabled`` false) or exactly the levels its
scope groups grant. The groups are data: Wavix's thirteen by default, or those a
deployment's route map declares.
"""

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from enum import IntEnum

WAVIX_GROUPS: tuple[str, ...] = (
    "numbers",
    "trunks",
    "calls",
    "messages",
    "recordings",
    "campaigns",
    "two_fa",
    "validator",
    "webhooks",
    "embeddable",
    "billing",
    "account",
    "subaccounts",
)


class Level(IntEnum):
    """What a scope group allows; a higher level includes the lower ones."""

    NONE = 0
    READ = 1
    WRITE = 2

    @property
    def label(self) -> str:
        return self.name.lower()

    @classmethod
    def parse(cls, text: str) -> "Level":
        return cls[text.upper()]


LEVEL_NAMES: tuple[str, ...] = tuple(level.label for level in Level)


@dataclass(frozen=True, slots=True)
class ScopeGroups:
    """The ordered names of the scope groups a deployment uses."""

    names: tuple[str, ...] = WAVIX_GROUPS

    def __post_init__(self) -> None:
        if len(set(self.names)) != len(self.names):
            raise ValueError("scope group names must be unique")

    def __contains__(self, name: object) -> bool:
        return name in self.names

    def __iter__(self) -> Iterator[str]:
        return iter(self.names)

    def complete(self, granted: Mapping[str, Level]) -> dict[str, Level]:
        """Every group in order, with ``none`` for those not granted."""
        return {name: granted.get(name, Level.NONE) for name in self.names}


def compact(levels: Mapping[str, Level]) -> dict[str, str]:
    """The granted levels only, as stored: ``{"numbers": "read"}``."""
    return {name: level.label for name, level in levels.items() if level is not Level.NONE}


def expand(stored: Mapping[str, str]) -> dict[str, Level]:
    """The inverse of :func:`compact`."""
    return {name: Level.parse(text) for name, text in stored.items()}
