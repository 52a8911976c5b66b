"""The arithmetic of PIN guessing (SECURITY.md): how long a guesser needs at a budget."""

HOURS_PER_YEAR = 24 * 365.25


def pins_of_length(pin_length: int) -> int:
    """How many well-formed PINs of ``pin_length`` digits exist (the last is a check digit)."""
    return int(10 ** (pin_length - 1))


def hours_to_guess(pin_length: int, live_vouchers: int, failures_per_hour: float) -> float:
    """Expected hours until a guesser allowed ``failures_per_hour`` failed lookups finds
    one of ``live_vouchers`` redeemable PINs (each guess hits with p = live / PINs)."""
    if live_vouchers <= 0:
        return float("inf")
    return pins_of_length(pin_length) / live_vouchers / failures_per_hour
