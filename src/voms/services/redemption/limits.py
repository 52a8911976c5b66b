"""Recharge limits in the redemption: one upsert of the recipient's counters.

When the recipient's service provider has limits (:mod:`voms.services.recharge_limits`),
a redemption or voucher-type recharge adds itself to the recipient's counters of the
UTC day and month (``recharge_counters``: the count, and per limited balance type the
value credited) in one ``INSERT … ON CONFLICT DO UPDATE … RETURNING`` within its own
transaction, and is refused with 5008 when a counter it returns is past its limit. The
refusal rolls the transaction back, counters included: refused attempts never count,
and reaching a limit exactly is allowed.

Exact under concurrency: on PostgreSQL the upsert locks the counter rows until the
COMMIT, so the next recharge of the same MSISDN waits and then adds to the committed
count (rows go in one order, so two recharges never deadlock); SQLite has one writer
at a time. Providers without limits cost nothing: no statement is sent.
"""

from typing import Any

from sqlalchemy import bindparam
from sqlalchemy.dialects import postgresql, sqlite

from voms.billing.engine import Change
from voms.db import tables as t
from voms.domain.errors import ResultError
from voms.domain.results import Result
from voms.runtime import Runtime
from voms.services import recharge_limits
from voms.services.uow import UnitOfWork

COUNT = 0  # balance_type_id of the count rows

_rc = t.recharge_counters
_STATEMENTS: dict[tuple[str, int], Any] = {}


def _upsert(dialect_name: str, rows: int) -> Any:
    """The upsert of ``rows`` counter rows (built once per dialect and size: prepared
    once per connection)."""
    statement = _STATEMENTS.get((dialect_name, rows))
    if statement is None:
        dialect = postgresql if dialect_name == "postgresql" else sqlite
        inserted = dialect.insert(_rc).values(
            [
                {
                    "msisdn": bindparam("msisdn"),
                    "period": bindparam(f"p{i}"),
                    "balance_type_id": bindparam(f"b{i}"),
                    "count": bindparam(f"c{i}"),
                    "value": bindparam(f"v{i}"),
                }
                for i in range(rows)
            ]
        )
        statement = inserted.on_conflict_do_update(
            index_elements=[_rc.c.msisdn, _rc.c.period, _rc.c.balance_type_id],
            set_={
                "count": _rc.c["count"] + inserted.excluded["count"],
                "value": _rc.c["value"] + inserted.excluded["value"],
            },
        ).returning(
            _rc.c.period,
            _rc.c.balance_type_id,
            _rc.c["count"].label("recharges"),
            _rc.c["value"].label("credited"),
        )
        _STATEMENTS[(dialect_name, rows)] = statement
    return statement


def day_period(change: Change) -> str:
    return "D" + change.at.strftime("%Y%m%d")


def month_period(change: Change) -> str:
    return "M" + change.at.strftime("%Y%m")


def count(
    rt: Runtime, uow: UnitOfWork, service_provider_id: int, recipient: str, change: Change
) -> None:
    """Count this credit of ``recipient`` against its provider's limits; 5008 past one."""
    limits = recharge_limits.limits_of(rt, uow.conn, service_provider_id)
    if not limits.any:
        return
    day, month = day_period(change), month_period(change)
    # (period, balance type id) → (the limit, what names it, whether its value counts)
    wanted: dict[tuple[str, int], tuple[int, dict[str, Any], bool]] = {}
    values: dict[tuple[str, int], int] = {}
    if limits.max_per_day is not None:
        wanted[(day, COUNT)] = (limits.max_per_day, {"limit": "max_per_day"}, False)
        values[(day, COUNT)] = 0
    if limits.max_per_month is not None:
        wanted[(month, COUNT)] = (limits.max_per_month, {"limit": "max_per_month"}, False)
        values[(month, COUNT)] = 0
    for credit in change.credits:
        maximum = limits.max_value_per_day.get(credit.balance_type)
        if maximum is not None and credit.amount > 0:
            key = (day, credit.balance_type_id)
            wanted[key] = (
                maximum,
                {"limit": "max_value_per_day", "balance_type": credit.balance_type},
                True,
            )
            values[key] = credit.amount
    if not wanted:
        return
    keys = sorted(wanted)  # one lock order for every recharge of this MSISDN
    params: dict[str, Any] = {"msisdn": recipient}
    for i, (period, balance_type_id) in enumerate(keys):
        params[f"p{i}"] = period
        params[f"b{i}"] = balance_type_id
        params[f"c{i}"] = 1
        params[f"v{i}"] = values[(period, balance_type_id)]
    for row in uow.fetch(_upsert(uow.conn.dialect.name, len(keys)), params):
        maximum, names, by_value = wanted[(row.period, row.balance_type_id)]
        if (row.credited if by_value else row.recharges) > maximum:
            raise ResultError(Result.RECHARGE_LIMIT_REACHED, **names)
