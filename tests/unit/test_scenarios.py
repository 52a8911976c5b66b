from datetime import UTC, datetime, timedelta

import pytest

from voms.domain.catalog import Credit, Scenario, VoucherType
from voms.domain.errors import ResultError
from voms.domain.scenarios import choose_scenario, extended_expiry

NOW = datetime(2027, 1, 1, tzinfo=UTC)


def _scenario(number: int) -> Scenario:
    return Scenario(number, f"offer {number}", number == 1, (Credit(1, "CASH", 100 * number),))


def _voucher_type(*numbers: int) -> VoucherType:
    scenarios = tuple(_scenario(n) for n in numbers)
    return VoucherType(1, "GOLD", 1, 14, 600, "revoke", frozenset(), scenarios)


def test_a_single_scenario_needs_no_choice() -> None:
    assert choose_scenario(_voucher_type(1), None) == _scenario(1)


def test_several_scenarios_and_no_choice_give_2008_listing_them() -> None:
    with pytest.raises(ResultError) as failed:
        choose_scenario(_voucher_type(1, 2), None)
    assert failed.value.result.code == 2008
    assert [s["number"] for s in failed.value.extra["scenarios"]] == [1, 2]
    assert failed.value.extra["scenarios"][1]["credits"] == [
        {"balance_type": "CASH", "amount": 200, "balance_expiry_extension_days": 0}
    ]


def test_a_scenario_the_type_does_not_have_gives_4005() -> None:
    with pytest.raises(ResultError) as failed:
        choose_scenario(_voucher_type(1, 2), 3)
    assert failed.value.result.code == 4005
    assert choose_scenario(_voucher_type(1, 2), 2) == _scenario(2)


@pytest.mark.parametrize(
    ("current", "expected"),
    [
        (None, NOW + timedelta(days=30)),
        (NOW - timedelta(days=5), NOW + timedelta(days=30)),
        (NOW + timedelta(days=5), NOW + timedelta(days=35)),
    ],
)
def test_extension_counts_from_the_later_of_now_and_the_current_expiry(
    current: datetime | None, expected: datetime
) -> None:
    assert extended_expiry(current, 30, NOW) == expected


def test_no_extension_leaves_the_expiry_alone() -> None:
    assert extended_expiry(None, 0, NOW) is None
    assert extended_expiry(NOW, 0, NOW + timedelta(days=1)) == NOW
