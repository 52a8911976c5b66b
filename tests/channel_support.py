"""What the channel tests share: a rechargeable subscriber, the app, a watch on the logs."""

import logging
import queue
import threading
import urllib.parse
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from tests import factories
from voms.api.app import create_app
from voms.config import Settings
from voms.db import tables as t
from voms.runtime import Runtime
from voms.services import wallet
from voms.services.auth import CONSOLE

MSISDN = "254700000001"
OTHER = "254700000002"

TWO_OFFERS = [
    {
        "number": 1,
        "name": "10 KES",
        "default": False,
        "credits": [{"balance_type": "CASH", "amount": 1000, "balance_expiry_extension_days": 30}],
        "account_expiry_extension_days": 0,
    },
    {
        "number": 2,
        "name": "50 SMS",
        "default": False,
        "credits": [{"balance_type": "SMS", "amount": 50, "balance_expiry_extension_days": 7}],
        "account_expiry_extension_days": 0,
    },
]


@dataclass
class Shop:
    """Active vouchers of TOPUP10 (10 KES) and BUNDLE (a choice of two offers)."""

    pins: list[str]
    bundle_pins: list[str]
    serials: list[str]


def open_shop(rt: Runtime, count: int = 5) -> Shop:
    factories.standard_catalog(rt)
    factories.subscriber(rt, MSISDN)
    factories.subscriber(rt, OTHER)
    factories.voucher_type(rt, "BUNDLE", scenarios=TWO_OFFERS)
    pairs = factories.active_batch(rt, count=count)
    bundle = factories.active_batch(rt, "BUNDLE", count=2)
    return Shop(
        pins=[pin for _, pin in pairs],
        bundle_pins=[pin for _, pin in bundle],
        serials=[serial for serial, _ in pairs],
    )


def configure(rt: Runtime, **changes: Any) -> None:
    """Change settings of a runtime as the environment would (values are validated)."""
    rt.settings = Settings(**{**rt.settings.model_dump(), **changes})


@pytest.fixture(name="shop")
def shop_fixture(rt: Runtime) -> Shop:
    """The ``shop`` fixture of the channel tests (import ``shop_fixture`` to use it)."""
    return open_shop(rt)


def app_client(rt: Runtime, **settings: Any) -> TestClient:
    """A client of the whole app (enter it to run the lifespan), ``settings`` applied."""
    configure(rt, **settings)
    return TestClient(create_app(rt), raise_server_exceptions=False)


def bad_check_digit(pin: str) -> str:
    return pin[:-1] + str((int(pin[-1]) + 1) % 10)


def balance(rt: Runtime, msisdn: str = MSISDN, balance_type: str = "CASH") -> int:
    found = wallet.get_subscriber(rt, CONSOLE, msisdn)["balances"]
    return sum(b["amount"] for b in found if b["balance_type"] == balance_type)


def transactions(rt: Runtime) -> list[Any]:
    with rt.engine.connect() as conn:
        return conn.execute(select(t.transactions).order_by(t.transactions.c.at)).all()


def assert_never_logged(caplog: pytest.LogCaptureFixture, *secrets: str) -> None:
    """No record (message, arguments, exception text) holds any of ``secrets``."""
    assert caplog.records, "the test should have logged something to look at"
    formatter = logging.Formatter("%(name)s %(message)s")
    for record in caplog.records:
        if record.name.startswith("httpx"):
            continue  # the test's own HTTP client, playing the gateway
        line = formatter.format(record)
        for secret in secrets:
            assert secret not in line, f"logged: {line!r}"


class SendsmsInbox:
    """What an HTTP peer in Kannel's place received on its sendsms interface."""

    def __init__(self) -> None:
        self.messages: queue.Queue[dict[str, str]] = queue.Queue()

    def next(self, timeout: float = 10) -> dict[str, str]:
        return self.messages.get(timeout=timeout)

    def empty_after(self, seconds: float) -> bool:
        try:
            self.messages.get(timeout=seconds)
        except queue.Empty:
            return True
        return False


@contextmanager
def sendsms_inbox() -> Iterator[tuple[str, SendsmsInbox]]:
    """A sendsms URL answering 202 as smsbox does, and what it received (the real
    Kannel carries these messages in tests/e2e/test_kannel.py)."""
    inbox = SendsmsInbox()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            query = urllib.parse.urlsplit(self.path).query
            inbox.messages.put(dict(urllib.parse.parse_qsl(query)))
            self.send_response(202)
            self.end_headers()
            self.wfile.write(b"0: Accepted for delivery")

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/cgi-bin/sendsms", inbox
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
