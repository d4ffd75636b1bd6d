"""Logging that never writes a secret.

Keys may arrive in the legacy ``?appid=`` query parameter, so access log lines
carry the path only, never the query string.
"""

import logging
from typing import Any


class DropQueryString(logging.Filter):
    """Strip the query string from uvicorn's access log records."""

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args
        if isinstance(args, tuple) and len(args) >= 3 and isinstance(args[2], str):
            record.args = (*args[:2], args[2].partition("?")[0], *args[3:])
        return True


def uvicorn_log_config() -> dict[str, Any]:
    """uvicorn's default logging, with :class:`DropQueryString` on the access log."""
    from uvicorn.config import LOGGING_CONFIG

    config: dict[str, Any] = {**LOGGING_CONFIG}
    config["filters"] = {"drop_query": {"()": "keyguard.logs.DropQueryString"}}
    config["handlers"] = {name: {**handler} for name, handler in LOGGING_CONFIG["handlers"].items()}
    config["handlers"]["access"]["filters"] = ["drop_query"]
    config["loggers"] = {
        **LOGGING_CONFIG["loggers"],
        "keyguard": {"handlers": ["default"], "level": "INFO", "propagate": False},
    }
    return config
