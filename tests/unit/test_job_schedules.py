"""Job schedules: defaults, overrides, "off", and refusals of bad cron expressions."""

from datetime import UTC, datetime

import pytest

from voms.services.housekeeping.registry import JOBS, ScheduleError, next_run, schedules


def test_every_job_has_a_valid_default_schedule() -> None:
    plan = schedules({})
    assert set(plan) == set(JOBS)
    assert plan["reservation_timeouts"] == "* * * * *"
    assert plan["voucher_archive"] == "30 2 * * *"


def test_overrides_replace_defaults_and_off_disables() -> None:
    plan = schedules({"voucher_archive": "0  4 * * 0", "key_reencryption": "OFF"})
    assert plan["voucher_archive"] == "0 4 * * 0"
    assert plan["key_reencryption"] is None
    assert plan["blacklist_release"] == JOBS["blacklist_release"].default_schedule


@pytest.mark.parametrize(
    "expression", ["", "* * * *", "61 * * * *", "* * * * * *", "every day", "*/0 * * * *"]
)
def test_a_bad_cron_expression_is_refused(expression: str) -> None:
    with pytest.raises(ScheduleError, match="voucher_archive"):
        schedules({"voucher_archive": expression})


def test_an_unknown_job_is_refused() -> None:
    with pytest.raises(ScheduleError, match="archiv"):
        schedules({"archiv": "* * * * *"})


def test_next_run_is_strictly_after_and_in_utc() -> None:
    at = datetime(2026, 11, 25, 2, 30, tzinfo=UTC)
    assert next_run("30 2 * * *", at) == datetime(2026, 11, 26, 2, 30, tzinfo=UTC)
    assert next_run("*/10 * * * *", at) == datetime(2026, 11, 25, 2, 40, tzinfo=UTC)
