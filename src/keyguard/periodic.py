"""A daemon thread that runs one action at a fixed interval."""

import logging
import threading
from collections.abc import Callable

log = logging.getLogger("keyguard")


class Periodic:
    """Call ``action`` every ``interval`` seconds until stopped.

    A failing action is logged by exception type only (its message may quote a
    database URL or a parameter), once per run of failures, and retried at the
    next tick; recovery is logged too. With
    ``run_on_stop``, :meth:`stop` calls the action once more, so a graceful
    shutdown leaves nothing behind.
    """

    def __init__(
        self, name: str, action: Callable[[], object], interval: float, *, run_on_stop: bool = False
    ) -> None:
        self.name = name
        self._action = action
        self._interval = interval
        self._run_on_stop = run_on_stop
        self._stop = threading.Event()
        self._failing = False
        self._thread = threading.Thread(target=self._loop, name=f"keyguard-{name}", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=10)
        if self._run_on_stop:
            self._tick()

    def _loop(self) -> None:
        while not self._stop.wait(self._interval):
            self._tick()

    def _tick(self) -> None:
        try:
            self._action()
        except Exception as error:
            if not self._failing:
                log.warning("%s failed, will retry: %s", self.name, type(error).__name__)
            self._failing = True
            return
        if self._failing:
            log.warning("%s works again", self.name)
            self._failing = False
