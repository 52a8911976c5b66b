"""PIN format: digits only, fixed length, the last digit a Luhn check digit."""

from voms.domain.errors import ResultError
from voms.domain.results import Result

MIN_PIN_LENGTH = 8
MAX_PIN_LENGTH = 24


def luhn_check_digit(body: str) -> int:
    """The Luhn digit that makes ``body + digit`` valid."""
    total = 0
    # Walking from the right, the digit next to the (future) check digit is doubled.
    for index, char in enumerate(reversed(body)):
        digit = ord(char) - 48
        if index % 2 == 0:
            digit *= 2
            if digit > 9:
                digit -= 9
        total += digit
    return (10 - total % 10) % 10


def luhn_valid(pin: str) -> bool:
    """True when the last digit of ``pin`` is the Luhn check digit of the rest."""
    return len(pin) >= 2 and pin.isdigit() and luhn_check_digit(pin[:-1]) == ord(pin[-1]) - 48


def with_check_digit(body: str) -> str:
    """``body`` followed by its Luhn check digit."""
    return body + chr(48 + luhn_check_digit(body))


def normalize_pin(raw: str | None) -> str:
    """Strip spaces and dashes a subscriber may type; refuse anything but digits."""
    if raw is None:
        raise ResultError(Result.MISSING_VOUCHER_NUMBER)
    pin = raw.replace(" ", "").replace("-", "")
    if not pin:
        raise ResultError(Result.MISSING_VOUCHER_NUMBER)
    if not pin.isascii() or not pin.isdigit():
        raise ResultError(Result.INVALID_VOUCHER_NUMBER)
    return pin


def check_pin(raw: str | None, allowed_lengths: frozenset[int]) -> str:
    """Validate format, length (4001) and check digit (2002) before any lookup."""
    pin = normalize_pin(raw)
    if len(pin) not in allowed_lengths:
        raise ResultError(Result.INVALID_VOUCHER_NUMBER_LENGTH)
    if not luhn_valid(pin):
        raise ResultError(Result.INVALID_VOUCHER_NUMBER)
    return pin
