"""Whose is the object a path names: scope and existence before anything reads the body.

docs/api.md ("Consistency rules"): the key (401), then role and service-provider scope
(403), then the object's existence (404), then the body (422). The API's gate
(voms.api.gate) knows the key and the role before the body is read; for a route whose
path names an object (``/batches/{batch_id}/activate``) it asks :func:`check` here
whether the caller may act on that object, so that a key scoped to another provider is
refused whatever body it sends. The services check the same again when they act.

Each kind of object has one lookup: its service-provider id (``None`` for an object of
the whole installation), or NotFound.
"""

from collections.abc import Callable, Mapping
from dataclasses import dataclass

from sqlalchemy import Connection, select, union_all

from voms.db import tables as t
from voms.domain.errors import Forbidden, NotFound, ResultError
from voms.domain.msisdn import normalize_msisdn
from voms.runtime import Runtime
from voms.services.auth import Principal
from voms.services.housekeeping.registry import JOBS
from voms.services.resellers import accounts
from voms.services.uow import UnitOfWork

BIGINT_MAX = 2**63 - 1
INT_MAX = 2**31 - 1

# The lookup of one kind of object: its provider id (None: the whole installation's).
Lookup = Callable[[Connection, Principal, Mapping[str, str]], int | None]


class Unparsable(Exception):
    """A path parameter that names nothing: the route answers it (422) as it would."""


@dataclass(frozen=True)
class Kind:
    """One kind of object a path can name."""

    lookup: Lookup
    # True: an object of no provider may be read by a scoped key, changed only unscoped.
    shared_read_only: bool = True


def _one(conn: Connection, what: str, statement: object) -> int | None:
    row = conn.execute(statement).first()  # type: ignore[call-overload]
    if row is None:
        raise NotFound(f"{what} not found")
    return None if row[0] is None else int(row[0])


def _integer(value: str, top: int) -> int:
    if not (value.isascii() and value.isdigit()) or int(value) > top or int(value) < 1:
        raise Unparsable(value)
    return int(value)


def _service_provider(conn: Connection, _: Principal, p: Mapping[str, str]) -> int | None:
    sp = t.service_providers
    return _one(
        conn, f"service provider '{p['code']}'", select(sp.c.id).where(sp.c.code == p["code"])
    )


def _typed(table: str) -> Lookup:
    def lookup(conn: Connection, _: Principal, p: Mapping[str, str]) -> int | None:
        kind, sp = getattr(t, table), t.service_providers
        what = table.removesuffix("s").replace("_", " ")
        return _one(
            conn,
            f"{what} '{p['code']}'",
            select(kind.c.service_provider_id)
            .join(sp, sp.c.id == kind.c.service_provider_id)
            .where(sp.c.code == p["service_provider"], kind.c.code == p["code"]),
        )

    return lookup


def _voucher_type(conn: Connection, _: Principal, p: Mapping[str, str]) -> int | None:
    vt = t.voucher_types
    return _one(
        conn,
        f"voucher type '{p['code']}'",
        select(vt.c.service_provider_id).where(vt.c.code == p["code"]),
    )


def _subscriber(conn: Connection, _: Principal, p: Mapping[str, str]) -> int | None:
    try:
        msisdn = normalize_msisdn(p["msisdn"])
    except ResultError:
        raise Unparsable(p["msisdn"]) from None
    s, sp = t.subscribers, t.service_providers
    owner = conn.execute(select(s.c.service_provider_id).where(s.c.msisdn == msisdn)).first()
    if owner is not None:
        return int(owner[0])
    # Not in the built-in wallet: where a provider keeps its balances in an external
    # charging system (docs/charging.md), the service asks that system; else 404 here.
    _one(
        conn,
        f"subscriber '{msisdn}'",
        select(sp.c.id).where(sp.c.billing.is_not(None)).limit(1),
    )
    return None


def _blacklisted(conn: Connection, actor: Principal, p: Mapping[str, str]) -> int | None:
    """The provider of the MSISDN's subscriber (None: no subscriber, so only unscoped
    keys may act on it); 404 when the number is neither blocked nor counting failures."""
    try:
        msisdn = normalize_msisdn(p["msisdn"])
    except ResultError:
        raise Unparsable(p["msisdn"]) from None
    s, pa = t.subscribers, t.pin_attempts
    owner = conn.execute(select(s.c.service_provider_id).where(s.c.msisdn == msisdn)).scalar()
    if actor.service_provider_id is not None and owner != actor.service_provider_id:
        raise Forbidden("outside this key's service provider")
    _one(conn, f"'{msisdn}' on the blacklist", select(pa.c.msisdn).where(pa.c.msisdn == msisdn))
    return None if owner is None else int(owner)


def _batch(conn: Connection, _: Principal, p: Mapping[str, str]) -> int | None:
    batch_id = _integer(p["batch_id"], INT_MAX)
    b = t.batches
    return _one(
        conn, f"batch {batch_id}", select(b.c.service_provider_id).where(b.c.id == batch_id)
    )


def _voucher(conn: Connection, actor: Principal, p: Mapping[str, str]) -> int | None:
    """Another provider's voucher answers 404 as one that does not exist: a serial tells
    a scoped key nothing about other providers' stock."""
    serial = _integer(p["serial"].strip(), BIGINT_MAX)
    b, v, a = t.batches, t.vouchers, t.voucher_archive
    found = union_all(
        select(v.c.batch_id).where(v.c.serial == serial),
        select(a.c.batch_id).where(a.c.serial == serial),
    ).subquery()
    what = f"voucher with serial {serial}"
    owner = _one(
        conn, what, select(b.c.service_provider_id).join(found, found.c.batch_id == b.c.id).limit(1)
    )
    if actor.service_provider_id not in (None, owner):
        raise NotFound(f"{what} not found")
    return owner


def _partner(conn: Connection, _: Principal, p: Mapping[str, str]) -> int | None:
    pa = t.partners
    return _one(
        conn,
        f"partner '{p['name']}'",
        select(pa.c.service_provider_id).where(pa.c.name == p["name"]),
    )


def _export(conn: Connection, _: Principal, p: Mapping[str, str]) -> int | None:
    export_id = _integer(p["export_id"], INT_MAX)
    e = t.exports
    return _one(
        conn, f"export {export_id}", select(e.c.service_provider_id).where(e.c.id == export_id)
    )


def _transaction(conn: Connection, _: Principal, p: Mapping[str, str]) -> int | None:
    tx = t.transactions
    return _one(
        conn,
        f"transaction '{p['transaction_id'][:40]}'",
        select(tx.c.service_provider_id).where(tx.c.id == p["transaction_id"]),
    )


def _reseller(conn: Connection, actor: Principal, p: Mapping[str, str]) -> int | None:
    # A reseller's key sees its own subtree only (403 outside it, even for unknown codes).
    return int(accounts.visible(conn, actor, p["code"]).service_provider_id)


def _job(conn: Connection, actor: Principal, p: Mapping[str, str]) -> int | None:
    actor.require_unscoped()  # jobs work on the whole installation: first, as they do
    if p["name"] not in JOBS:
        raise NotFound(f"job {p['name']} not found")
    return None


def _api_key(conn: Connection, _: Principal, p: Mapping[str, str]) -> int | None:
    k = t.api_keys
    return _one(
        conn, f"API key '{p['name']}'", select(k.c.service_provider_id).where(k.c.name == p["name"])
    )


def _webhook(conn: Connection, actor: Principal, p: Mapping[str, str]) -> int | None:
    """Another provider's webhook (or an unscoped one, for a scoped key) answers 404 as
    one that does not exist, as the events service does."""
    webhook_id = _integer(p["webhook_id"], INT_MAX)
    d = t.event_destinations
    what = f"webhook {webhook_id}"
    owner = _one(
        conn,
        what,
        select(d.c.service_provider_id).where(d.c.id == webhook_id, d.c.kind == "webhook"),
    )
    if actor.service_provider_id is not None and owner != actor.service_provider_id:
        raise NotFound(f"{what} not found")
    return owner


def _delivery(conn: Connection, actor: Principal, p: Mapping[str, str]) -> int | None:
    """An event delivery belongs to its destination's provider (404 outside it)."""
    delivery_id = _integer(p["delivery_id"], BIGINT_MAX)
    d, e = t.event_destinations, t.event_deliveries
    what = f"delivery {delivery_id}"
    owner = _one(
        conn,
        what,
        select(d.c.service_provider_id)
        .join(e, e.c.destination_id == d.c.id)
        .where(e.c.id == delivery_id),
    )
    if actor.service_provider_id is not None and owner != actor.service_provider_id:
        raise NotFound(f"{what} not found")
    return owner


def _promotion(conn: Connection, _: Principal, p: Mapping[str, str]) -> int | None:
    pr = t.promotions
    return _one(
        conn,
        f"promotion '{p['code']}'",
        select(pr.c.service_provider_id).where(pr.c.code == p["code"]),
    )


# What each object-naming path prefix names. A transaction with no provider (a failed
# attempt that found no voucher) belongs to nobody: whoever sees transactions may read it.
KINDS: dict[str, Kind] = {
    "/api/v1/service-providers/{code}": Kind(_service_provider),
    "/api/v1/balance-types/{service_provider}/{code}": Kind(_typed("balance_types")),
    "/api/v1/product-types/{service_provider}/{code}": Kind(_typed("product_types")),
    "/api/v1/voucher-types/{code}": Kind(_voucher_type),
    "/api/v1/api-keys/{name}": Kind(_api_key),
    "/api/v1/subscribers/{msisdn}": Kind(_subscriber),
    "/api/v1/batches/{batch_id}": Kind(_batch),
    "/api/v1/blacklist/{msisdn}": Kind(_blacklisted),
    "/api/v1/vouchers/{serial}": Kind(_voucher),
    "/api/v1/partners/{name}": Kind(_partner),
    "/api/v1/exports/{export_id}": Kind(_export),
    "/api/v1/housekeeping/jobs/{name}": Kind(_job),
    "/api/v1/transactions/{transaction_id}": Kind(_transaction, shared_read_only=False),
    "/api/v1/resellers/{code}": Kind(_reseller),
    "/api/v1/webhooks/{webhook_id}": Kind(_webhook),
    "/api/v1/event-deliveries/{delivery_id}": Kind(_delivery),
    "/api/v1/promotions/{code}": Kind(_promotion),
}


def kind_of(path_format: str) -> Kind | None:
    """The kind of object a route's path names, or None when it names none we know."""
    for prefix, kind in KINDS.items():
        if path_format == prefix or path_format.startswith(prefix + "/"):
            return kind
    return None


def check(
    rt: Runtime, actor: Principal, kind: Kind, params: Mapping[str, str], *, write: bool
) -> None:
    """Refuse ``actor`` on the object ``params`` name: 403 outside its scope, 404 when
    there is no such object (or, for a voucher, when it is another provider's). A
    parameter that cannot name an object is left to the route."""
    try:
        with UnitOfWork(rt, read_only=True) as uow:
            owner = kind.lookup(uow.conn, actor, params)
    except Unparsable:
        return
    if actor.service_provider_id is None:
        return
    if owner is None:
        if write and kind.shared_read_only:
            actor.require_unscoped()
        return
    actor.require_scope(owner)
