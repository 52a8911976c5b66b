"""Amounts as subscribers read and hear them: minor units split by the currency's exponent.

Amounts are integers in the balance type's minor unit. A balance type in a currency has
that currency's ISO 4217 minor unit (KES: 2, so 1000 is 10.00); one without a currency
(SMS, MB, seconds) counts whole units.
"""

from dataclasses import dataclass

# ISO 4217 currencies whose minor unit is not 2 (every other code has 2).
_MINOR_UNITS: dict[str, int] = {
    **dict.fromkeys(
        [
            "BIF",
            "CLP",
            "DJF",
            "GNF",
            "ISK",
            "JPY",
            "KMF",
            "KRW",
            "PYG",
            "RWF",
            "UGX",
            "UYI",
            "VND",
            "VUV",
            "XAF",
            "XOF",
            "XPF",
            "XAG",
            "XAU",
            "XBA",
            "XBB",
            "XBC",
            "XBD",
            "XDR",
            "XPD",
            "XPT",
            "XSU",
            "XTS",
            "XUA",
            "XXX",
        ],
        0,
    ),
    **dict.fromkeys(["BHD", "IQD", "JOD", "KWD", "LYD", "OMR", "TND"], 3),
    **dict.fromkeys(["CLF", "UYW"], 4),
}


def minor_unit(currency: str | None) -> int:
    """Decimal digits of a currency's minor unit (ISO 4217); 0 without a currency."""
    if not currency:
        return 0
    return _MINOR_UNITS.get(currency.upper(), 2)


@dataclass(frozen=True)
class Amount:
    """An amount split into whole and minor units, as it is shown or said."""

    negative: bool
    major: int
    minor: int
    digits: int

    def shown(self) -> str:
        """``15.50`` (with the currency's digits), ``-0.05``, ``50`` without decimals."""
        sign = "-" if self.negative else ""
        if self.digits == 0:
            return f"{sign}{self.major}"
        return f"{sign}{self.major}.{self.minor:0{self.digits}d}"


def split(minor_units: int, digits: int) -> Amount:
    """``minor_units`` of a type with ``digits`` decimals: 1550, 2 → 15 and 50."""
    major, minor = divmod(abs(minor_units), 10**digits)
    return Amount(minor_units < 0, major, minor, digits)
