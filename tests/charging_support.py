"""An IN written for the tests: a real UCIP server over XML-RPC (the standard library's
``xmlrpc.server`` in a thread) that applies refills, with fault injection; and a real
HTTP charging system that checks and makes signatures.

The IN keeps accounts (main account, dedicated accounts, supervision expiry) and
treats a repeated ``originTransactionID`` as the same refill, as UCIP systems do: it
answers the first answer again and applies nothing more. Faults, each for the next
``UpdateBalanceAndDate`` call (``sim.fault = …``):

- ``slow``: the call waits ``slow_s`` (longer than the client's timeout), then applies;
- ``drop``: the refill is applied, then the connection is closed without a reply;
- ``error``: ``responseCode`` 100 (other error), nothing applied;
- ``error_dropped``: the same, but the reply is lost;
- and :meth:`InSimulator.down` / :meth:`InSimulator.up`: the server is not listening.
"""

import hashlib
import hmac
import json
import socket
import threading
import time
import xmlrpc.client
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from socketserver import ThreadingMixIn
from typing import Any
from xmlrpc.server import SimpleXMLRPCRequestHandler, SimpleXMLRPCServer

from voms.runtime import Runtime
from voms.services import catalog
from voms.services.auth import CONSOLE

DATE = "%Y%m%dT%H:%M:%S%z"
REQUIRED = (
    "originNodeType",
    "originHostName",
    "originTransactionID",
    "originTimeStamp",
    "subscriberNumber",
)


def _date(value: datetime) -> xmlrpc.client.DateTime:
    return xmlrpc.client.DateTime(value.astimezone(UTC).strftime(DATE))


def _parse(value: Any) -> datetime:
    return datetime.strptime(value.value, DATE).astimezone(UTC)


class _Handler(SimpleXMLRPCRequestHandler):
    rpc_paths = ("/Air", "/")

    def do_POST(self) -> None:
        sim: InSimulator = self.server.sim  # type: ignore[attr-defined]
        if sim.credentials is not None and self.headers.get("Authorization") != sim.credentials:
            self.send_response(401)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        data = self.rfile.read(int(self.headers["Content-Length"]))
        self.drop = False
        response = self.server._marshaled_dispatch(data, self._dispatch, self.path)  # type: ignore[attr-defined]
        if self.drop:  # the refill was applied; the reply is lost with the connection
            self.close_connection = True
            self.connection.shutdown(socket.SHUT_RDWR)
            return
        self.send_response(200)
        self.send_header("Content-Type", "text/xml")
        self.send_header("Content-Length", str(len(response)))
        self.end_headers()
        self.wfile.write(response)

    def _dispatch(self, method: str, params: Any) -> Any:
        sim: InSimulator = self.server.sim  # type: ignore[attr-defined]
        answer, self.drop = sim.dispatch(method, params)
        return answer

    def log_message(self, format: str, *args: Any) -> None:
        pass


class _Server(ThreadingMixIn, SimpleXMLRPCServer):
    daemon_threads = True
    allow_reuse_address = True


class InSimulator:
    """A UCIP account manager on 127.0.0.1; ``url`` is where to reach it."""

    def __init__(
        self, slow_s: float = 0.3, username: str | None = None, password: str = ""
    ) -> None:
        self.slow_s = slow_s
        self.lock = threading.Lock()
        self.main: dict[str, int] = {}
        self.dedicated: dict[str, dict[int, int]] = {}
        self.supervision: dict[str, datetime] = {}
        self.answers: dict[str, dict[str, Any]] = {}  # by originTransactionID
        self.applied: list[tuple[str, str, int]] = []  # (id, msisdn, value) per refill applied
        self.fault: str | None = None
        # Draws a fault for each refill when no fault is set (calls from many threads).
        self.chaos: Callable[[], str | None] | None = None
        self.refill_calls = 0
        self.violations: list[str] = []  # calls that broke the protocol
        self.busy = 0  # calls being answered
        self.credentials: str | None = None
        if username is not None:
            import base64

            token = base64.b64encode(f"{username}:{password}".encode()).decode()
            self.credentials = f"Basic {token}"
        self.port = 0
        self._server: _Server | None = None
        self.up()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/Air"

    # --- the server's life -------------------------------------------------------------

    def up(self) -> None:
        server = _Server(
            ("127.0.0.1", self.port),
            requestHandler=_Handler,
            logRequests=False,
            allow_none=False,
            use_builtin_types=False,
        )
        server.sim = self  # type: ignore[attr-defined]
        self.port = server.server_address[1]
        threading.Thread(
            target=server.serve_forever, args=(0.005,), name="in-simulator", daemon=True
        ).start()
        self._server = server

    def down(self) -> None:
        """Stop listening: a call now finds no server (connection refused)."""
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def stop(self) -> None:
        self.down()

    def wait_idle(self, timeout: float = 20.0) -> None:
        """Wait until every call being answered (a slow one) has finished."""
        deadline = time.monotonic() + timeout
        while self.busy and time.monotonic() < deadline:
            time.sleep(0.01)
        assert self.busy == 0

    # --- accounts ----------------------------------------------------------------------

    def add_subscriber(self, msisdn: str, main: int = 0) -> None:
        with self.lock:
            self.main[msisdn] = main
            self.dedicated[msisdn] = {}
            self.supervision[msisdn] = datetime(2027, 1, 1, tzinfo=UTC)

    def total(self) -> int:
        """Every unit credited, main and dedicated accounts together."""
        with self.lock:
            return sum(self.main.values()) + sum(
                sum(accounts.values()) for accounts in self.dedicated.values()
            )

    # --- UCIP --------------------------------------------------------------------------

    def dispatch(self, method: str, params: Any) -> tuple[dict[str, Any], bool]:
        """The answer to one call, and whether its reply is to be dropped."""
        try:
            (members,) = params
            missing = [name for name in REQUIRED if name not in members]
            assert not missing, f"{method} without {missing}"
            assert members["originNodeType"] == "EXT"
            if method == "GetBalanceAndDate":
                return self._balance(members["subscriberNumber"]), False
            assert method == "UpdateBalanceAndDate", method
        except (AssertionError, ValueError, TypeError) as violation:
            self.violations.append(f"{method}: {violation}")
            raise
        with self.lock:
            fault, self.fault = self.fault, None
            if fault is None and self.chaos is not None:
                fault = self.chaos()
            self.busy += 1
            self.refill_calls += 1
        try:
            if fault == "slow":
                time.sleep(self.slow_s)
            if fault in ("error", "error_dropped"):
                origin = members["originTransactionID"]
                answer = {"responseCode": 100, "originTransactionID": origin}
                with self.lock:
                    self.answers[origin] = answer
                return answer, fault == "error_dropped"
            return self._refill(members), fault == "drop"
        finally:
            with self.lock:
                self.busy -= 1

    def _balance(self, msisdn: str) -> dict[str, Any]:
        with self.lock:
            if msisdn not in self.main:
                return {"responseCode": 102}
            return {
                "responseCode": 0,
                "accountValue1": str(self.main[msisdn]),
                "supervisionExpiryDate": _date(self.supervision[msisdn]),
                "dedicatedAccountInformation": [
                    {"dedicatedAccountID": da, "dedicatedAccountValue1": str(value)}
                    for da, value in sorted(self.dedicated[msisdn].items())
                ],
            }

    def _refill(self, members: dict[str, Any]) -> dict[str, Any]:
        origin = members["originTransactionID"]
        assert isinstance(origin, str)
        assert origin.isdigit()
        assert len(origin) <= 20
        msisdn = members["subscriberNumber"]
        with self.lock:
            if origin in self.answers:  # the same refill again: the first answer, nothing more
                return self.answers[origin]
            if msisdn not in self.main:
                answer: dict[str, Any] = {"responseCode": 102, "originTransactionID": origin}
                self.answers[origin] = answer
                return answer
            value = int(members.get("adjustmentAmountRelative", "0"))
            self.main[msisdn] += value
            for update in members.get("dedicatedAccountUpdateInformation", []):
                da = int(update["dedicatedAccountID"])
                amount = int(update["adjustmentAmountRelative"])
                self.dedicated[msisdn][da] = self.dedicated[msisdn].get(da, 0) + amount
                value += amount
            if "supervisionExpiryDate" in members:
                self.supervision[msisdn] = _parse(members["supervisionExpiryDate"])
            self.applied.append((origin, msisdn, value))
            answer = {
                "responseCode": 0,
                "originTransactionID": origin,
                "accountValue1": str(self.main[msisdn]),
                "supervisionExpiryDate": _date(self.supervision[msisdn]),
                "dedicatedAccountInformation": [
                    {"dedicatedAccountID": da, "dedicatedAccountValue1": str(amount)}
                    for da, amount in sorted(self.dedicated[msisdn].items())
                ],
            }
            self.answers[origin] = answer
            return answer


@contextmanager
def in_simulator(**options: Any) -> Iterator[InSimulator]:
    sim = InSimulator(**options)
    try:
        yield sim
    finally:
        sim.stop()


# --- a charging system behind the signed HTTP engine ------------------------------------


def sign(secret: str, body: bytes) -> str:
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


class HttpChargingSystem:
    """A charging system speaking the HTTP engine's JSON; it refuses any request whose
    signature does not match and signs every reply (``forge`` signs with another key)."""

    def __init__(self, secret: str) -> None:
        self.secret = secret
        self.balances: dict[str, dict[str, int]] = {}
        self.answers: dict[str, dict[str, Any]] = {}
        self.bad_signatures = 0
        self.requests: list[dict[str, Any]] = []
        self.forge = False
        system = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                given = self.headers.get("X-Voms-Signature", "")
                if not hmac.compare_digest(given, sign(system.secret, body)):
                    system.bad_signatures += 1
                    self._reply(401, b"{}", sign(system.secret, b"{}"))
                    return
                request = json.loads(body)
                system.requests.append(request)
                reply = json.dumps(system.answer(request)).encode()
                key = "forged" if system.forge else system.secret
                self._reply(200, reply, sign(key, reply))

            def _reply(self, status: int, body: bytes, signature: str) -> None:
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.send_header("X-Voms-Signature", signature)
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}/charge"

    def answer(self, request: dict[str, Any]) -> dict[str, Any]:
        msisdn = request["msisdn"]
        if request["type"] == "balance":
            if msisdn not in self.balances:
                return {"result": "subscriber_not_found"}
            return {
                "result": "found",
                "balances": [
                    {"external_id": k, "amount": v}
                    for k, v in sorted(self.balances[msisdn].items())
                ],
            }
        if request["id"] in self.answers:
            return self.answers[request["id"]]
        if msisdn not in self.balances:
            answer: dict[str, Any] = {"result": "subscriber_not_found"}
        else:
            wallet = self.balances[msisdn]
            for credit in request["credits"]:
                wallet[credit["external_id"]] = (
                    wallet.get(credit["external_id"], 0) + credit["amount"]
                )
            answer = {
                "result": "credited",
                "balances": [{"external_id": k, "amount": v} for k, v in sorted(wallet.items())],
                "account_expires_at": (
                    datetime(2027, 1, 1, tzinfo=UTC)
                    + timedelta(days=request["account_expiry_extension_days"])
                ).isoformat(),
            }
        self.answers[request["id"]] = answer
        return answer

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()


# --- the catalog of a provider whose balances live in a charging system ------------------


def external_catalog(rt: Runtime, billing: dict[str, Any] | None, sp: str = "INOP") -> None:
    """A provider with CASH (the main account) and SMS (dedicated account 7) at its
    charging system, and IN10: 10.00 KES and 10 SMS, +30 days account, +10 days SMS."""
    catalog.create_service_provider(rt, CONSOLE, catalog.ServiceProviderIn(code=sp, name=sp))
    for code, currency, external_id in (("CASH", "KES", "main"), ("SMS", None, "7")):
        catalog.create_balance_type(
            rt,
            CONSOLE,
            catalog.BalanceTypeIn(
                code=code,
                name=code,
                unit="cent" if currency else "sms",
                currency=currency,
                service_provider=sp,
                external_id=external_id,
            ),
        )
    catalog.create_voucher_type(
        rt,
        CONSOLE,
        catalog.VoucherTypeIn.model_validate(
            {
                "code": "IN10",
                "name": "IN 10",
                "service_provider": sp,
                "pin_length": 14,
                "validity_days": 365,
                "scenarios": [
                    {
                        "number": 1,
                        "name": "10 KES + 10 SMS",
                        "default": True,
                        "credits": [
                            {"balance_type": "CASH", "amount": 1000},
                            {
                                "balance_type": "SMS",
                                "amount": 10,
                                "balance_expiry_extension_days": 10,
                            },
                        ],
                        "account_expiry_extension_days": 30,
                    }
                ],
            }
        ),
    )
    if billing is not None:
        catalog.update_service_provider(
            rt, CONSOLE, sp, catalog.ServiceProviderUpdate.model_validate({"billing": billing})
        )


VOUCHER_VALUE = 1010  # what one IN10 voucher credits at the IN, all accounts together
