"""Scenario choice and expiry arithmetic of a recharge."""

from datetime import UTC, datetime, timedelta

from voms.domain.catalog import Scenario, VoucherType
from voms.domain.errors import ResultError
from voms.domain.results import Result

# The last instant an expiry can be (Python's calendar ends with year 9999).
LATEST_EXPIRY = datetime(9999, 12, 31, tzinfo=UTC)


def choose_scenario(
    voucher_type: VoucherType,
    number: int | None,
    *,
    use_default: bool = False,
    at: datetime | None = None,
    product_type_id: int | None = None,
) -> Scenario:
    """The scenario to apply: the only one, the one asked for, or the default one.

    None asked for: the only scenario; else the type's default scenario when
    ``use_default`` (a voucher-type recharge) or the type's ``scenario_selection`` is
    ``default``; else (or with no default flagged) 2008, listing the choices so that a
    channel can prompt. A number the voucher type does not have: 4005. With ``at`` and
    ``product_type_id``, only the scenarios offered then to that product type count
    (campaign scenarios): one that is not running is unknown (4005); when the product
    type is what keeps every choice out, 2007.
    """
    scenarios = offered_scenarios(voucher_type, at, product_type_id)
    if not scenarios or (number is not None and all(s.number != number for s in scenarios)):
        running = offered_scenarios(voucher_type, at, None)
        if any(number in (None, s.number) for s in running):
            raise ResultError(Result.NOT_VALID_FOR_PRODUCT_TYPE)
    if number is None:
        if len(scenarios) == 1:
            return scenarios[0]
        if not scenarios:  # none running now
            raise ResultError(Result.INVALID_SCENARIO_NUMBER)
        if use_default or voucher_type.scenario_selection == "default":
            for scenario in scenarios:
                if scenario.default:
                    return scenario
        raise ResultError(Result.SCENARIO_REQUIRED, scenarios=[s.public() for s in scenarios])
    for scenario in scenarios:
        if scenario.number == number:
            return scenario
    raise ResultError(Result.INVALID_SCENARIO_NUMBER)


def offered_scenarios(
    voucher_type: VoucherType, at: datetime | None, product_type_id: int | None
) -> tuple[Scenario, ...]:
    """The scenarios running at ``at`` offered to ``product_type_id`` (None: any)."""
    return tuple(
        s
        for s in voucher_type.scenarios
        if (at is None or s.runs_at(at))
        and (product_type_id is None or s.offered_to(product_type_id))
    )


def extended_expiry(current: datetime | None, days: int, now: datetime) -> datetime | None:
    """An expiry extended by ``days``, counted from the later of now and ``current``."""
    if days <= 0:
        return current
    start = now if current is None or current < now else current
    if (LATEST_EXPIRY - start).days <= days:  # past the calendar's end: as far as it goes
        return LATEST_EXPIRY
    return start + timedelta(days=days)
