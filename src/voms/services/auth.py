"""API keys, roles and service-provider scope."""

import logging
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, insert, select, update
from sqlalchemy.exc import IntegrityError

from voms.caching import ReadCache
from voms.crypto import hash_api_key, new_api_key
from voms.db import tables as t
from voms.db.types import utcnow
from voms.domain.errors import Conflict, Forbidden, Invalid, NotFound
from voms.domain.roles import GRANTABLE, RESELLER_KEY_PERMISSIONS, Permission, Role, allows
from voms.runtime import Runtime
from voms.services import audit
from voms.services.uow import UnitOfWork

log = logging.getLogger(__name__)

KEY_CACHE_SECONDS = 5.0  # a revoked key stops working within this time

# Where cached keys are read again: one long-lived thread. Starting a thread per refresh
# blocked its caller (the event loop) until the new thread ran, milliseconds when busy.
_refresher = ThreadPoolExecutor(1, thread_name_prefix="voms-key-refresh")


@dataclass(frozen=True)
class Principal:
    """Who calls: an API key (or the local CLI operator) with a role and scope."""

    name: str
    role: Role
    service_provider_id: int | None = None
    api_key_id: int | None = None
    # A key of one reseller: only the reseller calls, on that reseller's subtree.
    reseller_id: int | None = None
    # Rights given to this key by name beyond its role (GRANTABLE).
    allowed: frozenset[Permission] = frozenset()
    # Where the call came from (the client address, behind trusted proxies), when known.
    client: str | None = None

    def may(self, permission: Permission) -> bool:
        """True when the role, or a right given to the key, carries ``permission``."""
        return allows(self.role, permission) or permission in self.allowed

    def require(self, permission: Permission, service_provider_id: int | None = None) -> None:
        """Refuse (403) a call outside this principal's role or service-provider scope."""
        if not self.may(permission):
            raise Forbidden(f"role {self.role} may not {permission}")
        if self.reseller_id is not None and permission not in RESELLER_KEY_PERMISSIONS:
            raise Forbidden(f"a reseller's key may not {permission}")
        self.require_scope(service_provider_id)

    def require_scope(self, service_provider_id: int | None) -> None:
        if (
            self.service_provider_id is not None
            and service_provider_id is not None
            and service_provider_id != self.service_provider_id
        ):
            raise Forbidden("outside this key's service provider")

    def require_unscoped(self) -> None:
        if self.service_provider_id is not None:
            raise Forbidden("a key scoped to one service provider may not do this")


# The local operator at the console (CLI): full rights, recorded under this name.
CONSOLE = Principal(name="console", role=Role.ADMIN)


def service_provider_id_by_code(conn: Connection, code: str) -> int:
    sp_id = conn.execute(
        select(t.service_providers.c.id).where(t.service_providers.c.code == code)
    ).scalar()
    if sp_id is None:
        raise NotFound(f"service provider '{code}' not found")
    return int(sp_id)


def create_api_key(
    rt: Runtime,
    actor: Principal,
    *,
    name: str,
    role: str,
    service_provider: str | None = None,
    reseller: str | None = None,
    allow: Iterable[str] = (),
) -> tuple[dict[str, Any], str]:
    """Create a key; returns its public record and the secret, shown this once only.

    A ``reseller`` key is a distributor key of that reseller and its provider. ``allow``
    names rights beyond the role (``voucher-type-recharge``); the creator must hold each
    itself."""
    actor.require(Permission.APIKEY_ADMIN)
    try:
        role_value = Role(role)
    except ValueError:
        raise Invalid(f"unknown role '{role}'; one of: {', '.join(Role)}") from None
    granted = _grantable(allow)
    for permission in granted:
        actor.require(permission)
    if not name or len(name) > 100:
        raise Invalid("name must be 1 to 100 characters")
    secret = new_api_key()
    if reseller is not None and role_value is not Role.DISTRIBUTOR:
        raise Invalid("only a distributor key may be scoped to a reseller")
    with UnitOfWork(rt) as uow:
        conn = uow.conn
        sp_id = service_provider_id_by_code(conn, service_provider) if service_provider else None
        reseller_id = None
        if reseller is not None:
            found = conn.execute(
                select(t.resellers.c.id, t.resellers.c.service_provider_id).where(
                    t.resellers.c.code == reseller
                )
            ).first()
            if found is None:
                raise NotFound(f"reseller '{reseller}' not found")
            if sp_id is not None and sp_id != found.service_provider_id:
                raise Invalid(f"reseller '{reseller}' belongs to another service provider")
            reseller_id, sp_id = found.id, found.service_provider_id
        actor.require_scope(sp_id)
        if actor.service_provider_id is not None and sp_id is None:
            raise Forbidden("a scoped key may only create keys of its own service provider")
        try:
            key_id = conn.execute(
                insert(t.api_keys)
                .values(
                    name=name,
                    key_hash=hash_api_key(secret),
                    prefix=secret[:12],
                    role=role_value.value,
                    service_provider_id=sp_id,
                    reseller_id=reseller_id,
                    allow=",".join(sorted(granted)) or None,
                    created_by=actor.name,
                    created_at=utcnow(),
                )
                .returning(t.api_keys.c.id)
            ).scalar_one()
        except IntegrityError:
            raise Conflict(f"an API key named '{name}' already exists") from None
        audit.record(
            conn,
            actor,
            "apikey.create",
            "api_key",
            key_id,
            sp_id,
            {"name": name, "role": role, "reseller": reseller, "allow": sorted(granted)},
        )
        uow.commit()
    record = {
        "id": key_id,
        "name": name,
        "role": role_value.value,
        "service_provider": service_provider,
        "reseller": reseller,
        "allow": sorted(granted),
    }
    return record, secret


def _grantable(names: Iterable[str]) -> frozenset[Permission]:
    granted = set()
    for name in names:
        permission = next((p for p in GRANTABLE if p.value == name), None)
        if permission is None:
            choices = ", ".join(sorted(GRANTABLE))
            raise Invalid(f"unknown right '{name}' for --allow; one of: {choices}")
        granted.add(permission)
    return frozenset(granted)


def _allowed(stored: str | None) -> frozenset[Permission]:
    return frozenset(Permission(name) for name in stored.split(",")) if stored else frozenset()


def list_api_keys(
    rt: Runtime,
    actor: Principal,
    *,
    after_id: int | None = None,
    limit: int | None = None,
    role: str | None = None,
    revoked: bool | None = None,
    service_provider: str | None = None,
) -> list[dict[str, Any]]:
    """Keys in the order they were made; ``after_id`` and ``limit`` page through them;
    ``role``, ``revoked`` (True: revoked keys only, False: live ones) and
    ``service_provider`` (a code) filter."""
    actor.require(Permission.APIKEY_ADMIN)
    k, sp = t.api_keys, t.service_providers
    query = (
        select(
            k.c.id,
            k.c.name,
            k.c.prefix,
            k.c.role,
            sp.c.code.label("service_provider"),
            k.c.allow,
            k.c.created_by,
            k.c.created_at,
            k.c.revoked_at,
        )
        .select_from(k.outerjoin(sp, sp.c.id == k.c.service_provider_id))
        .order_by(k.c.id)
        .limit(limit)
    )
    if after_id is not None:
        query = query.where(k.c.id > after_id)
    if role is not None:
        query = query.where(k.c.role == role)
    if revoked is not None:
        query = query.where(k.c.revoked_at.is_not(None) if revoked else k.c.revoked_at.is_(None))
    if service_provider is not None:
        query = query.where(sp.c.code == service_provider)
    if actor.service_provider_id is not None:
        query = query.where(k.c.service_provider_id == actor.service_provider_id)
    with UnitOfWork(rt, read_only=True) as uow:
        return [
            {**row._mapping, "allow": sorted(_allowed(row.allow))}
            for row in uow.conn.execute(query)
        ]


_k = t.api_keys
# The keys that can do everything: unscoped, unrevoked admin keys.
_FULL_ADMINS = select(_k.c.id).where(
    _k.c.role == Role.ADMIN.value, _k.c.service_provider_id.is_(None), _k.c.revoked_at.is_(None)
)


def revoke_api_key(rt: Runtime, actor: Principal, name: str) -> None:
    """Revoke a key. A scoped key revokes only its own provider's keys; the last
    unscoped admin key is never revoked (nobody could administer the installation)."""
    actor.require(Permission.APIKEY_ADMIN)
    with UnitOfWork(rt) as uow:
        conn = uow.conn
        row = conn.execute(
            select(_k.c.id, _k.c.service_provider_id, _k.c.role, _k.c.revoked_at).where(
                _k.c.name == name
            )
        ).first()
        if row is None:
            raise NotFound(f"API key '{name}' not found")
        if actor.service_provider_id is not None and (
            row.service_provider_id != actor.service_provider_id
        ):
            raise Forbidden("a scoped key may only revoke keys of its own service provider")
        full_admin = row.role == Role.ADMIN.value and row.service_provider_id is None
        if full_admin and row.revoked_at is None:
            # Locked, so two revocations at once cannot each leave the other's key last.
            others = conn.execute(_FULL_ADMINS.where(_k.c.id != row.id).with_for_update()).all()
            if not others:
                raise Conflict(f"'{name}' is the last unscoped admin key: create another one first")
        conn.execute(
            update(t.api_keys)
            .where(t.api_keys.c.id == row.id, t.api_keys.c.revoked_at.is_(None))
            .values(revoked_at=utcnow())
        )
        audit.record(conn, actor, "apikey.revoke", "api_key", row.id, row.service_provider_id)
        uow.commit()
    _cache(rt).clear()


def has_any_api_key(rt: Runtime) -> bool:
    with UnitOfWork(rt, read_only=True) as uow:
        conn = uow.conn
        return conn.execute(select(t.api_keys.c.id).limit(1)).first() is not None


def _cache(rt: Runtime) -> ReadCache[Principal | None]:
    return rt.read_cache("api_keys", KEY_CACHE_SECONDS)


def cached_principal(rt: Runtime, secret: str) -> tuple[bool, Principal | None]:
    """(True, principal-or-None) when the key's answer is cached; (False, None) otherwise.

    Lets an event loop answer most requests without a thread for the database. An answer
    due for a refresh is read again on the refresh thread while the caller goes on.
    """
    digest = hash_api_key(secret)
    entry, refresh = _cache(rt).lookup(digest)
    if refresh:
        _refresher.submit(_refresh, rt, digest)
    return (False, None) if entry is None else (True, entry.value)


def wait_for_refreshes() -> None:
    """Return once the refreshes asked for so far are done (tests)."""
    _refresher.submit(lambda: None).result()


def _refresh(rt: Runtime, digest: str) -> None:
    try:
        _cache(rt).refresh(digest, lambda: _lookup(rt, digest))
    except Exception:  # the entry expires as it would have; the next request retries
        log.warning("refreshing a cached API key failed", exc_info=True)
    finally:
        _cache(rt).end_refresh(digest)


def authenticate(rt: Runtime, secret: str) -> Principal | None:
    """The principal of a valid, unrevoked key, or None. Cached a few seconds."""
    digest = hash_api_key(secret)
    return _cache(rt).get(digest, lambda: _lookup(rt, digest))


def _lookup(rt: Runtime, digest: str) -> Principal | None:
    with UnitOfWork(rt, read_only=True) as uow:
        conn = uow.conn
        row = conn.execute(
            select(
                t.api_keys.c.id,
                t.api_keys.c.name,
                t.api_keys.c.role,
                t.api_keys.c.service_provider_id,
                t.api_keys.c.reseller_id,
                t.api_keys.c.allow,
            ).where(t.api_keys.c.key_hash == digest, t.api_keys.c.revoked_at.is_(None))
        ).first()
    if row is None:
        return None
    return Principal(
        name=row.name,
        role=Role(row.role),
        service_provider_id=row.service_provider_id,
        api_key_id=row.id,
        reseller_id=row.reseller_id,
        allowed=_allowed(row.allow),
    )
