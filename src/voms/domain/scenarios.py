"""Scenario choice and expiry arithmetic of a recharge."""

from datetime import UTC, datetime, timedelta

from voms.domain.catalog import Scenario, VoucherType
from voms.domain.errors import ResultError
from voms.domain.results import Result

# The last instant an expiry can be (Python's calendar ends with year 9999).
LATEST_EXPIRY = datetime(9999, 12, 31, tzinfo=UTC)


def choose_scenario(
    voucher_type: VoucherType, number: int | None, *, use_default: bool = False
) -> Scenario:
    """The scenario to apply: the only one, the one asked for, or the default one.

    None asked for: the only scenario; else the type's default scenario when
    ``use_default`` (a voucher-type recharge) or the type's ``scenario_selection`` is
    ``default``; else (or with no default flagged) 2008, listing the choices so that a
    channel can prompt. A number the voucher type does not have: 4005.
    """
    scenarios = voucher_type.scenarios
    if number is None:
        if len(scenarios) == 1:
            return scenarios[0]
        if use_default or voucher_type.scenario_selection == "default":
            for scenario in scenarios:
                if scenario.default:
                    return scenario
        raise ResultError(Result.SCENARIO_REQUIRED, scenarios=[s.public() for s in scenarios])
    for scenario in scenarios:
        if scenario.number == number:
            return scenario
    raise ResultError(Result.INVALID_SCENARIO_NUMBER)


def extended_expiry(current: datetime | None, days: int, now: datetime) -> datetime | None:
    """An expiry extended by ``days``, counted from the later of now and ``current``."""
    if days <= 0:
        return current
    start = now if current is None or current < now else current
    if (LATEST_EXPIRY - start).days <= days:  # past the calendar's end: as far as it goes
        return LATEST_EXPIRY
    return start + timedelta(days=days)
