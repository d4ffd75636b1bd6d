"""PostgreSQL LISTEN/NOTIFY as a :class:`~keyguard.storage.ChangeSignal`.

Every write transaction notifies ``keyguard_changes`` on commit; each process
listens on its own connection and refreshes its snapshot when woken. Polling
still runs underneath, so a lost notification only delays a change to the
polling interval, never past it.
"""

import logging
import time

import psycopg

log = logging.getLogger("keyguard.storage")

_RETRY_SECONDS = 0.5


class PostgresChangeSignal:
    """A dedicated autocommit connection that LISTENs, reconnecting as needed."""

    def __init__(self, conninfo: str, channel: str) -> None:
        self._conninfo = conninfo
        self._channel = channel
        self._connection: psycopg.Connection[tuple[object, ...]] | None = None

    def wait(self, timeout: float) -> bool:
        try:
            connection = self._connect()
            for _notice in connection.notifies(timeout=timeout, stop_after=1):
                return True
            return False
        except psycopg.Error as error:
            if self._connection is not None:  # log once per outage, not per retry
                log.warning("change notifications lost, reconnecting: %s", type(error).__name__)
            self.close()
            time.sleep(_RETRY_SECONDS)
            return True  # changes may have been missed: refresh

    def _connect(self) -> "psycopg.Connection[tuple[object, ...]]":
        if self._connection is None or self._connection.closed:
            connection = psycopg.connect(self._conninfo, autocommit=True, connect_timeout=5)
            connection.execute(f'LISTEN "{self._channel}"')
            self._connection = connection
        return self._connection

    def close(self) -> None:
        if self._connection is not None:
            self._connection.close()
            self._connection = None
