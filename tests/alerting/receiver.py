"""Real local HTTP webhook receivers for the alert tests: one records every
POST, refuses while told to (503), and can answer late; one drips its
answer a byte at a time."""

from __future__ import annotations

import json
import socket
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


class Dripper:
    """A receiver that reads each POST and then drips a whole, valid 200
    answer one byte per `interval` seconds: every single read of the sender
    gets a byte well within any per-read timeout, but the answer as a whole
    takes len(ANSWER) x interval. Records whether the sender hung up first."""

    ANSWER = b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"

    def __init__(self, interval: float) -> None:
        self.interval = interval
        self.requests = 0
        self.cut_off = threading.Event()  # the sender closed before the whole answer
        self.answered = threading.Event()  # the whole answer was sent
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.listener.getsockname()[1]}/hook"
        self.thread = threading.Thread(target=self._serve, daemon=True)

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return  # closed by __exit__
            with conn:
                received = b""
                while b"\r\n\r\n" not in received:
                    chunk = conn.recv(65536)
                    if not chunk:
                        break
                    received += chunk
                self.requests += 1
                try:
                    for byte in self.ANSWER:
                        conn.sendall(bytes([byte]))
                        time.sleep(self.interval)
                except OSError:
                    self.cut_off.set()
                else:
                    self.answered.set()

    def __enter__(self) -> Dripper:
        self.thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.listener.close()
