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
