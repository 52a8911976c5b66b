"""Subscriber numbers (MSISDN): digits only after normalization."""

from voms.domain.errors import ResultError
from voms.domain.results import Result

MIN_MSISDN_DIGITS = 5
MAX_MSISDN_DIGITS = 15  # E.164


def normalize_msisdn(raw: str | None) -> str:
    """Remove a leading ``+``, spaces and dashes; refuse anything else (4006)."""
    if raw is None:
        raise ResultError(Result.INVALID_SUBSCRIBER)
    msisdn = raw.strip().replace(" ", "").replace("-", "")
    msisdn = msisdn.removeprefix("+")
    if not (msisdn.isascii() and msisdn.isdigit()):
        raise ResultError(Result.INVALID_SUBSCRIBER)
    if not MIN_MSISDN_DIGITS <= len(msisdn) <= MAX_MSISDN_DIGITS:
        raise ResultError(Result.INVALID_SUBSCRIBER)
    return msisdn


# The channels whose MSISDN the network gives (the caller cannot choose it) or a care
# agent has checked. On the others (rest, web) the subscriber types it, so it proves
# nothing about who is asking.
AUTHENTICATED_CHANNELS = frozenset({"ussd", "sms", "ivr", "soap", "care"})


def msisdn_is_authenticated(channel: str) -> bool:
    """True when ``channel`` delivers the network's MSISDN rather than a typed one."""
    return channel in AUTHENTICATED_CHANNELS


def mask_msisdn(msisdn: str) -> str:
    """The number with all but its last two digits hidden: kept for a number that
    matches no subscriber, which may be a PIN typed into the wrong field."""
    return "*" * (len(msisdn) - 2) + msisdn[-2:]
