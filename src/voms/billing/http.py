"""A signed JSON call, for any charging system that speaks neither UCIP nor our wallet.

Each call is ``POST <url>`` with a JSON body and the header ``X-Voms-Signature:
sha256=<hex HMAC-SHA256 of the body under the shared secret>``, as the webhooks are
signed; the reply must be signed the same way under the same secret, or it is no
answer (a forged "credited" must not redeem a voucher). docs/charging.md "The HTTP
engine" is the contract:

- credit: ``{"type": "credit", "id", "msisdn", "serial", "credits": [{"balance_type",
  "external_id", "amount", "currency", "expiry_extension_days"}],
  "account_expiry_extension_days"}``; a repeated ``id`` is the same credit and gets the
  first answer again. Reply ``{"result": "credited", "balances"?, "account_expires_at"?}``,
  ``{"result": "subscriber_not_found"}`` (5001) or ``{"result": "refused"}`` (3000).
- balance: ``{"type": "balance", "id", "msisdn"}``; reply ``{"result": "found",
  "balances": [{"external_id", "amount", "expires_at"?}], "account_expires_at"?}`` or
  ``{"result": "subscriber_not_found"}``.

A reply with status 5xx, 408 or 429 is no answer (retried); another 4xx, signed, means
the call was refused as a whole, so nothing was applied (3000).
"""

import json
from datetime import datetime
from typing import Any

from voms.billing.breaker import Breaker
from voms.billing.config import HttpBilling
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
from voms.crypto import body_signature, signature_matches
from voms.domain.results import Result

SIGNATURE_HEADER = "X-Voms-Signature"


class HttpEngine(ExternalEngine):
    kind = "http"

    def __init__(
        self, name: str, config: HttpBilling, secret: str, breaker: Breaker, connections: int
    ) -> None:
        super().__init__(name, config.timeout_ms, breaker, connections)
        self.config = config
        self._secret = secret

    def _post(self, body: dict[str, Any]) -> dict[str, Any]:
        raw = json.dumps(body, separators=(",", ":")).encode()
        response = self.client.post(
            self.config.url,
            content=raw,
            headers={
                "Content-Type": "application/json",
                SIGNATURE_HEADER: body_signature(self._secret, raw),
            },
        )
        if response.status_code >= 500 or response.status_code in (408, 429):
            raise Unsure(f"HTTP {response.status_code}")
        # Signed or no answer: a forged refusal would free a voucher the system credited.
        if not signature_matches(
            self._secret, response.content, response.headers.get(SIGNATURE_HEADER)
        ):
            raise Unsure(f"HTTP {response.status_code} reply not signed with the shared secret")
        if response.status_code >= 400:
            raise Rejected(f"HTTP {response.status_code}")
        try:
            reply = json.loads(response.content)
        except ValueError:
            raise Unsure("reply is not JSON") from None
        if not isinstance(reply, dict) or not isinstance(reply.get("result"), str):
            raise Unsure("reply without result")
        return reply

    def _credit(self, refill: Refill) -> Answer:
        reply = self._post(
            {
                "type": "credit",
                "id": refill.origin_id,
                "msisdn": refill.msisdn,
                "serial": refill.serial,
                "credits": [
                    {
                        "balance_type": c.balance_type,
                        "external_id": c.external_id,
                        "amount": c.amount,
                        "currency": c.currency,
                        "expiry_extension_days": c.expiry_extension_days,
                    }
                    for c in refill.credits
                ],
                "account_expiry_extension_days": refill.account_expiry_extension_days,
            }
        )
        result = reply["result"]
        if result == "credited":
            return Answer(
                Status.CREDITED,
                balances=_balances(reply),
                account_expires_at=_time(reply.get("account_expires_at")),
            )
        if result == "subscriber_not_found":
            return Answer(Status.REFUSED, Result.SUBSCRIBER_NOT_FOUND, detail=result)
        if result == "refused":
            return Answer(Status.REFUSED, Result.SYSTEM_ERROR, detail=result)
        raise Unsure(f"unknown result {result[:40]!r}")

    def _account(self, msisdn: str) -> Account | None:
        reply = self._post({"type": "balance", "id": new_origin_id(), "msisdn": msisdn})
        if reply["result"] == "subscriber_not_found":
            return None
        if reply["result"] != "found":
            raise Unsure("unknown result")
        return Account(_balances(reply), _time(reply.get("account_expires_at")))


def _time(value: object) -> datetime | None:
    if not isinstance(value, str):
        return None
    try:
        return datetime.fromisoformat(value)
    except ValueError:
        return None


def _balances(reply: dict[str, Any]) -> tuple[ReportedBalance, ...]:
    found = []
    for entry in reply.get("balances") or []:
        if isinstance(entry, dict) and isinstance(entry.get("amount"), int):
            found.append(
                ReportedBalance(
                    str(entry.get("external_id")), entry["amount"], _time(entry.get("expires_at"))
                )
            )
    return tuple(found)
