"""The plans of a service provider as the redemption reads them: cached per process.

Like the catalog (:mod:`voms.services.catalog_cache`), plans change rarely and are read
on every redemption, so they are kept for ``TTL_SECONDS``; a plan created or changed in
this process is seen at once, in another one within the TTL. A provider without plans
costs the redemption one dictionary lookup.
"""

from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Connection, or_, select

from voms.caching import ReadCache
from voms.db import tables as t
from voms.db.types import utcnow
from voms.domain.promotions import Plan
from voms.runtime import Runtime
from voms.services.promotions.plans import plan_of

TTL_SECONDS = 10.0


@dataclass(frozen=True)
class ProviderPlans:
    """A provider's plans that have not ended, and its money balance types (the ones
    with a currency: a voucher's value, the base of ``percent_of_value``)."""

    plans: tuple[Plan, ...]
    money_balance_types: dict[int, str]  # id → currency
    # What counting works out from the plans (which of them a voucher type on a channel
    # counts in, their statements), kept as long as these plans are.
    derived: dict[Any, Any] = field(default_factory=dict, compare=False, repr=False)


def _cache(rt: Runtime) -> ReadCache[ProviderPlans]:
    return rt.read_cache("promotion_plans", TTL_SECONDS)


def _load(conn: Connection, sp_id: int) -> ProviderPlans:
    p, bt = t.promotions, t.balance_types
    balance_types = conn.execute(
        select(bt.c.id, bt.c.code, bt.c.currency).where(bt.c.service_provider_id == sp_id)
    ).all()
    rows = conn.execute(
        select(p)
        .where(
            p.c.service_provider_id == sp_id,
            or_(p.c.ends_at.is_(None), p.c.ends_at > utcnow()),
        )
        .order_by(p.c.id)
    ).all()
    codes = {row.id: row.code for row in balance_types}
    return ProviderPlans(
        plans=tuple(plan_of(row, codes) for row in rows),
        money_balance_types={row.id: row.currency for row in balance_types if row.currency},
    )


def plans_of(rt: Runtime, conn: Connection, sp_id: int) -> ProviderPlans:
    """The provider's plans that have not ended (as of the last load)."""
    return _cache(rt).get(("sp", sp_id), lambda: _load(conn, sp_id))


def clear(rt: Runtime) -> None:
    """Forget every provider's plans (a plan was created or changed in this process)."""
    _cache(rt).clear()
