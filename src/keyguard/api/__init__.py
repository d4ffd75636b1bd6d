"""keyguard's HTTP API; the only package that imports the web framework."""

from keyguard.api.app import create_app

__all__ = ["create_app"]
