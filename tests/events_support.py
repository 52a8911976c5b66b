"""A real webhook receiver for the event tests: a local HTTP server that checks the
signature of every delivery it gets, and can be told to fail or to answer slowly."""

import asyncio
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from voms.crypto import signature_matches
from voms.services.events.cloudevents import SIGNATURE_HEADER
from voms.services.events.relay import Relay

SECRET = "webhook-secret-0123456789"


class WebhookReceiver:
    """``url`` to give a webhook; ``received`` the CloudEvents in arrival order."""

    def __init__(self, secret: str = SECRET) -> None:
        self.secret = secret
        self.received: list[dict[str, Any]] = []
        self.bodies: list[bytes] = []
        self.bad_signatures = 0
        self.fail_with: int | None = None  # answer this status instead of 204
        self.delay_s = 0.0
        self._lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keeps the relay's connection alive

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", "0"))
                body = self.rfile.read(length)
                if len(body) < length:  # the sender died mid-request: nothing was sent
                    self.close_connection = True
                    return
                if receiver.delay_s:
                    time.sleep(receiver.delay_s)
                if not signature_matches(receiver.secret, body, self.headers.get(SIGNATURE_HEADER)):
                    with receiver._lock:
                        receiver.bad_signatures += 1
                    self.send_response(401)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                if receiver.fail_with is not None:
                    self.send_response(receiver.fail_with)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                with receiver._lock:
                    receiver.received.append(json.loads(body))
                    receiver.bodies.append(body)
                self.send_response(204)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                return

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> "WebhookReceiver":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()

    def ids(self) -> list[str]:
        with self._lock:
            return [event["id"] for event in self.received]


def run_cycle(relay: Relay) -> int:
    """One relay cycle in an event loop of its own, its connections closed after it."""

    async def once() -> int:
        try:
            return await relay.cycle()
        finally:
            await relay.close()

    return asyncio.run(once())
