"""Voucher serial numbers: public, fixed-width decimal, allocated to a batch as one range."""

from voms.domain.errors import Invalid

MAX_SERIAL_DIGITS = 18  # fits a signed 64-bit column


def format_serial(serial: int, width: int) -> str:
    """The serial as operators see it: zero-padded to ``width`` digits."""
    return f"{serial:0{width}d}"


def parse_serial(raw: str | int, width: int) -> int:
    """A serial given by a person or a partner; digits only, at most ``width`` of them."""
    if isinstance(raw, int) and not isinstance(raw, bool):
        text = str(raw)
    elif isinstance(raw, str):
        text = raw.strip()
    else:
        raise Invalid("a serial must be a string of digits")
    if not text or not text.isascii() or not text.isdigit():
        raise Invalid("a serial must be a string of digits")
    if len(text) > min(width, MAX_SERIAL_DIGITS):
        raise Invalid(f"a serial has at most {width} digits")
    return int(text)


def parse_serial_range(serial_from: str | int, serial_to: str | int, width: int) -> tuple[int, int]:
    """An inclusive serial range, first ≤ last."""
    first, last = parse_serial(serial_from, width), parse_serial(serial_to, width)
    if first > last:
        raise Invalid("serial_from must not be greater than serial_to")
    return first, last
