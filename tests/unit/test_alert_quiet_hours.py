"""Quiet hours: local time of the provider's zone, windows that wrap midnight."""

from datetime import UTC, datetime

import pytest

from voms.domain.errors import Invalid
from voms.services.alerts.settings import is_quiet, zone


def at(hour: int, minute: int = 0) -> datetime:
    return datetime(2026, 12, 6, hour, minute, tzinfo=UTC)


def test_a_window_across_midnight_in_local_time() -> None:
    # Nairobi is UTC+3 all year: 21:00-08:00 local is 18:00-05:00 UTC.
    quiet = ("21:00", "08:00", "Africa/Nairobi")
    assert is_quiet(*quiet, at(17, 59)) is False
    assert is_quiet(*quiet, at(18, 0)) is True
    assert is_quiet(*quiet, at(23, 30)) is True
    assert is_quiet(*quiet, at(4, 59)) is True
    assert is_quiet(*quiet, at(5, 0)) is False


def test_a_window_within_one_day_and_no_window() -> None:
    assert is_quiet("01:00", "06:00", "UTC", at(3)) is True
    assert is_quiet("01:00", "06:00", "UTC", at(6)) is False
    assert is_quiet("01:00", "06:00", "UTC", at(0, 59)) is False
    assert is_quiet(None, None, "UTC", at(3)) is False
    assert is_quiet("05:00", "05:00", "UTC", at(5)) is False


def test_daylight_saving_time_is_the_zone_s_business() -> None:
    summer = datetime(2026, 7, 1, 20, 30, tzinfo=UTC)  # 22:30 in Berlin (UTC+2)
    winter = datetime(2026, 12, 1, 20, 30, tzinfo=UTC)  # 21:30 in Berlin (UTC+1)
    assert is_quiet("22:00", "07:00", "Europe/Berlin", summer) is True
    assert is_quiet("22:00", "07:00", "Europe/Berlin", winter) is False


def test_an_unknown_zone_is_refused() -> None:
    with pytest.raises(Invalid):
        zone("Mars/Olympus")
