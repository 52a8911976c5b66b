"""Recharge limits of a service provider: what they are, how a PATCH changes them, and
the per-process cache the redemption reads them from.

``service_providers.recharge_limits`` holds ``{"max_per_day", "max_per_month",
"max_value_per_day": {balance type code: amount}}``, each per recipient MSISDN and UTC
day or month (docs/policy.md). The redemption counts against them in
:mod:`voms.services.redemption.limits`.
"""

from dataclasses import dataclass
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, StringConstraints
from sqlalchemy import Connection, select

from voms.caching import ReadCache
from voms.db import tables as t
from voms.domain.errors import NotFound
from voms.runtime import Runtime

TTL_SECONDS = 10.0
MAX_LIMIT = 10**15

Limit = Annotated[int, Field(ge=0, le=MAX_LIMIT)]
BalanceTypeCode = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,31}$")]


class RechargeLimitsIn(BaseModel):
    """The ``recharge_limits`` of a PATCH: merged into the current ones, ``null`` removes."""

    model_config = ConfigDict(extra="forbid")

    max_per_day: Limit | None = None
    max_per_month: Limit | None = None
    max_value_per_day: dict[BalanceTypeCode, Limit | None] | None = None


@dataclass(frozen=True)
class Limits:
    """A provider's limits as the redemption checks them (None: no such limit)."""

    max_per_day: int | None
    max_per_month: int | None
    max_value_per_day: dict[str, int]  # balance type code → amount

    @property
    def any(self) -> bool:
        return (
            self.max_per_day is not None
            or self.max_per_month is not None
            or bool(self.max_value_per_day)
        )


NONE = Limits(None, None, {})


def merged(
    conn: Connection, service_provider_id: int, patch: RechargeLimitsIn | None
) -> dict[str, Any] | None:
    """The provider's limits with ``patch`` merged in (None: no limits at all).

    Fields left out of the patch are kept, ``null`` removes one; in
    ``max_value_per_day`` the same per balance type. Every balance type named must
    belong to the provider (404 naming it).
    """
    sp = t.service_providers
    current = conn.execute(
        select(sp.c.recharge_limits).where(sp.c.id == service_provider_id)
    ).scalar()
    if patch is None:
        return None
    result: dict[str, Any] = dict(current or {})
    for name in sorted(patch.model_fields_set):
        value = getattr(patch, name)
        if name == "max_value_per_day" and value is not None:
            _check_balance_types(conn, service_provider_id, value)
            per_type = dict(result.get(name) or {})
            for code, amount in value.items():
                if amount is None:
                    per_type.pop(code, None)
                else:
                    per_type[code] = amount
            value = dict(sorted(per_type.items())) or None
        if value is None:
            result.pop(name, None)
        else:
            result[name] = value
    return result or None


def _check_balance_types(conn: Connection, sp_id: int, amounts: dict[str, Any]) -> None:
    bt = t.balance_types
    known = set(
        conn.execute(
            select(bt.c.code).where(bt.c.service_provider_id == sp_id, bt.c.code.in_(amounts))
        ).scalars()
    )
    unknown = sorted(code for code, amount in amounts.items() if amount and code not in known)
    if unknown:
        raise NotFound(f"balance type '{unknown[0]}' not found")


def of_row(raw: Any) -> Limits:
    """The typed limits of a stored ``recharge_limits`` value."""
    if not isinstance(raw, dict):
        return NONE
    per_type = raw.get("max_value_per_day") or {}
    return Limits(
        max_per_day=raw.get("max_per_day"),
        max_per_month=raw.get("max_per_month"),
        max_value_per_day={str(k): int(v) for k, v in per_type.items() if v is not None},
    )


def _cache(rt: Runtime) -> ReadCache[Limits]:
    return rt.read_cache("recharge_limits", TTL_SECONDS)


def limits_of(rt: Runtime, conn: Connection, service_provider_id: int) -> Limits:
    """A provider's limits, cached per process; a change reaches every process within
    ``TTL_SECONDS`` (at once in the process that made it)."""
    sp = t.service_providers

    def load() -> Limits:
        return of_row(
            conn.execute(
                select(sp.c.recharge_limits).where(sp.c.id == service_provider_id)
            ).scalar()
        )

    return _cache(rt).get(service_provider_id, load)


def forget(rt: Runtime) -> None:
    """Forget the cached limits (the process that changed them, tests)."""
    _cache(rt).clear()
