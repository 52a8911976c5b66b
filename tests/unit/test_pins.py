import pytest
from hypothesis import given
from hypothesis import strategies as st

from voms.domain.errors import ResultError
from voms.domain.pins import check_pin, luhn_valid, with_check_digit
from voms.domain.results import Result

digits = st.text(alphabet="0123456789", min_size=7, max_size=23)


def test_known_luhn_numbers_are_valid() -> None:
    assert luhn_valid("79927398713")
    assert not luhn_valid("79927398710")
    assert with_check_digit("7992739871") == "79927398713"


@given(digits)
def test_a_pin_with_its_check_digit_is_valid(body: str) -> None:
    assert luhn_valid(with_check_digit(body))


@given(digits, st.integers(min_value=0, max_value=22), st.integers(min_value=1, max_value=9))
def test_any_single_digit_typo_is_caught(body: str, position: int, delta: int) -> None:
    pin = with_check_digit(body)
    position %= len(pin)
    typo = pin[:position] + str((int(pin[position]) + delta) % 10) + pin[position + 1 :]
    assert not luhn_valid(typo)


def test_a_pin_of_the_wrong_length_gives_4001() -> None:
    with pytest.raises(ResultError) as caught:
        check_pin(with_check_digit("1234567"), frozenset({14}))
    assert caught.value.result is Result.INVALID_VOUCHER_NUMBER_LENGTH


def test_a_wrong_check_digit_gives_2002() -> None:
    pin = with_check_digit("1234567890123")
    bad = pin[:-1] + str((int(pin[-1]) + 1) % 10)
    with pytest.raises(ResultError) as caught:
        check_pin(bad, frozenset({14}))
    assert caught.value.result is Result.INVALID_VOUCHER_NUMBER


@pytest.mark.parametrize("raw", [None, "", "  "])
def test_a_missing_pin_gives_4007(raw: str | None) -> None:
    with pytest.raises(ResultError) as caught:
        check_pin(raw, frozenset({14}))
    assert caught.value.result is Result.MISSING_VOUCHER_NUMBER


def test_spaces_and_dashes_typed_by_a_subscriber_are_ignored() -> None:
    pin = with_check_digit("1234567890123")
    assert check_pin(f"{pin[:4]} {pin[4:8]}-{pin[8:]}", frozenset({14})) == pin


def test_non_digits_give_2002() -> None:
    with pytest.raises(ResultError) as caught:
        check_pin("12345678901a34", frozenset({14}))
    assert caught.value.result is Result.INVALID_VOUCHER_NUMBER
