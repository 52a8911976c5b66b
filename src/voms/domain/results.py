"""Result codes of the redemption family (docs/api.md "Result codes"), and the body every
interface answers them with."""

from enum import Enum
from typing import Any


class Result(Enum):
    """One result code: numeric code, text for integrators, HTTP status."""

    SUCCESS = (0, "Success", 200)
    BATCH_NOT_ACTIVE = (2001, "Voucher batch not active", 409)
    INVALID_VOUCHER_NUMBER = (2002, "Invalid voucher number", 400)
    INVALID_SERIAL_NUMBER = (2003, "Invalid serial number", 400)
    VOUCHER_NOT_FOUND = (2004, "Voucher not found", 404)
    RESERVATION_NOT_FOUND = (2005, "Reservation not found", 404)
    NOT_VALID_FOR_PRODUCT_TYPE = (2007, "Voucher not valid for subscriber product type", 409)
    SCENARIO_REQUIRED = (2008, "Scenario required", 409)
    ALREADY_REDEEMED = (2009, "Voucher already redeemed", 409)
    ALREADY_RESERVED = (2010, "Voucher already reserved", 409)
    NOT_YET_ACTIVE = (2011, "Voucher not yet active", 409)
    FROZEN = (2012, "Voucher frozen", 409)
    DELETED = (2013, "Voucher deleted", 409)
    EXPIRED = (2014, "Voucher expired", 409)
    SYSTEM_ERROR = (3000, "System error", 500)
    SERVICE_PROVIDER_NOT_FOUND = (4000, "Service provider not found", 404)
    INVALID_VOUCHER_NUMBER_LENGTH = (4001, "Invalid voucher number length", 400)
    INVALID_SCENARIO_NUMBER = (4005, "Invalid scenario number", 400)
    INVALID_SUBSCRIBER = (4006, "Missing or invalid subscriber identifier", 400)
    MISSING_VOUCHER_NUMBER = (4007, "Missing voucher number", 400)
    # Not in the charging platforms' numbering: a field without a code of its own (channel,
    # request_id) is malformed. The response's `detail` names the field.
    INVALID_PARAMETER = (4008, "Invalid request parameter", 400)
    SUBSCRIBER_NOT_FOUND = (5001, "Subscriber not found", 404)
    SUBSCRIBER_NOT_ACTIVE = (5002, "Subscriber account not active", 409)
    SUBSCRIBER_BLACKLISTED = (5003, "Subscriber blacklisted", 403)
    BALANCE_LIMIT_EXCEEDED = (5004, "Balance limit exceeded", 409)
    VOUCHER_TYPE_NOT_FOUND = (5005, "Voucher type not found", 404)
    REQUEST_ID_REUSED = (5006, "Request id reused with different parameters", 409)
    TOO_MANY_REQUESTS = (5007, "Too many requests", 429)
    RECHARGE_LIMIT_REACHED = (5008, "Recharge limit reached", 409)
    SUBSCRIBER_FROZEN = (5010, "Subscriber account frozen", 409)
    # The external charging system did not answer in time (or cannot be reached): the
    # voucher is not consumed twice, and a settlement job settles an unknown outcome.
    CHARGING_UNAVAILABLE = (5009, "Charging system unavailable", 503)

    def __init__(self, code: int, text: str, http_status: int) -> None:
        self.code = code
        self.text = text
        self.http_status = http_status

    def body(self, **extra: Any) -> dict[str, Any]:
        """The answer's body: ``result_code`` and ``result_text``, then ``extra``."""
        return {"result_code": self.code, "result_text": self.text, **extra}

    @classmethod
    def from_code(cls, code: int) -> "Result":
        """The result with this numeric code."""
        for result in cls:
            if result.code == code:
                return result
        raise ValueError(f"unknown result code {code}")
