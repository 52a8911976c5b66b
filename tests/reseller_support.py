"""Builders for reseller tests: a catalog, a reseller tree and stock in one line each."""

from typing import Any

from sqlalchemy import select

from tests import factories
from voms.db import tables as t
from voms.domain.serials import format_serial
from voms.runtime import Runtime
from voms.services import generation
from voms.services.auth import CONSOLE, Principal
from voms.services.resellers import accounts, stock

PRICE = 1000  # TOPUP10 credits 1000 KES cents


def reseller(
    rt: Runtime,
    code: str,
    *,
    credit_limit: int = 1_000_000,
    commission_percent: float = 5,
    parent: str | None = None,
    who: Principal = CONSOLE,
) -> dict[str, Any]:
    body = {
        "code": code,
        "name": f"{code} Distribution",
        "service_provider": "ACME",
        "credit_limit": credit_limit,
        "commission_percent": commission_percent,
        "parent": parent,
    }
    found, _ = accounts.create_reseller(rt, who, body)
    return found


def inactive_batch(rt: Runtime, count: int = 20) -> dict[str, Any]:
    return generation.generate_batch(rt, CONSOLE, voucher_type="TOPUP10", count=count)


def serials(rt: Runtime, batch: dict[str, Any]) -> list[str]:
    v = t.vouchers
    with rt.engine.connect() as conn:
        found = conn.execute(
            select(v.c.serial).where(v.c.batch_id == batch["batch_id"]).order_by(v.c.serial)
        ).scalars()
        return [format_serial(serial, rt.settings.serial_width) for serial in found]


def hand_over(
    rt: Runtime, code: str, first: str, last: str, who: Principal = CONSOLE
) -> dict[str, Any]:
    return stock.hand_over(rt, who, code, {"serial_from": first, "serial_to": last})


def stocked_reseller(rt: Runtime, code: str = "DIST", count: int = 20, **fields: Any) -> list[str]:
    """A catalog, reseller ``code`` and a batch of ``count`` handed to it whole."""
    factories.standard_catalog(rt)
    reseller(rt, code, **fields)
    found = serials(rt, inactive_batch(rt, count))
    hand_over(rt, code, found[0], found[-1])
    return found
