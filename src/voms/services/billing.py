"""Which billing engine a service provider uses, as the services ask it: the stored
configuration cached per process, the engines built from it, and what a charging
system has told us about subscribers (docs/charging.md)."""

import logging
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, bindparam, select

from voms.billing.config import SecretMissing
from voms.billing.engines import Engines
from voms.billing.external import ExternalEngine, Unavailable
from voms.db import tables as t
from voms.domain.errors import NotFound, ResultError
from voms.domain.results import Result
from voms.runtime import Runtime
from voms.services.auth import Principal
from voms.services.uow import UnitOfWork

log = logging.getLogger("voms.charging")
TTL_SECONDS = 5.0


def _billing(rt: Runtime, conn: Connection) -> dict[int, tuple[str, Any]]:
    """Every provider's code and stored billing, cached for a few seconds per process."""
    sp = t.service_providers
    return rt.read_cache("charging.billing", TTL_SECONDS).get(  # type: ignore[no-any-return]
        "all",
        lambda: {
            row.id: (row.code, row.billing)
            for row in conn.execute(select(sp.c.id, sp.c.code, sp.c.billing))
        },
    )


def _engines(rt: Runtime) -> Engines:
    engines = rt.caches.get("charging.engines")
    if engines is None:
        engines = rt.caches.setdefault(
            "charging.engines", Engines(rt.settings, lambda: rt.keyring.secrets)
        )
    assert isinstance(engines, Engines)
    return engines


def engine_for(rt: Runtime, conn: Connection, service_provider_id: int) -> ExternalEngine | None:
    """The provider's external engine; None when its balances are in the built-in wallet.

    A configuration that cannot be used (a secret it names is not set) is a system
    error (3000), answered before the voucher is touched.
    """
    code, stored = _billing(rt, conn).get(service_provider_id, ("", None))
    if stored is None:
        return None
    try:
        return _engines(rt).get(service_provider_id, code, stored)
    except (SecretMissing, ValueError) as problem:
        log.error("charging system of %s cannot be used: %s", code, problem)
        raise ResultError(Result.SYSTEM_ERROR) from None


def external_ids(
    rt: Runtime, conn: Connection, wanted: set[int]
) -> dict[int, tuple[str | None, str | None]]:
    """Each balance type's (external_id, currency), cached for a few seconds; read again
    at once when one of ``wanted`` lacks its external id (it may just have been set)."""
    bt = t.balance_types

    def load() -> dict[int, tuple[str | None, str | None]]:
        rows = conn.execute(select(bt.c.id, bt.c.external_id, bt.c.currency))
        return {row.id: (row.external_id, row.currency) for row in rows}

    cache = rt.read_cache("charging.balance_types", TTL_SECONDS)
    known: dict[int, tuple[str | None, str | None]] = cache.get("all", load)
    if any(known.get(i, (None, None))[0] is None for i in wanted):
        rt.caches.pop("charging.balance_types", None)
        known = rt.read_cache("charging.balance_types", TTL_SECONDS).get("all", load)
    return known


def any_external(rt: Runtime, conn: Connection) -> bool:
    """Some provider keeps its balances in a charging system."""
    return any(stored is not None for _, stored in _billing(rt, conn).values())


_CREDITED = (
    select(t.charges.c.recipient_msisdn)
    .where(
        t.charges.c.recipient_msisdn.in_([bindparam("msisdn"), bindparam("recipient")]),
        t.charges.c.state == "credited",
    )
    .distinct()
)


def known_at_charging_systems(
    rt: Runtime, uow: UnitOfWork, msisdn: str | None, recipient: str | None
) -> set[str]:
    """Those of the numbers a charging system has credited: subscribers that exist
    there, though they have no row in the built-in wallet."""
    if not any_external(rt, uow.conn):
        return set()
    rows = uow.fetch(_CREDITED, {"msisdn": msisdn, "recipient": recipient})
    return {row.recipient_msisdn for row in rows}


# --- a subscriber as the charging system reports it ------------------------------------


@dataclass(frozen=True)
class Asking:
    """What to ask a charging system about one subscriber, and how to name its answer."""

    system: ExternalEngine
    msisdn: str
    service_provider: str
    balance_types: dict[str, str]  # external id → our code


def external_subscriber(
    rt: Runtime,
    uow: UnitOfWork,
    actor: Principal,
    msisdn: str,
    service_provider: str | None,
) -> Asking | None:
    """For a number with no wallet here: what to ask the charging system of the provider
    named (or the key's own), or None when that provider keeps no charging system."""
    sp_id = actor.service_provider_id
    known = _billing(rt, uow.conn)
    if service_provider is not None:
        sp_id = next((i for i, (code, _) in known.items() if code == service_provider), None)
        if sp_id is None:
            raise NotFound(f"service provider '{service_provider}' not found")
        actor.require_scope(sp_id)
    if sp_id is None:
        return None
    engine = engine_for(rt, uow.conn, sp_id)
    if engine is None:
        return None
    bt = t.balance_types
    names = {
        row.external_id: row.code
        for row in uow.conn.execute(
            select(bt.c.code, bt.c.external_id).where(
                bt.c.service_provider_id == sp_id, bt.c.external_id.is_not(None)
            )
        )
    }
    return Asking(engine, msisdn, known[sp_id][0], names)


def ask_charging_system(asking: Asking) -> dict[str, Any]:
    """The subscriber's balances as the charging system reports them (outside any
    transaction); 404 when it does not know the number, 5009 when it does not answer."""
    try:
        account = asking.system.account(asking.msisdn)
    except Unavailable:
        raise ResultError(Result.CHARGING_UNAVAILABLE) from None
    if account is None:
        raise NotFound(f"subscriber '{asking.msisdn}' not found")
    return {
        "msisdn": asking.msisdn,
        "service_provider": asking.service_provider,
        "product_type": None,
        "state": "active",
        "account_expires_at": account.account_expires_at,
        "created_at": None,
        "balances": [
            {
                "balance_type": asking.balance_types.get(b.external_id, b.external_id),
                "amount": b.amount,
                "expires_at": b.expires_at,
            }
            for b in account.balances
        ],
        "charging_system": asking.system.kind,
    }
