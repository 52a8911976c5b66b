"""The promotion rules on their own: windows, targets, reward arithmetic (no database)."""

from datetime import UTC, datetime, timedelta

import pytest

from voms.domain.catalog import Credit, Scenario, VoucherType
from voms.domain.errors import ResultError
from voms.domain.promotions import Plan, Reward, month_window, reward_credits, rewards_between
from voms.domain.scenarios import LATEST_EXPIRY, choose_scenario

CASH, SMS = 1, 2
START = datetime(2027, 1, 1, tzinfo=UTC)


def plan(**fields: object) -> Plan:
    values: dict[str, object] = {
        "id": 1,
        "code": "P",
        "service_provider_id": 1,
        "starts_at": START,
        "ends_at": None,
        "window": "calendar_month",
        "days": None,
        "counter": "count",
        "target": 3,
        "repeat": False,
        "reward": Reward(credits=(Credit(SMS, "SMS", 10),)),
    }
    values.update(fields)
    return Plan(**values)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("now", "start", "end"),
    [
        (datetime(2027, 1, 31, 23, 59, 59, 999999, tzinfo=UTC), (2027, 1, 1), (2027, 2, 1)),
        (datetime(2027, 2, 1, tzinfo=UTC), (2027, 2, 1), (2027, 3, 1)),
        (datetime(2028, 2, 29, 12, tzinfo=UTC), (2028, 2, 1), (2028, 3, 1)),  # leap year
        (datetime(2027, 12, 31, 23, 59, tzinfo=UTC), (2027, 12, 1), (2028, 1, 1)),
    ],
)
def test_a_calendar_month_is_the_utc_month(
    now: datetime, start: tuple[int, int, int], end: tuple[int, int, int]
) -> None:
    assert month_window(now) == (datetime(*start, tzinfo=UTC), datetime(*end, tzinfo=UTC))


def test_a_month_is_counted_in_utc_whatever_the_offset_given() -> None:
    nairobi = datetime(2027, 2, 1, 2, 0, tzinfo=UTC).astimezone()  # any local zone
    assert month_window(nairobi)[0] == datetime(2027, 2, 1, tzinfo=UTC)
    late_in_january = datetime(2027, 2, 1, 1, 0, tzinfo=UTC) - timedelta(hours=2)
    assert month_window(late_in_january)[0] == datetime(2027, 1, 1, tzinfo=UTC)


def test_rolling_and_campaign_windows() -> None:
    now = datetime(2027, 3, 10, 15, tzinfo=UTC)
    assert plan(window="rolling_days", days=7).window_at(now) == (now, now + timedelta(days=7))
    assert plan(window="campaign").window_at(now) == (START, LATEST_EXPIRY)


def test_a_plan_runs_from_its_start_until_just_before_its_end() -> None:
    ends = START + timedelta(days=31)
    running = plan(ends_at=ends)
    assert not running.runs_at(START - timedelta(microseconds=1))
    assert running.runs_at(START)
    assert running.runs_at(ends - timedelta(microseconds=1))
    assert not running.runs_at(ends)


@pytest.mark.parametrize(
    ("before", "after", "target", "repeat", "rewards"),
    [
        (1, 2, 3, False, 0),
        (2, 3, 3, False, 1),
        (3, 4, 3, False, 0),  # a once plan: reached already
        (0, 7, 3, False, 1),  # a large value passes it once
        (5, 6, 3, True, 1),
        (6, 7, 3, True, 0),
        (2, 9, 3, True, 3),  # a large value passes three multiples
        (4, 4, 3, True, 0),
    ],
)
def test_targets_reached(before: int, after: int, target: int, repeat: bool, rewards: int) -> None:
    assert rewards_between(before, after, target, repeat) == rewards


def test_only_eligible_redemptions_count() -> None:
    only = plan(voucher_type_ids=frozenset({7}), channels=frozenset({"ussd"}))
    assert only.applies_to(7, "ussd", 1)
    assert not only.applies_to(8, "ussd", 1)
    assert not only.applies_to(7, "rest", 1)
    assert plan(product_type_ids=frozenset({2})).applies_to(None, "rest", 2)
    assert not plan(product_type_ids=frozenset({2})).applies_to(None, "rest", 3)


def test_a_reward_times_and_a_percentage_of_the_money_rounded_down() -> None:
    reward = Reward(credits=(Credit(SMS, "SMS", 10, 7),), percent_of_value=10)
    credits = reward_credits(reward, 2, Credit(CASH, "CASH", 999))
    assert credits == (Credit(CASH, "CASH", 199), Credit(SMS, "SMS", 20, 7))
    assert reward_credits(Reward(percent_of_value=10), 1, None) == ()


def _type(*scenarios: Scenario) -> VoucherType:
    return VoucherType(1, "T", 1, 14, 60, "revoke", frozenset(), scenarios)


def test_only_running_scenarios_are_offered() -> None:
    regular = Scenario(1, "regular", True, (Credit(CASH, "CASH", 100),))
    fest = Scenario(
        2,
        "fest",
        False,
        (Credit(SMS, "SMS", 180),),
        valid_from=START,
        valid_until=START + timedelta(days=31),
        product_type_ids=frozenset({5}),
    )
    vt = _type(regular, fest)
    before = START - timedelta(seconds=1)
    assert choose_scenario(vt, None, at=before, product_type_id=5) is regular
    with pytest.raises(ResultError) as refused:
        choose_scenario(vt, None, at=START, product_type_id=5)
    assert refused.value.result.code == 2008
    assert choose_scenario(vt, None, at=START, product_type_id=6) is regular
    with pytest.raises(ResultError) as other_type:
        choose_scenario(vt, 2, at=START, product_type_id=6)
    assert other_type.value.result.code == 2007
    with pytest.raises(ResultError) as ended:
        choose_scenario(vt, 2, at=START + timedelta(days=31), product_type_id=5)
    assert ended.value.result.code == 4005
    with pytest.raises(ResultError) as none_running:
        choose_scenario(_type(fest), None, at=before, product_type_id=5)
    assert none_running.value.result.code == 4005
