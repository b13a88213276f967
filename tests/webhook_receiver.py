"""A webhook endpoint on the loopback for tests and benchmarks: it answers each POST
with the next status of its script (then 200) and keeps what came, with arrival times."""

from __future__ import annotations

import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class _Server(ThreadingHTTPServer):
    # socketserver's listen backlog is 5: two engines sending 60 deliveries at once
    # on a loaded box overflowed it, and connections were reset (a failed try, a retry)
    request_queue_size = 128


class Receiver:
    def __init__(
        self, script: list[int] | None = None, path: str = "/hook", delay: float = 0.0
    ) -> None:
        self.script = script or []
        self.delay = delay  # seconds before each answer: a slow receiver
        # (headers, body, the status answered, time.monotonic() of arrival)
        self.got: list[tuple[dict[str, str], bytes, int, float]] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 (the stdlib's name)
                body = self.rfile.read(int(self.headers["Content-Length"]))
                time.sleep(receiver.delay)  # a thread per request: others are not held
                n = len(receiver.got)
                status = receiver.script[n] if n < len(receiver.script) else 200
                receiver.got.append((dict(self.headers.items()), body, status, time.monotonic()))
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = _Server(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}{path}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def start(self) -> Receiver:
        self.thread.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def wait(self, count: int, within: float) -> None:
        deadline = time.monotonic() + within
        while len(self.got) < count:
            assert time.monotonic() < deadline, f"{len(self.got)} of {count} deliveries came"
            time.sleep(0.05)
