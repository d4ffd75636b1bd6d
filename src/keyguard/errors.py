"""The exceptions keyguard raises.

Decisions on the request path are values (``keyguard.decide.Decision``), never
exceptions. Exceptions are for input that a management call refuses and for
infrastructure that is broken::

    KeyguardError
    ├── InvalidInput        a request body or parameter is refused (400 or 422)
    │   └── Conflict        the record's state refuses the change (409)
    ├── Unauthorized        the caller is not who the route requires (401)
    ├── NotFound            no such record for this account (404)
    ├── RateLimited         too many requests; retry after some seconds (429)
    ├── ConfigurationError  settings or files that keyguard cannot start with
    └── StorageUnavailable  the database cannot be reached (503)

The HTTP layer (``keyguard.api``) turns them into Wavix error bodies; the CLI
turns them into a message and an exit code. This module imports nothing.
"""


class KeyguardError(Exception):
    """Base class of every error keyguard raises on purpose."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InvalidInput(KeyguardError):  # noqa: N818 - reads as a fact, like httpx's
    """A request was refused before anything changed.

    ``status`` follows Wavix: 400 for a missing or mistyped parameter, 422 for a
    well-typed value that is not acceptable.
    """

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status

    @classmethod
    def parameter(cls, name: str) -> "InvalidInput":
        return cls(f"Missing or invalid parameter {name}", 400)


class Conflict(InvalidInput):
    """The record exists, but its state refuses the change: an expired key cannot roll."""

    def __init__(self, message: str) -> None:
        super().__init__(message, 409)


class Unauthorized(KeyguardError):  # noqa: N818
    """The caller did not present the credential the route requires."""

    def __init__(self) -> None:
        super().__init__("Unauthorized")


class NotFound(KeyguardError):  # noqa: N818
    """The record does not exist, or belongs to another account."""

    def __init__(self, message: str = "Record not found") -> None:
        super().__init__(message)


class RateLimited(KeyguardError):  # noqa: N818
    """A limit was reached; nothing was changed."""

    def __init__(self, message: str, retry_after: int) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class ConfigurationError(KeyguardError):
    """keyguard cannot start with the settings or files it was given."""


class StorageUnavailable(KeyguardError):  # noqa: N818
    """The database did not answer; nothing was changed."""
