"""GitHub's secret scanning public keys, from the file ``KEYGUARD_GITHUB_SCANNING_KEYS`` names.

The file is read at start, where one that cannot be read or parsed refuses the
start. It is read again for every report (a few kilobytes; reports are rare) and
parsed again when its content changed, so that refreshing it from GitHub needs no
restart; a new content that cannot be used is logged, and the keys read before
stay in use.
"""

import logging
from pathlib import Path

from keyguard.domain.scanning import KEYS_URL, PublicKeys, parse_public_keys
from keyguard.errors import ConfigurationError

log = logging.getLogger("keyguard.scanning")


class ScanningKeys:
    """The keys as the file holds them now."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._seen = _read(path)
        try:
            self._keys = _parse(self._seen)
        except ValueError as error:
            raise ConfigurationError(
                f"Cannot use KEYGUARD_GITHUB_SCANNING_KEYS {path}: {error}. Download GitHub's "
                f"keys into it (curl -fsS {KEYS_URL} -o {path}), or unset the variable to turn "
                "POST /v1/secret-scanning/github off."
            ) from None

    def current(self) -> PublicKeys:
        """The keys, parsed again if the file changed since they were."""
        content = _read(self.path)
        if content != self._seen:
            self._seen = content
            try:
                self._keys = _parse(content)
            except ValueError as error:
                log.warning(
                    "%s changed but cannot be used (%s); the keys read before stay in use",
                    self.path,
                    error,
                )
        return self._keys


def _read(path: Path) -> bytes | str:
    """The file's bytes, or why it cannot be read."""
    try:
        return path.read_bytes()
    except OSError as error:
        return error.strerror or type(error).__name__


def _parse(content: bytes | str) -> PublicKeys:
    if isinstance(content, str):
        raise ValueError(content)
    try:
        return parse_public_keys(content.decode("utf-8"))
    except UnicodeDecodeError:
        raise ValueError("it is not UTF-8") from None
