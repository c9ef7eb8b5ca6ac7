"""Log filters (settings.LOGGING).

channels-redis logs a full traceback every second from each process while
Redis is unreachable ("Unexpected exception in receive task"). The hub
already says once that the layer is down and once that it is back
(realtime/layer.py); the repeats only bury that, so identical records from
the named loggers pass at most once per `seconds`, the next one saying how
many were held back.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable


class RepeatFilter(logging.Filter):
    def __init__(
        self,
        loggers: tuple[str, ...] | list[str] = ("channels_redis",),
        seconds: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__()
        self.loggers = tuple(loggers)
        self.seconds = seconds
        self.clock = clock
        # (logger name, message template) -> [when the next one may pass, how many were held back]
        self._runs: dict[tuple[str, str], list[float | int]] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        if not record.name.startswith(self.loggers):
            return True
        key = (record.name, str(record.msg))
        now = self.clock()
        run = self._runs.get(key)
        if run is not None and now < run[0]:
            run[1] += 1
            return False
        held_back = run[1] if run is not None else 0
        self._runs[key] = [now + self.seconds, 0]
        if held_back:
            # A fixed text without "%": safe next to the record's own args.
            record.msg = f"{record.msg} [{held_back} more like this in the last {self.seconds:g} s]"
        return True
