"""People who sign in to the web console, and their server-side sessions.

A person has a role and an optional service-provider scope, exactly as an API key (and,
for a distributor, an optional reseller: then only that reseller's subtree); the
console acts for them as a :class:`Principal` named ``user:<username>``. Passwords are
Argon2id hashes; a TOTP second factor is optional, and required for admins when
VOMS_UI_REQUIRE_TOTP is on. Repeated failed sign-ins lock the account for a while.
A session is a database row (so any `voms serve` process can check it) keyed by the
SHA-256 of the random token in the person's cookie; it ends when idle too long, at its
absolute expiry, at sign-out, and when the person is disabled or gets a new password.
"""

import hashlib
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import pyotp
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError
from sqlalchemy import Connection, delete, insert, select, update
from sqlalchemy.exc import IntegrityError

from voms.db import tables as t
from voms.db.types import utcnow
from voms.domain.errors import Conflict, Forbidden, Invalid, NotFound
from voms.domain.roles import RESELLER_KEY_PERMISSIONS, Permission, Role, allows
from voms.runtime import Runtime
from voms.services import audit
from voms.services.auth import Principal, service_provider_id_by_code
from voms.services.uow import UnitOfWork

MIN_PASSWORD_LENGTH = 10
MAX_PASSWORD_LENGTH = 200
TOTP_ISSUER = "OpenVoMS"
# last_seen_at is written at most this often: a page view is not a write each time.
_SEEN_EVERY = timedelta(seconds=30)
# Argon2id (the library's default type) with its RFC 9106 "low memory" parameters.
_hasher = PasswordHasher()
# Verified against when the username is unknown, so both cases take the same time.
_DUMMY_HASH = _hasher.hash(secrets.token_hex(16))

_u, _s, _sp, _r = t.users, t.ui_sessions, t.service_providers, t.resellers


class SignInRefused(Exception):
    """Wrong username or password, disabled or locked account: one message for all."""

    def __init__(self, detail: str = "wrong username or password, or account locked") -> None:
        super().__init__(detail)
        self.detail = detail


@dataclass(frozen=True)
class Session:
    """A signed-in person as the console sees them on each request."""

    username: str
    role: Role
    service_provider_id: int | None
    service_provider: str | None
    csrf_token: str
    second_factor_due: bool
    # A second factor is due but the person has none yet: they must enrol first.
    must_enrol: bool
    expires_at: datetime
    # A person of one reseller: sees and acts on that reseller's subtree only.
    reseller_id: int | None = None
    reseller: str | None = None

    @property
    def principal(self) -> Principal:
        return principal_of(self.username, self.role, self.service_provider_id, self.reseller_id)

    def may(self, permission: Permission) -> bool:
        """True when the person's role carries ``permission`` and, for a person of a
        reseller, it is one a reseller may use (as for a reseller's API key)."""
        if self.reseller_id is not None and permission not in RESELLER_KEY_PERMISSIONS:
            return False
        return allows(self.role, permission)


def principal_of(
    username: str, role: Role, service_provider_id: int | None, reseller_id: int | None = None
) -> Principal:
    """The principal the services see for a person (never confused with an API key)."""
    return Principal(
        name=f"user:{username}",
        role=role,
        service_provider_id=service_provider_id,
        reseller_id=reseller_id,
    )


def _principal_of_row(row: Any) -> Principal:
    return principal_of(row.username, Role(row.role), row.service_provider_id, row.reseller_id)


def _check_password(password: str) -> None:
    if not MIN_PASSWORD_LENGTH <= len(password) <= MAX_PASSWORD_LENGTH:
        raise Invalid(f"a password has {MIN_PASSWORD_LENGTH} to {MAX_PASSWORD_LENGTH} characters")


def _check_username(username: str) -> str:
    name = username.strip()
    if not 1 <= len(name) <= 100 or not all(c.isalnum() or c in "._-@" for c in name):
        raise Invalid("a username has 1 to 100 letters, digits or . _ - @")
    return name


def _role(role: str) -> Role:
    try:
        return Role(role)
    except ValueError:
        raise Invalid(f"unknown role '{role}'; one of: {', '.join(Role)}") from None


def _user_row(conn: Connection, username: str) -> Any:
    row = conn.execute(select(_u).where(_u.c.username == username)).first()
    if row is None:
        raise NotFound(f"user '{username}' not found")
    return row


def create_user(
    rt: Runtime,
    actor: Principal,
    *,
    username: str,
    role: str,
    password: str,
    service_provider: str | None = None,
    reseller: str | None = None,
) -> dict[str, Any]:
    """Create a person who signs in to the console, with a role and an optional scope:
    a service provider, or (for a distributor) a reseller and with it its provider."""
    actor.require(Permission.APIKEY_ADMIN)
    name = _check_username(username)
    role_value = _role(role)
    _check_password(password)
    if reseller is not None and role_value is not Role.DISTRIBUTOR:
        raise Invalid("only a distributor may be scoped to a reseller")
    password_hash = _hasher.hash(password)
    now = utcnow()
    with UnitOfWork(rt) as uow:
        conn = uow.conn
        sp_id = service_provider_id_by_code(conn, service_provider) if service_provider else None
        reseller_id = None
        if reseller is not None:
            found = conn.execute(
                select(_r.c.id, _r.c.service_provider_id).where(_r.c.code == reseller)
            ).first()
            if found is None:
                raise NotFound(f"reseller '{reseller}' not found")
            if sp_id is not None and sp_id != found.service_provider_id:
                raise Invalid(f"reseller '{reseller}' belongs to another service provider")
            reseller_id, sp_id = found.id, found.service_provider_id
        actor.require_scope(sp_id)
        if actor.service_provider_id is not None and sp_id is None:
            raise Forbidden("a scoped admin may only create people of its own service provider")
        try:
            user_id = conn.execute(
                insert(_u)
                .values(
                    username=name,
                    password_hash=password_hash,
                    role=role_value.value,
                    service_provider_id=sp_id,
                    reseller_id=reseller_id,
                    state="active",
                    password_changed_at=now,
                    created_by=actor.name,
                    created_at=now,
                )
                .returning(_u.c.id)
            ).scalar_one()
        except IntegrityError:
            raise Conflict(f"a user named '{name}' already exists") from None
        audit.record(
            conn,
            actor,
            "user.create",
            "user",
            name,
            sp_id,
            {"role": role_value.value, "reseller": reseller},
        )
        sp_code = conn.execute(select(_sp.c.code).where(_sp.c.id == sp_id)).scalar()
        uow.commit()
    return {
        "id": user_id,
        "username": name,
        "role": role_value.value,
        "service_provider": sp_code,
        "reseller": reseller,
        "state": "active",
    }


def list_users(
    rt: Runtime,
    actor: Principal,
    *,
    role: str | None = None,
    state: str | None = None,
    service_provider: str | None = None,
    after: str | None = None,
    limit: int | None = None,
) -> list[dict[str, Any]]:
    """People, by username; a scoped admin sees its provider's people only. ``role``,
    ``state`` and ``service_provider`` (a code) filter; ``after`` (a username) and
    ``limit`` page through them on the username's unique index."""
    actor.require(Permission.APIKEY_ADMIN)
    query = (
        select(
            _u.c.username,
            _u.c.role,
            _sp.c.code.label("service_provider"),
            _r.c.code.label("reseller"),
            _u.c.state,
            (_u.c.totp_secret.is_not(None)).label("totp"),
            _u.c.locked_until,
            _u.c.last_sign_in_at,
            _u.c.created_by,
            _u.c.created_at,
        )
        .select_from(
            _u.outerjoin(_sp, _sp.c.id == _u.c.service_provider_id).outerjoin(
                _r, _r.c.id == _u.c.reseller_id
            )
        )
        .order_by(_u.c.username)
        .limit(limit)
    )
    if after is not None:
        query = query.where(_u.c.username > after)
    if role is not None:
        query = query.where(_u.c.role == role)
    if state is not None:
        query = query.where(_u.c.state == state)
    if service_provider is not None:
        query = query.where(_sp.c.code == service_provider)
    if actor.service_provider_id is not None:
        query = query.where(_u.c.service_provider_id == actor.service_provider_id)
    with UnitOfWork(rt, read_only=True) as uow:
        conn = uow.conn
        return [dict(row._mapping) for row in conn.execute(query)]


def disable_user(rt: Runtime, actor: Principal, username: str) -> None:
    """Disable a person: they cannot sign in, and their open sessions end now."""
    actor.require(Permission.APIKEY_ADMIN)
    with UnitOfWork(rt) as uow:
        conn = uow.conn
        row = _user_row(conn, username)
        actor.require_scope(row.service_provider_id)
        conn.execute(update(_u).where(_u.c.id == row.id).values(state="disabled"))
        conn.execute(delete(_s).where(_s.c.user_id == row.id))
        audit.record(conn, actor, "user.disable", "user", username, row.service_provider_id)
        uow.commit()


def reset_password(rt: Runtime, actor: Principal, username: str, password: str) -> None:
    """Give a person a new password; it lifts a lockout and ends their open sessions."""
    actor.require(Permission.APIKEY_ADMIN)
    _check_password(password)
    password_hash = _hasher.hash(password)
    with UnitOfWork(rt) as uow:
        conn = uow.conn
        row = _user_row(conn, username)
        actor.require_scope(row.service_provider_id)
        conn.execute(
            update(_u)
            .where(_u.c.id == row.id)
            .values(
                password_hash=password_hash,
                password_changed_at=utcnow(),
                failed_sign_ins=0,
                locked_until=None,
            )
        )
        conn.execute(delete(_s).where(_s.c.user_id == row.id))
        audit.record(conn, actor, "user.reset_password", "user", username, row.service_provider_id)
        uow.commit()


# --- signing in -------------------------------------------------------------------------


def _token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def _second_factor_required(rt: Runtime, row: Any) -> bool:
    return row.totp_secret is not None or (
        rt.settings.ui_require_totp and row.role == Role.ADMIN.value
    )


def sign_in(rt: Runtime, username: str, password: str) -> str:
    """Check a password and open a session; returns the token for the cookie.

    Refused alike for an unknown name, a wrong password, a disabled or a locked account.
    The session still wants a TOTP code when the person has one (or must enrol one).
    """
    settings = rt.settings
    now = utcnow()
    with UnitOfWork(rt, read_only=True) as uow:
        conn = uow.conn
        row = conn.execute(select(_u).where(_u.c.username == username.strip())).first()
    if row is None:
        _verify(_DUMMY_HASH, password)
        raise SignInRefused()
    locked = row.locked_until is not None and row.locked_until > now
    if row.state != "active" or locked or not _verify(row.password_hash, password):
        if row.state == "active" and not locked:
            _count_failure(rt, row, now)
        raise SignInRefused()
    token = secrets.token_urlsafe(32)
    due = _second_factor_required(rt, row)
    # The failure count starts again only once the person is fully signed in: a right
    # password alone must not reset the count of wrong TOTP codes.
    values: dict[str, Any] = {} if due else {"failed_sign_ins": 0, "locked_until": None}
    if _hasher.check_needs_rehash(row.password_hash):
        values["password_hash"] = _hasher.hash(password)
    with UnitOfWork(rt) as uow:
        conn = uow.conn
        if values:
            conn.execute(update(_u).where(_u.c.id == row.id).values(values))
        conn.execute(delete(_s).where(_s.c.expires_at <= now))
        conn.execute(
            insert(_s).values(
                token_hash=_token_hash(token),
                user_id=row.id,
                csrf_token=secrets.token_urlsafe(32),
                second_factor_due=due,
                created_at=now,
                last_seen_at=now,
                expires_at=now + timedelta(hours=settings.ui_session_max_hours),
            )
        )
        if not due:
            _signed_in(conn, row, now)
        uow.commit()
    return token


def _verify(password_hash: str, password: str) -> bool:
    try:
        return _hasher.verify(password_hash, password)
    except (VerifyMismatchError, VerificationError, InvalidHashError):
        return False


def _count_failure(rt: Runtime, row: Any, now: datetime) -> None:
    """One more failed sign-in in a row; the last one allowed locks the account.

    Counted in the database (``failed_sign_ins + 1``), so attempts in parallel each count.
    """
    with UnitOfWork(rt) as uow:
        conn = uow.conn
        failures = conn.execute(
            update(_u)
            .where(_u.c.id == row.id)
            .values(failed_sign_ins=_u.c.failed_sign_ins + 1)
            .returning(_u.c.failed_sign_ins)
        ).scalar_one()
        if failures < rt.settings.ui_max_failed_sign_ins:
            uow.commit()
            return
        until = now + timedelta(minutes=rt.settings.ui_lockout_minutes)
        conn.execute(
            update(_u).where(_u.c.id == row.id).values(failed_sign_ins=0, locked_until=until)
        )
        audit.record(
            conn,
            _principal_of_row(row),
            "user.locked",
            "user",
            row.username,
            row.service_provider_id,
            {"until": until.isoformat()},
        )
        uow.commit()


def _signed_in(conn: Connection, row: Any, now: datetime) -> None:
    conn.execute(update(_u).where(_u.c.id == row.id).values(last_sign_in_at=now))
    audit.record(
        conn,
        _principal_of_row(row),
        "user.sign_in",
        "user",
        row.username,
        row.service_provider_id,
    )


_SESSION = select(
    _s.c.token_hash,
    _s.c.csrf_token,
    _s.c.second_factor_due,
    _s.c.last_seen_at,
    _s.c.expires_at,
    _u.c.id.label("user_id"),
    _u.c.username,
    _u.c.role,
    _u.c.state,
    _u.c.service_provider_id,
    _u.c.reseller_id,
    _u.c.totp_secret,
    _sp.c.code.label("service_provider"),
    _r.c.code.label("reseller"),
).select_from(
    _s.join(_u, _u.c.id == _s.c.user_id)
    .outerjoin(_sp, _sp.c.id == _u.c.service_provider_id)
    .outerjoin(_r, _r.c.id == _u.c.reseller_id)
)


def session_of(rt: Runtime, token: str) -> Session | None:
    """The live session of a cookie's token, or None (unknown, idle too long, expired)."""
    if not token or len(token) > 100:
        return None
    now = utcnow()
    digest = _token_hash(token)
    idle = timedelta(minutes=rt.settings.ui_session_idle_minutes)
    with UnitOfWork(rt, read_only=True) as uow:
        conn = uow.conn
        row = conn.execute(_SESSION.where(_s.c.token_hash == digest)).first()
    if row is None:
        return None
    if row.state != "active" or row.expires_at <= now or row.last_seen_at + idle <= now:
        with UnitOfWork(rt) as uow:
            conn = uow.conn
            conn.execute(delete(_s).where(_s.c.token_hash == digest))
            uow.commit()
        return None
    if now - row.last_seen_at >= _SEEN_EVERY:
        with UnitOfWork(rt) as uow:
            conn = uow.conn
            conn.execute(update(_s).where(_s.c.token_hash == digest).values(last_seen_at=now))
            uow.commit()
    return Session(
        username=row.username,
        role=Role(row.role),
        service_provider_id=row.service_provider_id,
        service_provider=row.service_provider,
        csrf_token=row.csrf_token,
        second_factor_due=row.second_factor_due,
        must_enrol=row.second_factor_due and row.totp_secret is None,
        expires_at=min(row.expires_at, max(row.last_seen_at, now) + idle),
        reseller_id=row.reseller_id,
        reseller=row.reseller,
    )


def sign_out(rt: Runtime, token: str) -> None:
    """End a session (its cookie no longer works anywhere)."""
    with UnitOfWork(rt) as uow:
        conn = uow.conn
        conn.execute(delete(_s).where(_s.c.token_hash == _token_hash(token)))
        uow.commit()


# --- second factor (TOTP) ---------------------------------------------------------------


def new_totp_secret() -> str:
    """A fresh base32 TOTP secret for a person to enrol."""
    return pyotp.random_base32()


def totp_uri(secret: str, username: str) -> str:
    """The otpauth:// URI an authenticator app reads."""
    return pyotp.TOTP(secret).provisioning_uri(name=username, issuer_name=TOTP_ISSUER)


def verify_second_factor(
    rt: Runtime, token: str, code: str, enrol_secret: str | None = None
) -> None:
    """Check a TOTP code for a session whose second factor is due; enrols ``enrol_secret``
    first when the person has none yet. A wrong code counts as a failed sign-in."""
    now = utcnow()
    digest = _token_hash(token)
    with UnitOfWork(rt, read_only=True) as uow:
        conn = uow.conn
        row = conn.execute(
            select(_u, _s.c.second_factor_due)
            .select_from(_s.join(_u, _u.c.id == _s.c.user_id))
            .where(_s.c.token_hash == digest)
        ).first()
    if row is None or not row.second_factor_due:
        raise SignInRefused("no sign-in waiting for a code")
    if row.state != "active" or (row.locked_until is not None and row.locked_until > now):
        raise SignInRefused()
    if row.totp_secret is not None:
        secret = rt.keyring.decrypt(row.totp_key_id, row.totp_secret)
    elif enrol_secret is not None and len(enrol_secret) <= 64:
        secret = enrol_secret
    else:
        raise SignInRefused("enrol an authenticator first")
    if not pyotp.TOTP(secret).verify(code.strip(), valid_window=1):
        _count_failure(rt, row, now)
        raise SignInRefused("wrong code")
    with UnitOfWork(rt) as uow:
        conn = uow.conn
        if row.totp_secret is None:
            key_id, blob = rt.keyring.encrypt(secret)
            conn.execute(
                update(_u).where(_u.c.id == row.id).values(totp_secret=blob, totp_key_id=key_id)
            )
            audit.record(
                conn,
                _principal_of_row(row),
                "user.totp_enrol",
                "user",
                row.username,
                row.service_provider_id,
            )
        conn.execute(update(_s).where(_s.c.token_hash == digest).values(second_factor_due=False))
        conn.execute(
            update(_u).where(_u.c.id == row.id).values(failed_sign_ins=0, locked_until=None)
        )
        _signed_in(conn, row, now)
        uow.commit()
