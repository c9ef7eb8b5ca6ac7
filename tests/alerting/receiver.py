"""A real local HTTP webhook receiver for the alert tests: records every
POST, refuses while told to (503), and can answer late."""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


class Receiver:
    def __init__(self, refuse_first: int = 0, delay: float = 0.0) -> None:
        self.refuse_first = refuse_first
        self.delay = delay
        self.refusing = False
        self.answer = 200  # when not refusing
        self.location = ""  # sent with a 3xx answer
        self.attempts: list[dict[str, Any]] = []  # every POST, refused or not
        self.accepted: list[dict[str, Any]] = []  # bodies answered 200, in order
        self.ids: list[int] = []  # X-Alert-Transition-Id of the accepted ones
        self.gets = 0
        self.changed = threading.Condition()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                if receiver.delay:
                    time.sleep(receiver.delay)
                with receiver.changed:
                    receiver.attempts.append(body)
                    refuse = receiver.refusing or len(receiver.attempts) <= receiver.refuse_first
                    if not refuse and receiver.answer == 200:
                        receiver.accepted.append(body)
                        receiver.ids.append(int(self.headers["X-Alert-Transition-Id"]))
                    receiver.changed.notify_all()
                status = 503 if refuse else receiver.answer
                self.send_response(status)
                if 300 <= status < 400:
                    self.send_header("Location", receiver.location)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def do_GET(self) -> None:
                # Where a client that follows a redirect with a GET ends up.
                with receiver.changed:
                    receiver.gets += 1
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook?secret=s3cret"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> Receiver:
        self.thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.server.shutdown()
        self.server.server_close()

    def wait_for(self, accepted: int, timeout: float) -> list[dict[str, Any]]:
        """Blocks until `accepted` POSTs were answered 200 (or fails)."""
        with self.changed:
            if not self.changed.wait_for(lambda: len(self.accepted) >= accepted, timeout):
                raise AssertionError(f"{len(self.accepted)} of {accepted} delivered; attempts: {self.attempts}")
            return list(self.accepted)
