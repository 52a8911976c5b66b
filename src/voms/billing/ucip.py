"""UCIP: an IN's account manager (Ericsson AIR and compatibles) over XML-RPC.

A refill is one ``UpdateBalanceAndDate`` call (docs/api.md "External charging
systems"): ``originNodeType`` "EXT", ``originHostName``, ``originTransactionID``
(unique per attempt, the same on every retry: the IN treats a repeated id as the same
refill), ``originTimeStamp``, ``subscriberNumber``, ``transactionCurrency``;
``adjustmentAmountRelative`` for the balance type whose ``external_id`` is "main",
``dedicatedAccountUpdateInformation`` for those whose ``external_id`` is a dedicated
account number; an account expiry extension as ``supervisionExpiryDate`` (and a
dedicated account's as its ``expiryDate``), computed from ``GetBalanceAndDate``.
``responseCode`` 0 is success, 102 an unknown subscriber (5001), any other a refusal
(3000). Amounts travel as strings of minor units, dates as XML-RPC dateTime.iso8601
with a UTC offset, as UCIP does.
"""

import xmlrpc.client
from datetime import UTC, datetime, timedelta
from typing import Any

from voms.billing.breaker import Breaker
from voms.billing.config import UcipBilling
from voms.billing.external import (
    Account,
    Answer,
    ExternalEngine,
    Refill,
    Rejected,
    ReportedBalance,
    Status,
    Unsure,
    new_origin_id,
)
from voms.domain.results import Result

MAIN = "main"
SUCCESS = 0
SUBSCRIBER_NOT_FOUND = 102
_DATE_FORMAT = "%Y%m%dT%H:%M:%S%z"
_HEADERS = {"Content-Type": "text/xml", "User-Agent": "OpenVoMS/UCIP/5.0"}


def ucip_date(value: datetime) -> xmlrpc.client.DateTime:
    """A UCIP dateTime.iso8601 (20270101T12:00:00+0000)."""
    return xmlrpc.client.DateTime(value.astimezone(UTC).strftime(_DATE_FORMAT))


def parse_ucip_date(value: object) -> datetime | None:
    """A UCIP date as an aware datetime; None when absent or unreadable."""
    text = value.value if isinstance(value, xmlrpc.client.DateTime) else value
    if not isinstance(text, str):
        return None
    for form in (_DATE_FORMAT, "%Y%m%dT%H:%M:%S"):
        try:
            parsed = datetime.strptime(text, form)  # noqa: DTZ007 (the offset is in the text, or UTC)
        except ValueError:
            continue
        return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)
    return None


def _extended(current: datetime | None, days: int, now: datetime) -> datetime:
    """Extend from the later of the current expiry and now (as the built-in wallet does)."""
    start = current if current is not None and current > now else now
    return start + timedelta(days=days)


class UcipEngine(ExternalEngine):
    kind = "ucip"

    def __init__(
        self,
        name: str,
        config: UcipBilling,
        password: str | None,
        breaker: Breaker,
        connections: int,
    ) -> None:
        super().__init__(name, config.timeout_ms, breaker, connections)
        self.config = config
        if config.username:  # HTTP basic authentication, as AIR expects
            self.client.auth = (config.username, password or "")

    def _origin(self, origin_id: str) -> dict[str, Any]:
        return {
            "originNodeType": "EXT",
            "originHostName": self.config.origin_host,
            "originTransactionID": origin_id,
            "originTimeStamp": ucip_date(datetime.now(UTC)),
        }

    def _call(self, method: str, members: dict[str, Any]) -> dict[str, Any]:
        body = xmlrpc.client.dumps((members,), method, encoding="utf-8", allow_none=False)
        response = self.client.post(self.config.url, content=body.encode("utf-8"), headers=_HEADERS)
        if response.status_code >= 500 or response.status_code in (408, 429):
            raise Unsure(f"HTTP {response.status_code}")
        if response.status_code != 200:
            raise Rejected(f"HTTP {response.status_code}")
        try:
            (result,), _ = xmlrpc.client.loads(response.content)
        except xmlrpc.client.Fault as fault:
            raise Unsure(f"XML-RPC fault {fault.faultCode}") from None
        except Exception:
            raise Unsure("unreadable XML-RPC reply") from None
        if not isinstance(result, dict) or "responseCode" not in result:
            raise Unsure("reply without responseCode")
        return result

    def _credit(self, refill: Refill) -> Answer:
        members = self._origin(refill.origin_id)
        members["subscriberNumber"] = refill.msisdn
        currency = next((c.currency for c in refill.credits if c.currency), None)
        if currency:
            members["transactionCurrency"] = currency
        main = [c for c in refill.credits if c.external_id == MAIN]
        dedicated = [c for c in refill.credits if c.external_id != MAIN]
        if main:
            members["adjustmentAmountRelative"] = str(sum(c.amount for c in main))
        account_days = max(
            [refill.account_expiry_extension_days, *(c.expiry_extension_days for c in main)]
        )
        needs_dates = account_days > 0 or any(c.expiry_extension_days for c in dedicated)
        current: dict[str, Any] = {}
        if needs_dates:
            current = self._call("GetBalanceAndDate", self._balance_request(refill.msisdn))
            code = int(current["responseCode"])
            if code != SUCCESS:
                return _refusal(code)
        now = datetime.now(UTC)
        if account_days > 0:
            expiry = parse_ucip_date(current.get("supervisionExpiryDate"))
            members["supervisionExpiryDate"] = ucip_date(_extended(expiry, account_days, now))
        if dedicated:
            expiries = {
                str(d.get("dedicatedAccountID")): parse_ucip_date(d.get("expiryDate"))
                for d in current.get("dedicatedAccountInformation", []) or []
                if isinstance(d, dict)
            }
            updates = []
            for credit in dedicated:
                update: dict[str, Any] = {
                    "dedicatedAccountID": int(credit.external_id),
                    "adjustmentAmountRelative": str(credit.amount),
                }
                if credit.expiry_extension_days:
                    update["expiryDate"] = ucip_date(
                        _extended(
                            expiries.get(credit.external_id), credit.expiry_extension_days, now
                        )
                    )
                updates.append(update)
            members["dedicatedAccountUpdateInformation"] = updates
        result = self._call("UpdateBalanceAndDate", members)
        code = int(result["responseCode"])
        if code != SUCCESS:
            return _refusal(code)
        return Answer(
            Status.CREDITED,
            balances=_balances(result),
            account_expires_at=parse_ucip_date(result.get("supervisionExpiryDate")),
        )

    def _balance_request(self, msisdn: str) -> dict[str, Any]:
        """A query has an id of its own: only a refill's id is reused."""
        return {**self._origin(new_origin_id()), "subscriberNumber": msisdn}

    def _account(self, msisdn: str) -> Account | None:
        result = self._call("GetBalanceAndDate", self._balance_request(msisdn))
        code = int(result["responseCode"])
        if code == SUBSCRIBER_NOT_FOUND:
            return None
        if code != SUCCESS:
            raise Unsure(f"responseCode {code}")
        return Account(
            balances=_balances(result),
            account_expires_at=parse_ucip_date(result.get("supervisionExpiryDate")),
        )


def _refusal(code: int) -> Answer:
    if code == SUBSCRIBER_NOT_FOUND:
        return Answer(Status.REFUSED, Result.SUBSCRIBER_NOT_FOUND, detail="responseCode 102")
    return Answer(Status.REFUSED, Result.SYSTEM_ERROR, detail=f"responseCode {code}")


def _balances(result: dict[str, Any]) -> tuple[ReportedBalance, ...]:
    """The balances a reply carries: ``accountValue1`` (main) and each dedicated account."""
    found: list[ReportedBalance] = []
    if "accountValue1" in result:
        found.append(
            ReportedBalance(
                MAIN,
                int(result["accountValue1"]),
                parse_ucip_date(result.get("supervisionExpiryDate")),
            )
        )
    for entry in result.get("dedicatedAccountInformation", []) or []:
        if isinstance(entry, dict) and "dedicatedAccountValue1" in entry:
            found.append(
                ReportedBalance(
                    str(entry.get("dedicatedAccountID")),
                    int(entry["dedicatedAccountValue1"]),
                    parse_ucip_date(entry.get("expiryDate")),
                )
            )
    return tuple(found)
