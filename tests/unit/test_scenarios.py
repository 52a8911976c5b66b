from datetime import UTC, datetime, timedelta

import pytest

from voms.domain.errors import ResultError
from voms.domain.scenarios import choose_scenario, extended_expiry

NOW = datetime(2027, 1, 1, tzinfo=UTC)
ONE = [{"number": 1}]
TWO = [{"number": 1}, {"number": 2}]


def test_a_single_scenario_needs_no_choice() -> None:
    assert choose_scenario(ONE, None) == {"number": 1}


def test_several_scenarios_and_no_choice_give_2008() -> None:
    with pytest.raises(ResultError) as failed:
        choose_scenario(TWO, None)
    assert failed.value.result.code == 2008


def test_a_scenario_the_type_does_not_have_gives_4005() -> None:
    with pytest.raises(ResultError) as failed:
        choose_scenario(TWO, 3)
    assert failed.value.result.code == 4005
    assert choose_scenario(TWO, 2) == {"number": 2}


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
