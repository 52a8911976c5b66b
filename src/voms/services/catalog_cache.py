"""The catalog as the redemption hot path reads it: cached per process for a few seconds.

The catalog is small and changes rarely; a redemption reads it on every call. A change
reaches every process within ``TTL_SECONDS``; anything unknown to the cache (a voucher
type created a moment ago) is read from the database at once.
"""

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, select

from voms.db import tables as t
from voms.domain.errors import NotFound
from voms.runtime import Runtime
from voms.services.catalog import load_voucher_type

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
    expires: float


def _cache(rt: Runtime) -> dict[Any, Any]:
    return rt.caches.setdefault("catalog", {})  # type: ignore[return-value]


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
        expires=time.monotonic() + TTL_SECONDS,
    )


def snapshot(rt: Runtime, conn: Connection, *, refresh: bool = False) -> Snapshot:
    """Balance/product types, providers and PIN lengths; ``refresh`` re-reads them now."""
    cache = _cache(rt)
    current: Snapshot | None = cache.get("snapshot")
    if refresh or current is None or current.expires < time.monotonic():
        current = _load(conn)
        cache["snapshot"] = current
    return current


def snapshot_knowing(rt: Runtime, conn: Connection, knows: Callable[[Snapshot], bool]) -> Snapshot:
    """The cached snapshot, or a fresh one when the cached one fails ``knows``.

    What the cache does not know may have been created a moment ago: it is read again at
    once rather than refused until the cache expires.
    """
    current = snapshot(rt, conn)
    return current if knows(current) else snapshot(rt, conn, refresh=True)


def voucher_type(
    rt: Runtime, conn: Connection, *, voucher_type_id: int | None = None, code: str | None = None
) -> dict[str, Any] | None:
    """A voucher type as :func:`load_voucher_type` gives it, or None when it does not exist."""
    key = ("vt", voucher_type_id) if voucher_type_id is not None else ("vt_code", code)
    cache = _cache(rt)
    hit = cache.get(key)
    now = time.monotonic()
    if hit is not None and hit[0] > now:
        return hit[1]  # type: ignore[no-any-return]
    try:
        loaded = load_voucher_type(conn, voucher_type_id=voucher_type_id, code=code)
    except NotFound:
        return None
    cache[("vt", loaded["id"])] = cache[("vt_code", loaded["code"])] = (now + TTL_SECONDS, loaded)
    return loaded


def clear(rt: Runtime) -> None:
    """Forget everything (tests, and a process that just changed the catalog)."""
    _cache(rt).clear()
