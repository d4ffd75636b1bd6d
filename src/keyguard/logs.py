"""Logging that never writes a secret.

Keys may arrive in the legacy ``?appid=`` query parameter, so access log lines
carry the path only, never the query string; and an operator's one-time console
sign-in link carries its token in the path, so that part of a path is redacted.
"""

import logging
import re
from typing import Any

# /console/link/{token}: the token signs a browser in to an account, once.
SIGN_IN_LINK = re.compile(r"(/console/link/)[^/]+")
REDACTED = "[redacted]"


def loggable_path(path: str) -> str:
    """``path`` as a log may show it: no query string, no sign-in link token."""
    return SIGN_IN_LINK.sub(rf"\g<1>{REDACTED}", path.partition("?")[0])


class RedactPaths(logging.Filter):
    """Make the path of uvicorn's access log records loggable (:func:`loggable_path`)."""

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args
        if isinstance(args, tuple) and len(args) >= 3 and isinstance(args[2], str):
            record.args = (*args[:2], loggable_path(args[2]), *args[3:])
        return True


def uvicorn_log_config() -> dict[str, Any]:
    """uvicorn's default logging, with :class:`RedactPaths` on the access log."""
    from uvicorn.config import LOGGING_CONFIG

    config: dict[str, Any] = {**LOGGING_CONFIG}
    config["filters"] = {"redact_paths": {"()": "keyguard.logs.RedactPaths"}}
    config["handlers"] = {name: {**handler} for name, handler in LOGGING_CONFIG["handlers"].items()}
    config["handlers"]["access"]["filters"] = ["redact_paths"]
    config["loggers"] = {
        **LOGGING_CONFIG["loggers"],
        "keyguard": {"handlers": ["default"], "level": "INFO", "propagate": False},
    }
    return config
