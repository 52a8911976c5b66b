"""Amounts as subscribers read them: minor units by the currency's ISO 4217 exponent."""

import pytest

from voms.domain.money import minor_unit, split


@pytest.mark.parametrize(
    ("currency", "digits"),
    [("KES", 2), ("kes", 2), ("EUR", 2), ("JPY", 0), ("UGX", 0), ("BHD", 3), ("CLF", 4)],
)
def test_a_currency_has_its_iso_4217_minor_unit(currency: str, digits: int) -> None:
    assert minor_unit(currency) == digits


def test_a_balance_type_without_a_currency_counts_whole_units() -> None:
    assert minor_unit(None) == 0
    assert split(50, 0).shown() == "50"


def test_an_amount_is_split_into_whole_and_minor_units() -> None:
    assert split(1550, 2).shown() == "15.50"
    assert (split(1550, 2).major, split(1550, 2).minor) == (15, 50)
    assert split(-5, 2).shown() == "-0.05"
    assert split(1000, 3).shown() == "1.000"
