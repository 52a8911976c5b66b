"""The catalog as the redemption hot path reads it: cached per process for a few seconds.

The catalog is small and changes rarely; a redemption reads it on every call. A change
reaches every process within ``TTL_SECONDS``; anything unknown to the cache (a voucher
type created a moment ago) is read from the database at once. The cache reloads ahead of
expiry, one request at a time (:class:`voms.caching.ReadCache`).
"""

from collections.abc import Callable
from dataclasses import dataclass

from sqlalchemy import Connection, select

from voms.caching import ReadCache
from voms.db import tables as t
from voms.domain.catalog import VoucherType
from voms.domain.errors import NotFound
from voms.runtime import Runtime
from voms.services.catalog import load_voucher_type, voucher_type_of

TTL_SECONDS = 10.0


@dataclass(frozen=True)
class BalanceTypeInfo:
    code: str
    max_balance: int | None


@dataclass(frozen=True)
class Snapshot:
    balance_types: dict[int, BalanceTypeInfo]
    product_types: dict[int, str]
    service_providers: dict[str, int]  # code → id
    pin_lengths: frozenset[int]


def _snapshots(rt: Runtime) -> ReadCache[Snapshot]:
    return rt.read_cache("catalog", TTL_SECONDS)


def _voucher_types(rt: Runtime) -> ReadCache[VoucherType]:
    return rt.read_cache("voucher_types", TTL_SECONDS)


def _load(conn: Connection) -> Snapshot:
    bt, pt, sp, vt = t.balance_types, t.product_types, t.service_providers, t.voucher_types
    return Snapshot(
        balance_types={
            row.id: BalanceTypeInfo(row.code, row.max_balance)
            for row in conn.execute(select(bt.c.id, bt.c.code, bt.c.max_balance))
        },
        product_types={row.id: row.code for row in conn.execute(select(pt.c.id, pt.c.code))},
        service_providers={row.code: row.id for row in conn.execute(select(sp.c.id, sp.c.code))},
        pin_lengths=frozenset(conn.execute(select(vt.c.pin_length).distinct()).scalars()),
    )


def snapshot(rt: Runtime, conn: Connection, *, refresh: bool = False) -> Snapshot:
    """Balance/product types, providers and PIN lengths; ``refresh`` re-reads them now
    (once for all the callers asking at the same time)."""
    cache, load = _snapshots(rt), lambda: _load(conn)
    return cache.reload("snapshot", load) if refresh else cache.get("snapshot", load)


def snapshot_knowing(rt: Runtime, conn: Connection, knows: Callable[[Snapshot], bool]) -> Snapshot:
    """The cached snapshot, or a fresh one when the cached one fails ``knows``.

    What the cache does not know may have been created a moment ago: it is read again at
    once rather than refused until the cache expires.
    """
    current = snapshot(rt, conn)
    return current if knows(current) else snapshot(rt, conn, refresh=True)


def voucher_type(
    rt: Runtime, conn: Connection, *, voucher_type_id: int | None = None, code: str | None = None
) -> VoucherType | None:
    """A voucher type, or None when it does not exist."""
    key = ("vt", voucher_type_id) if voucher_type_id is not None else ("vt_code", code)
    try:
        return _voucher_types(rt).get(
            key,
            lambda: voucher_type_of(
                load_voucher_type(conn, voucher_type_id=voucher_type_id, code=code)
            ),
        )
    except NotFound:
        return None


def clear(rt: Runtime) -> None:
    """Forget everything (tests, and a process that just changed the catalog)."""
    _snapshots(rt).clear()
    _voucher_types(rt).clear()
