"""PIN format: digits only, fixed length, the last digit a Luhn check digit."""

from voms.domain.errors import ResultError
from voms.domain.results import Result

MIN_PIN_LENGTH = 8
MAX_PIN_LENGTH = 24


# A doubled digit's own digit sum (2 * 7 = 14, and 1 + 4 = 5), as a character.
_DOUBLED = str.maketrans("0123456789", "0246813579")


def luhn_check_digit(body: str) -> int:
    """The Luhn digit that makes ``body`` (ASCII digits) + digit valid."""
    # Walking from the right, the digit next to the (future) check digit is doubled, and
    # every second one after it. Summed as bytes: no Python step per digit (this runs for
    # every PIN generated and every PIN typed).
    digits = body[::-1]
    total = sum(digits[::2].translate(_DOUBLED).encode()) + sum(digits[1::2].encode())
    return (48 * len(body) - total) % 10


def luhn_valid(pin: str) -> bool:
    """True when the last digit of ``pin`` is the Luhn check digit of the rest."""
    return (
        len(pin) >= 2
        and pin.isascii()
        and pin.isdigit()
        and luhn_check_digit(pin[:-1]) == ord(pin[-1]) - 48
    )


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
