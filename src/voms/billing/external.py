"""What every external charging system adapter shares: the refill it is asked to apply,
the answer it gives, the circuit breaker, timeouts, connection pooling and metrics.

An adapter (:mod:`voms.billing.ucip`, :mod:`voms.billing.http`) only says how to
ask; :meth:`ExternalEngine.credit` turns whatever happens into one of four statuses:

- ``credited``: the charging system applied the refill (a definite success);
- ``refused``: it answered that it did not apply it (a definite refusal: 5001, 3000);
- ``unknown``: no definite answer (timeout, connection dropped after sending, an
  unreadable reply): it may have applied it; only a retry with the same id can tell;
- ``unsent``: the call never left (circuit open, too many calls waiting, no
  connection): nothing was applied.

Retrying a refill is always safe: it carries the same originTransactionID, which the
charging system treats as the same refill. Declaring one refused is only done on the
charging system's own word.
"""

import logging
import secrets
import time
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any

import httpx
from prometheus_client import Counter, Gauge, Histogram

from voms.billing.breaker import Breaker, BreakerState, Refused
from voms.domain.results import Result

log = logging.getLogger("voms.charging")

CALLS = Counter(
    "voms_charging_calls_total",
    "Calls to external charging systems by outcome",
    ["service_provider", "engine", "call", "outcome"],
)
LATENCY = Histogram(
    "voms_charging_call_seconds",
    "Latency of calls to external charging systems",
    ["service_provider", "engine", "call"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
BREAKER_OPEN = Gauge(
    "voms_charging_breaker_open",
    "1 while the circuit breaker of a charging system refuses calls",
    ["service_provider", "engine"],
    multiprocess_mode="max",
)


def new_origin_id() -> str:
    """An originTransactionID: 18 random digits (UCIP allows up to 20), so ids need no
    shared sequence across hosts; the charges table's key catches the rare collision."""
    return str(10**17 + secrets.randbelow(9 * 10**17))


@dataclass(frozen=True)
class ExternalCredit:
    """One balance change at the charging system."""

    balance_type: str  # our code, for the answer
    external_id: str  # "main" or a dedicated account number
    amount: int
    currency: str | None = None
    expiry_extension_days: int = 0


@dataclass(frozen=True)
class Refill:
    """What a charging system is asked to apply, under an id reused on every retry."""

    origin_id: str
    msisdn: str
    credits: tuple[ExternalCredit, ...]
    account_expiry_extension_days: int = 0
    serial: int | None = None

    def as_json(self) -> dict[str, Any]:
        return {
            "origin_id": self.origin_id,
            "msisdn": self.msisdn,
            "credits": [vars(c).copy() for c in self.credits],
            "account_expiry_extension_days": self.account_expiry_extension_days,
            "serial": self.serial,
        }

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> "Refill":
        return cls(
            origin_id=raw["origin_id"],
            msisdn=raw["msisdn"],
            credits=tuple(ExternalCredit(**c) for c in raw["credits"]),
            account_expiry_extension_days=raw.get("account_expiry_extension_days", 0),
            serial=raw.get("serial"),
        )


@dataclass(frozen=True)
class ReportedBalance:
    """A balance as the charging system reports it, by its external id."""

    external_id: str
    amount: int
    expires_at: datetime | None = None


class Status(StrEnum):
    CREDITED = "credited"
    REFUSED = "refused"
    UNKNOWN = "unknown"
    UNSENT = "unsent"


@dataclass(frozen=True)
class Answer:
    """The outcome of one call; ``result`` is what a redemption answers for it."""

    status: Status
    result: Result = Result.SUCCESS
    balances: tuple[ReportedBalance, ...] = ()
    account_expires_at: datetime | None = None
    detail: str = ""  # for logs and the charge's last_error: never a PIN, never a secret

    @property
    def definite(self) -> bool:
        return self.status in (Status.CREDITED, Status.REFUSED)


@dataclass(frozen=True)
class Account:
    """A subscriber as the charging system reports it."""

    balances: tuple[ReportedBalance, ...] = field(default_factory=tuple)
    account_expires_at: datetime | None = None


class Unsure(Exception):
    """A reply that is no definite answer (a server error, unreadable, unsigned)."""


class Rejected(Exception):
    """The charging system refused the call itself, so applied nothing (HTTP 4xx)."""


class Unavailable(Exception):
    """A query got no answer; the detail says why."""


# The call never reached the charging system: nothing can have been applied.
_NOT_SENT = (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout)


class ExternalEngine:
    """The frame of every adapter; subclasses implement :meth:`_credit` and :meth:`_account`."""

    kind = ""

    def __init__(self, name: str, timeout_ms: int, breaker: Breaker, connections: int) -> None:
        self.name = name  # the service provider's code, the metrics' label
        self.timeout_ms = timeout_ms
        self.breaker = breaker
        timeout = timeout_ms / 1000
        self.client = httpx.Client(
            timeout=httpx.Timeout(timeout, connect=min(timeout, 2.0), pool=min(timeout, 1.0)),
            limits=httpx.Limits(max_connections=connections, max_keepalive_connections=connections),
        )

    # --- what the redemption calls ------------------------------------------------------

    def refusing(self) -> bool:
        """The circuit is open: a call now would be refused without trying."""
        refusing = self.breaker.refusing()
        BREAKER_OPEN.labels(self.name, self.kind).set(1 if refusing else 0)
        return refusing

    def credit(self, refill: Refill) -> Answer:
        """Ask the charging system to apply ``refill``; never raises."""
        answer = self._guarded("credit", lambda: self._credit(refill))
        if answer.status is Status.UNKNOWN:
            log.warning(
                "charging system %s: outcome of refill %s unknown (%s)",
                self.name,
                refill.origin_id,
                answer.detail,
            )
        return answer

    def account(self, msisdn: str) -> Account | None:
        """The subscriber's balances as the charging system reports them; None when it
        does not know the subscriber. Raises :class:`Unavailable` without an answer."""
        result: list[Account | None] = []

        def ask() -> Answer:
            result.append(self._account(msisdn))
            return Answer(Status.CREDITED)

        answer = self._guarded("balance", ask)
        if not answer.definite:
            raise Unavailable(answer.detail)
        return result[0] if result else None

    def close(self) -> None:
        self.client.close()

    # --- the frame: breaker, errors, metrics ---------------------------------------------

    def _guarded(self, call: str, ask: Any) -> Answer:
        try:
            self.breaker.admit()
        except Refused as refused:
            self._observe(call, Status.UNSENT, None)
            return Answer(Status.UNSENT, Result.CHARGING_UNAVAILABLE, detail=str(refused))
        started = time.perf_counter()
        answer = Answer(Status.UNKNOWN, Result.CHARGING_UNAVAILABLE, detail="no answer")
        try:
            answer = ask()
        except _NOT_SENT as exc:
            answer = Answer(Status.UNSENT, Result.CHARGING_UNAVAILABLE, detail=_why(exc))
        except httpx.TimeoutException as exc:
            answer = Answer(Status.UNKNOWN, Result.CHARGING_UNAVAILABLE, detail=_why(exc))
        except (httpx.HTTPError, Unsure) as exc:
            answer = Answer(Status.UNKNOWN, Result.CHARGING_UNAVAILABLE, detail=_why(exc))
        except Rejected as exc:
            answer = Answer(Status.REFUSED, Result.SYSTEM_ERROR, detail=_why(exc))
        except Exception as exc:  # an adapter's bug must not pass for a definite answer
            log.exception("charging system %s: %s call failed", self.name, call)
            answer = Answer(Status.UNKNOWN, Result.CHARGING_UNAVAILABLE, detail=_why(exc))
        finally:
            self.breaker.record(answer.definite)
            self._observe(call, answer.status, time.perf_counter() - started)
        return answer

    def _observe(self, call: str, status: Status, seconds: float | None) -> None:
        CALLS.labels(self.name, self.kind, call, status.value).inc()
        if seconds is not None:
            LATENCY.labels(self.name, self.kind, call).observe(seconds)
        BREAKER_OPEN.labels(self.name, self.kind).set(
            1 if self.breaker.state is BreakerState.OPEN else 0
        )

    # --- what an adapter implements ----------------------------------------------------

    def _credit(self, refill: Refill) -> Answer:
        raise NotImplementedError

    def _account(self, msisdn: str) -> Account | None:
        raise NotImplementedError


def _why(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return f"{type(exc).__name__}: {text}"[:200] if text else type(exc).__name__
