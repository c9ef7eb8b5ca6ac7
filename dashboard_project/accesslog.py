"""uvicorn's per-connection WebSocket lines belong with the access log.

At INFO uvicorn logs the listening line and start-up on `uvicorn.error`, and
on the same logger three lines for every WebSocket ("[accepted]",
"connection open", "connection closed"): with thousands of viewers
reconnecting they would bury the rest. They pass only when the access log
is on (`UVICORN_ACCESS_LOG=1`, which `./dev` turns into `--access-log`).
"""

from __future__ import annotations

import logging
import os

# The message templates of uvicorn 0.54's websockets protocol and of websockets'
# legacy server (uvicorn hands it its logger).
CONNECTION_TEMPLATES = (
    '%s - "WebSocket %s" [accepted]',
    '%s - "WebSocket %s" 403',
    '%s - "WebSocket %s" %d',
    "connection open",
    "connection closed",
)


def access_log_on() -> bool:
    return (os.environ.get("UVICORN_ACCESS_LOG") or "0").strip().lower() in {"1", "true", "yes", "on"}


class WebSocketLinesFilter(logging.Filter):
    def __init__(self, enabled: bool | None = None) -> None:
        super().__init__()
        self.enabled = access_log_on() if enabled is None else enabled

    def filter(self, record: logging.LogRecord) -> bool:
        return self.enabled or not (record.levelno == logging.INFO and record.msg in CONNECTION_TEMPLATES)
