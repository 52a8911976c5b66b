"""Catalog: service providers, balance types, product types, voucher types + scenarios."""

from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, field_validator
from sqlalchemy import Connection, Row, Table, delete, insert, select, update
from sqlalchemy.exc import IntegrityError

from voms.billing.config import Billing, SecretMissing, parse, resolve_secret
from voms.db import tables as t
from voms.db.types import utcnow
from voms.domain.catalog import Credit, Scenario, ScenarioSelection, VoucherType
from voms.domain.errors import Conflict, Invalid, NotFound
from voms.domain.pins import MAX_PIN_LENGTH, MIN_PIN_LENGTH
from voms.domain.roles import Permission
from voms.runtime import Runtime
from voms.services import audit, paging, recharge_limits
from voms.services.auth import Principal, service_provider_id_by_code
from voms.services.recharge_limits import RechargeLimitsIn
from voms.services.uow import UnitOfWork

# Starts with a letter, digit or underscore: a code starting with "-" would be run as a
# formula by the spreadsheets that open exports.
Code = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,31}$")]
Name = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=200)]
Unit = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=32)]
Currency = Annotated[str, StringConstraints(pattern=r"^[A-Z]{3}$")]
TimeoutAction = Literal["hold", "commit", "revoke"]
# The balance at an external charging system: "main" or a dedicated account number.
ExternalId = Annotated[str, StringConstraints(pattern=r"^(main|[0-9]{1,9})$")]
MAX_AMOUNT = 10**15


class _Input(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ServiceProviderIn(_Input):
    code: Code
    name: Name


class ServiceProviderUpdate(_Input):
    name: Name | None = None
    recharge_limits: RechargeLimitsIn | None = None
    # Where the provider's balances live (admin only; docs/charging.md).
    billing: Billing | None = None


class BalanceTypeIn(_Input):
    code: Code
    name: Name
    unit: Unit = Field(description="What one minor unit is: cent, sms, MB, second…")
    currency: Currency | None = None
    service_provider: Code
    max_balance: Annotated[int, Field(gt=0, le=MAX_AMOUNT)] | None = None
    external_id: ExternalId | None = None


class BalanceTypeUpdate(_Input):
    name: Name | None = None
    unit: Unit | None = None
    currency: Currency | None = None
    max_balance: Annotated[int, Field(gt=0, le=MAX_AMOUNT)] | None = None
    external_id: ExternalId | None = None


class ProductTypeIn(_Input):
    code: Code
    name: Name
    service_provider: Code


class ProductTypeUpdate(_Input):
    name: Name | None = None


class CreditIn(_Input):
    balance_type: Code
    amount: Annotated[int, Field(gt=0, le=MAX_AMOUNT)]
    balance_expiry_extension_days: Annotated[int, Field(ge=0, le=36_500)] = 0


class ScenarioIn(_Input):
    number: Annotated[int, Field(ge=1, le=99)]
    name: Name
    default: bool = False
    credits: list[CreditIn] = Field(default_factory=list, max_length=20)
    account_expiry_extension_days: Annotated[int, Field(ge=0, le=36_500)] = 0
    new_product_type: Code | None = None
    # A campaign scenario (docs/promotions.md): offered only from valid_from until
    # valid_until, and only to these product types (empty: all).
    valid_from: datetime | None = None
    valid_until: datetime | None = None
    product_types: list[Code] = Field(default_factory=list, max_length=100)

    @field_validator("valid_from", "valid_until")
    @classmethod
    def _aware(cls, value: datetime | None) -> datetime | None:
        if value is not None and value.tzinfo is None:
            raise ValueError("needs a UTC offset, e.g. 2027-07-01T00:00:00+00:00")
        return value


class VoucherTypeIn(_Input):
    code: Code
    name: Name
    service_provider: Code
    pin_length: Annotated[int, Field(ge=MIN_PIN_LENGTH, le=MAX_PIN_LENGTH)] = 14
    validity_days: Annotated[int, Field(gt=0, le=36_500)] = 365
    reservation_timeout_s: Annotated[int, Field(gt=0, le=86_400 * 30)] = 300
    timeout_action: TimeoutAction = "revoke"
    allowed_product_types: list[Code] = Field(default_factory=list)
    scenarios: list[ScenarioIn] = Field(min_length=1, max_length=99)
    scenario_selection: ScenarioSelection = "prompt"


class VoucherTypeUpdate(_Input):
    """What may change on a voucher type; the PIN length is fixed once vouchers exist."""

    name: Name | None = None
    validity_days: Annotated[int, Field(gt=0, le=36_500)] | None = None
    reservation_timeout_s: Annotated[int, Field(gt=0, le=86_400 * 30)] | None = None
    timeout_action: TimeoutAction | None = None
    allowed_product_types: list[Code] | None = None
    scenarios: list[ScenarioIn] | None = Field(None, min_length=1, max_length=99)
    scenario_selection: ScenarioSelection | None = None


# --- helpers ---------------------------------------------------------------------


def _sp_codes(conn: Connection) -> dict[int, str]:
    rows = conn.execute(select(t.service_providers.c.id, t.service_providers.c.code))
    return {row.id: row.code for row in rows}


def _code_id(conn: Connection, table: Table, sp_id: int, code: str, what: str) -> int:
    row_id = conn.execute(
        select(table.c.id).where(table.c.service_provider_id == sp_id, table.c.code == code)
    ).scalar()
    if row_id is None:
        raise NotFound(f"{what} '{code}' not found")
    return int(row_id)


def _insert(conn: Connection, table: Table, what: str, code: str, /, **values: Any) -> int:
    try:
        with conn.begin_nested():
            return int(
                conn.execute(
                    insert(table).values(created_at=utcnow(), **values).returning(table.c.id)
                ).scalar_one()
            )
    except IntegrityError:
        raise Conflict(f"{what} '{code}' already exists") from None


def _found(what: str, code: str, existing: dict[str, Any], body: BaseModel) -> dict[str, Any]:
    """An object that exists already: itself when ``body`` asks for exactly what it is
    (creating is idempotent), else 409 naming the fields that differ."""
    wanted = body.model_dump()
    differ = sorted(
        k for k, v in wanted.items() if _comparable(k, existing.get(k)) != _comparable(k, v)
    )
    if differ:
        raise Conflict(f"{what} '{code}' already exists with other {', '.join(differ)}")
    return existing


def _comparable(field: str, value: Any) -> Any:
    if field == "scenarios" and isinstance(value, list):
        return sorted(
            (_comparable_scenario(scenario) for scenario in value),
            key=lambda scenario: scenario["number"],
        )
    if field == "allowed_product_types" and isinstance(value, list):
        return sorted(value)
    return value


def _comparable_scenario(scenario: dict[str, Any]) -> dict[str, Any]:
    shown = {k: v for k, v in scenario.items() if k not in _CAMPAIGN or v}
    if "product_types" in shown:
        shown["product_types"] = sorted(shown["product_types"])
    return shown


# Fields a PATCH may set to null: a limit or currency removed; for the lists, null
# leaves them as they are.
_NULLABLE = frozenset(
    {
        "currency",
        "max_balance",
        "allowed_product_types",
        "scenarios",
        "recharge_limits",
        "external_id",
        "billing",
    }
)


def _changes(update_model: BaseModel) -> dict[str, Any]:
    changes = update_model.model_dump(exclude_unset=True)
    cleared = sorted(k for k, v in changes.items() if v is None and k not in _NULLABLE)
    if cleared:
        raise Invalid(f"{', '.join(cleared)} cannot be null")
    return changes


# --- service providers -----------------------------------------------------------


def _sp_public(row: Row[Any]) -> dict[str, Any]:
    return {
        "code": row.code,
        "name": row.name,
        "recharge_limits": row.recharge_limits,
        "created_at": row.created_at,
        "billing": row.billing or {"engine": "builtin"},
    }


def _billing_change(rt: Runtime, actor: Principal, sp_id: int, changes: dict[str, Any]) -> None:
    """Only an admin chooses where balances live; every secret it names must be readable
    here (the configuration holds references only), and the built-in wallet is null."""
    if "billing" not in changes:
        return
    actor.require(Permission.BILLING_ADMIN, sp_id)
    billing = changes["billing"]
    if billing is None or billing["engine"] == "builtin":
        changes["billing"] = None
        return
    config = parse({k: v for k, v in billing.items() if v is not None})
    for name in ("password", "secret"):
        reference = getattr(config, name, None)
        if reference is not None:
            try:
                resolve_secret(reference, rt.keyring.secrets)
            except SecretMissing as missing:
                raise Invalid(str(missing)) from None
    changes["billing"] = config.model_dump(exclude_none=True)
    rt.caches.pop("charging.billing", None)  # this process uses it at once, others within 5 s


def create_service_provider(
    rt: Runtime, actor: Principal, body: ServiceProviderIn
) -> dict[str, Any]:
    """Create a service provider (brand/MVNO); only unscoped keys may."""
    return create_or_find_service_provider(rt, actor, body)[0]


def create_or_find_service_provider(
    rt: Runtime, actor: Principal, body: ServiceProviderIn
) -> tuple[dict[str, Any], bool]:
    """The provider and True when created; the same one and False when it exists with
    the same fields (409 with other fields)."""
    actor.require(Permission.CATALOG_WRITE)
    actor.require_unscoped()
    with UnitOfWork(rt) as uow:
        conn = uow.conn
        try:
            sp_id = _insert(
                conn, t.service_providers, "service provider", body.code, **body.model_dump()
            )
        except Conflict:
            row = conn.execute(
                select(t.service_providers).where(t.service_providers.c.code == body.code)
            ).one()
            return _found("service provider", body.code, _sp_public(row), body), False
        audit.record(
            conn,
            actor,
            "service_provider.create",
            "service_provider",
            body.code,
            sp_id,
            body.model_dump(),
        )
        result = _sp_public(
            conn.execute(select(t.service_providers).where(t.service_providers.c.id == sp_id)).one()
        )
        uow.commit()
        return result, True


def list_service_providers(
    rt: Runtime, actor: Principal, *, after: paging.Key | None = None, limit: int | None = None
) -> list[dict[str, Any]]:
    """Providers by code; ``after`` (a code) and ``limit`` page through them."""
    actor.require(Permission.CATALOG_READ)
    query = select(t.service_providers).order_by(t.service_providers.c.code).limit(limit)
    if after is not None:
        query = query.where(t.service_providers.c.code > after[0])
    if actor.service_provider_id is not None:
        query = query.where(t.service_providers.c.id == actor.service_provider_id)
    with UnitOfWork(rt, read_only=True) as uow:
        conn = uow.conn
        return [_sp_public(row) for row in conn.execute(query)]


def get_service_provider(rt: Runtime, actor: Principal, code: str) -> dict[str, Any]:
    actor.require(Permission.CATALOG_READ)
    with UnitOfWork(rt, read_only=True) as uow:
        conn = uow.conn
        row = conn.execute(
            select(t.service_providers).where(t.service_providers.c.code == code)
        ).first()
    if row is None:
        raise NotFound(f"service provider '{code}' not found")
    actor.require_scope(row.id)
    return _sp_public(row)


def update_service_provider(
    rt: Runtime, actor: Principal, code: str, body: ServiceProviderUpdate
) -> dict[str, Any]:
    with UnitOfWork(rt) as uow:
        conn = uow.conn
        sp_id = service_provider_id_by_code(conn, code)
        actor.require(Permission.CATALOG_WRITE, sp_id)
        changes = _changes(body)
        if "recharge_limits" in changes:  # merged into the current ones (docs/policy.md)
            changes["recharge_limits"] = recharge_limits.merged(conn, sp_id, body.recharge_limits)
            uow.after_commit(lambda: recharge_limits.forget(rt))
        _billing_change(rt, actor, sp_id, changes)
        if changes:
            conn.execute(
                update(t.service_providers)
                .where(t.service_providers.c.id == sp_id)
                .values(**changes)
            )
            audit.record(
                conn, actor, "service_provider.update", "service_provider", code, sp_id, changes
            )
        result = _sp_public(
            conn.execute(select(t.service_providers).where(t.service_providers.c.id == sp_id)).one()
        )
        uow.commit()
        return result


# --- balance types and product types ---------------------------------------------


def _bt_public(row: Row[Any], sp_codes: dict[int, str]) -> dict[str, Any]:
    return {
        "code": row.code,
        "name": row.name,
        "unit": row.unit,
        "currency": row.currency,
        "service_provider": sp_codes[row.service_provider_id],
        "max_balance": row.max_balance,
        "external_id": row.external_id,
        "created_at": row.created_at,
    }


def _pt_public(row: Row[Any], sp_codes: dict[int, str]) -> dict[str, Any]:
    return {
        "code": row.code,
        "name": row.name,
        "service_provider": sp_codes[row.service_provider_id],
        "created_at": row.created_at,
    }


_SIMPLE = {
    "balance_type": (t.balance_types, "balance type", _bt_public),
    "product_type": (t.product_types, "product type", _pt_public),
}


def _create_simple(
    rt: Runtime, actor: Principal, kind: str, body: BalanceTypeIn | ProductTypeIn
) -> tuple[dict[str, Any], bool]:
    table, what, public = _SIMPLE[kind]
    with UnitOfWork(rt) as uow:
        conn = uow.conn
        sp_id = service_provider_id_by_code(conn, body.service_provider)
        actor.require(Permission.CATALOG_WRITE, sp_id)
        values = body.model_dump(exclude={"service_provider"})
        try:
            row_id = _insert(conn, table, what, body.code, service_provider_id=sp_id, **values)
        except Conflict:
            row_id = _code_id(conn, table, sp_id, body.code, what)
            row = conn.execute(select(table).where(table.c.id == row_id)).one()
            return _found(what, body.code, public(row, _sp_codes(conn)), body), False
        audit.record(
            conn,
            actor,
            f"{kind}.create",
            kind,
            f"{body.service_provider}/{body.code}",
            sp_id,
            body.model_dump(),
        )
        result = public(
            conn.execute(select(table).where(table.c.id == row_id)).one(), _sp_codes(conn)
        )
        uow.commit()
        return result, True


def _list_simple(
    rt: Runtime,
    actor: Principal,
    kind: str,
    service_provider: str | None,
    after: paging.Key | None = None,
    limit: int | None = None,
) -> list[dict[str, Any]]:
    """By provider code and code; ``after`` ((provider, code)) and ``limit`` page."""
    table, _, public = _SIMPLE[kind]
    sp = t.service_providers
    actor.require(Permission.CATALOG_READ)
    with UnitOfWork(rt, read_only=True) as uow:
        conn = uow.conn
        query = (
            select(table)
            .join(sp, sp.c.id == table.c.service_provider_id)
            .order_by(sp.c.code, table.c.code)
            .limit(limit)
        )
        if after is not None:
            query = query.where(paging.after((sp.c.code, table.c.code), after))
        if service_provider is not None:
            sp_id = service_provider_id_by_code(conn, service_provider)
            actor.require_scope(sp_id)
            query = query.where(table.c.service_provider_id == sp_id)
        if actor.service_provider_id is not None:
            query = query.where(table.c.service_provider_id == actor.service_provider_id)
        codes = _sp_codes(conn)
        return [public(row, codes) for row in conn.execute(query)]


def _get_simple(
    rt: Runtime, actor: Principal, kind: str, service_provider: str, code: str
) -> dict[str, Any]:
    table, what, public = _SIMPLE[kind]
    actor.require(Permission.CATALOG_READ)
    with UnitOfWork(rt, read_only=True) as uow:
        conn = uow.conn
        sp_id = service_provider_id_by_code(conn, service_provider)
        actor.require_scope(sp_id)
        row_id = _code_id(conn, table, sp_id, code, what)
        return public(
            conn.execute(select(table).where(table.c.id == row_id)).one(), _sp_codes(conn)
        )


def _update_simple(
    rt: Runtime, actor: Principal, kind: str, service_provider: str, code: str, body: BaseModel
) -> dict[str, Any]:
    table, what, public = _SIMPLE[kind]
    with UnitOfWork(rt) as uow:
        conn = uow.conn
        sp_id = service_provider_id_by_code(conn, service_provider)
        actor.require(Permission.CATALOG_WRITE, sp_id)
        row_id = _code_id(conn, table, sp_id, code, what)
        changes = _changes(body)
        if changes:
            conn.execute(update(table).where(table.c.id == row_id).values(**changes))
            audit.record(
                conn, actor, f"{kind}.update", kind, f"{service_provider}/{code}", sp_id, changes
            )
        result = public(
            conn.execute(select(table).where(table.c.id == row_id)).one(), _sp_codes(conn)
        )
        uow.commit()
        return result


def create_balance_type(rt: Runtime, actor: Principal, body: BalanceTypeIn) -> dict[str, Any]:
    """Create a balance type (cash in a currency, SMS, data, minutes) of one provider."""
    return _create_simple(rt, actor, "balance_type", body)[0]


def create_or_find_balance_type(
    rt: Runtime, actor: Principal, body: BalanceTypeIn
) -> tuple[dict[str, Any], bool]:
    """As create_or_find_service_provider, for a balance type."""
    return _create_simple(rt, actor, "balance_type", body)


def list_balance_types(
    rt: Runtime,
    actor: Principal,
    service_provider: str | None = None,
    *,
    after: paging.Key | None = None,
    limit: int | None = None,
) -> list[dict[str, Any]]:
    return _list_simple(rt, actor, "balance_type", service_provider, after, limit)


def get_balance_type(
    rt: Runtime, actor: Principal, service_provider: str, code: str
) -> dict[str, Any]:
    return _get_simple(rt, actor, "balance_type", service_provider, code)


def update_balance_type(
    rt: Runtime, actor: Principal, service_provider: str, code: str, body: BalanceTypeUpdate
) -> dict[str, Any]:
    return _update_simple(rt, actor, "balance_type", service_provider, code, body)


def create_product_type(rt: Runtime, actor: Principal, body: ProductTypeIn) -> dict[str, Any]:
    """Create a product type (tariff such as Gold or Platinum) of one provider."""
    return _create_simple(rt, actor, "product_type", body)[0]


def create_or_find_product_type(
    rt: Runtime, actor: Principal, body: ProductTypeIn
) -> tuple[dict[str, Any], bool]:
    """As create_or_find_service_provider, for a product type."""
    return _create_simple(rt, actor, "product_type", body)


def list_product_types(
    rt: Runtime,
    actor: Principal,
    service_provider: str | None = None,
    *,
    after: paging.Key | None = None,
    limit: int | None = None,
) -> list[dict[str, Any]]:
    return _list_simple(rt, actor, "product_type", service_provider, after, limit)


def get_product_type(
    rt: Runtime, actor: Principal, service_provider: str, code: str
) -> dict[str, Any]:
    return _get_simple(rt, actor, "product_type", service_provider, code)


def update_product_type(
    rt: Runtime, actor: Principal, service_provider: str, code: str, body: ProductTypeUpdate
) -> dict[str, Any]:
    return _update_simple(rt, actor, "product_type", service_provider, code, body)


# --- voucher types ---------------------------------------------------------------


def _check_scenarios(scenarios: list[ScenarioIn]) -> None:
    numbers = [s.number for s in scenarios]
    if len(set(numbers)) != len(numbers):
        raise Invalid("scenario numbers must be unique")
    if sum(s.default for s in scenarios) > 1:
        raise Invalid("at most one scenario may be the default")
    for scenario in scenarios:
        kinds = [c.balance_type for c in scenario.credits]
        if len(set(kinds)) != len(kinds):
            raise Invalid(f"scenario {scenario.number} credits one balance type twice")
        if (
            not scenario.credits
            and not scenario.account_expiry_extension_days
            and not scenario.new_product_type
        ):
            raise Invalid(f"scenario {scenario.number} gives nothing")
        if (
            scenario.valid_from is not None
            and scenario.valid_until is not None
            and scenario.valid_until <= scenario.valid_from
        ):
            raise Invalid(f"scenario {scenario.number} ends before it starts")


def _check_selection(selection: str, scenarios: list[dict[str, Any]]) -> None:
    """``scenario_selection: default`` needs a default scenario to apply."""
    if selection == "default" and not any(s["default"] for s in scenarios):
        raise Invalid("scenario_selection 'default' needs a scenario with default: true")


def _write_scenarios(conn: Connection, vt_id: int, sp_id: int, scenarios: list[ScenarioIn]) -> None:
    _check_scenarios(scenarios)
    conn.execute(delete(t.scenarios).where(t.scenarios.c.voucher_type_id == vt_id))
    for scenario in scenarios:
        new_pt = (
            _code_id(conn, t.product_types, sp_id, scenario.new_product_type, "product type")
            if scenario.new_product_type
            else None
        )
        scenario_id = conn.execute(
            insert(t.scenarios)
            .values(
                voucher_type_id=vt_id,
                number=scenario.number,
                name=scenario.name,
                is_default=scenario.default or len(scenarios) == 1,
                account_expiry_extension_days=scenario.account_expiry_extension_days,
                new_product_type_id=new_pt,
                valid_from=scenario.valid_from,
                valid_until=scenario.valid_until,
            )
            .returning(t.scenarios.c.id)
        ).scalar_one()
        for code in dict.fromkeys(scenario.product_types):
            conn.execute(
                insert(t.scenario_product_types).values(
                    scenario_id=scenario_id,
                    product_type_id=_code_id(conn, t.product_types, sp_id, code, "product type"),
                )
            )
        for credit in scenario.credits:
            conn.execute(
                insert(t.scenario_credits).values(
                    scenario_id=scenario_id,
                    balance_type_id=_code_id(
                        conn, t.balance_types, sp_id, credit.balance_type, "balance type"
                    ),
                    amount=credit.amount,
                    balance_expiry_extension_days=credit.balance_expiry_extension_days,
                )
            )


def _write_allowed_product_types(
    conn: Connection, vt_id: int, sp_id: int, codes: list[str]
) -> None:
    conn.execute(
        delete(t.voucher_type_product_types).where(
            t.voucher_type_product_types.c.voucher_type_id == vt_id
        )
    )
    for code in dict.fromkeys(codes):
        conn.execute(
            insert(t.voucher_type_product_types).values(
                voucher_type_id=vt_id,
                product_type_id=_code_id(conn, t.product_types, sp_id, code, "product type"),
            )
        )


def load_voucher_type(
    conn: Connection, *, code: str | None = None, voucher_type_id: int | None = None
) -> dict[str, Any]:
    """A voucher type with its scenarios, credits and allowed product types, by code or id.

    The scenario credits carry both codes (for responses) and ids (for the wallet).
    """
    vt = t.voucher_types
    query = select(vt, t.service_providers.c.code.label("sp_code")).join(
        t.service_providers, t.service_providers.c.id == vt.c.service_provider_id
    )
    query = (
        query.where(vt.c.code == code)
        if code is not None
        else query.where(vt.c.id == voucher_type_id)
    )
    row = conn.execute(query).first()
    if row is None:
        raise NotFound(f"voucher type '{code if code is not None else voucher_type_id}' not found")
    pt = t.product_types
    allowed = conn.execute(
        select(pt.c.id, pt.c.code)
        .join(
            t.voucher_type_product_types, t.voucher_type_product_types.c.product_type_id == pt.c.id
        )
        .where(t.voucher_type_product_types.c.voucher_type_id == row.id)
        .order_by(pt.c.code)
    ).all()
    sc, cr, bt = t.scenarios, t.scenario_credits, t.balance_types
    scenario_rows = conn.execute(
        select(sc, pt.c.code.label("new_pt_code"))
        .outerjoin(pt, pt.c.id == sc.c.new_product_type_id)
        .where(sc.c.voucher_type_id == row.id)
        .order_by(sc.c.number)
    ).all()
    credit_rows = conn.execute(
        select(cr, bt.c.code.label("bt_code"))
        .join(bt, bt.c.id == cr.c.balance_type_id)
        .join(sc, sc.c.id == cr.c.scenario_id)
        .where(sc.c.voucher_type_id == row.id)
        .order_by(cr.c.id)
    ).all()
    offered_to = conn.execute(
        select(t.scenario_product_types.c.scenario_id, pt.c.id, pt.c.code)
        .join(pt, pt.c.id == t.scenario_product_types.c.product_type_id)
        .join(sc, sc.c.id == t.scenario_product_types.c.scenario_id)
        .where(sc.c.voucher_type_id == row.id)
        .order_by(pt.c.code)
    ).all()
    scenarios = []
    for s in scenario_rows:
        scenarios.append(
            {
                "number": s.number,
                "name": s.name,
                "default": s.is_default,
                "credits": [
                    {
                        "balance_type": c.bt_code,
                        "balance_type_id": c.balance_type_id,
                        "amount": c.amount,
                        "balance_expiry_extension_days": c.balance_expiry_extension_days,
                    }
                    for c in credit_rows
                    if c.scenario_id == s.id
                ],
                "account_expiry_extension_days": s.account_expiry_extension_days,
                "new_product_type": s.new_pt_code,
                "new_product_type_id": s.new_product_type_id,
                "valid_from": s.valid_from,
                "valid_until": s.valid_until,
                "product_types": [o.code for o in offered_to if o.scenario_id == s.id],
                "product_type_ids": [o.id for o in offered_to if o.scenario_id == s.id],
            }
        )
    return {
        "id": row.id,
        "code": row.code,
        "name": row.name,
        "service_provider": row.sp_code,
        "service_provider_id": row.service_provider_id,
        "pin_length": row.pin_length,
        "validity_days": row.validity_days,
        "reservation_timeout_s": row.reservation_timeout_s,
        "timeout_action": row.timeout_action,
        "allowed_product_types": [a.code for a in allowed],
        "allowed_product_type_ids": [a.id for a in allowed],
        "scenarios": scenarios,
        "scenario_selection": row.scenario_selection,
        "created_at": row.created_at,
    }


_INTERNAL_KEYS = ("id", "service_provider_id", "allowed_product_type_ids")


def public_voucher_type(loaded: dict[str, Any]) -> dict[str, Any]:
    """A loaded voucher type without internal ids, as the API shows it."""
    shown = {k: v for k, v in loaded.items() if k not in _INTERNAL_KEYS}
    shown["scenarios"] = [public_scenario(s) for s in loaded["scenarios"]]
    return shown


def voucher_type_of(loaded: dict[str, Any]) -> VoucherType:
    """The typed voucher type of what :func:`load_voucher_type` gives."""
    return VoucherType(
        id=loaded["id"],
        code=loaded["code"],
        service_provider_id=loaded["service_provider_id"],
        pin_length=loaded["pin_length"],
        reservation_timeout_s=loaded["reservation_timeout_s"],
        timeout_action=loaded["timeout_action"],
        allowed_product_type_ids=frozenset(loaded["allowed_product_type_ids"]),
        scenarios=tuple(
            Scenario(
                number=s["number"],
                name=s["name"],
                default=s["default"],
                credits=tuple(
                    Credit(
                        balance_type_id=c["balance_type_id"],
                        balance_type=c["balance_type"],
                        amount=c["amount"],
                        balance_expiry_extension_days=c["balance_expiry_extension_days"],
                    )
                    for c in s["credits"]
                ),
                account_expiry_extension_days=s["account_expiry_extension_days"],
                new_product_type_id=s["new_product_type_id"],
                new_product_type=s["new_product_type"],
                valid_from=s["valid_from"],
                valid_until=s["valid_until"],
                product_type_ids=frozenset(s["product_type_ids"]),
            )
            for s in loaded["scenarios"]
        ),
        scenario_selection=loaded["scenario_selection"],
    )


def public_scenario(scenario: dict[str, Any]) -> dict[str, Any]:
    return {
        "number": scenario["number"],
        "name": scenario["name"],
        "default": scenario["default"],
        "credits": [
            {k: c[k] for k in ("balance_type", "amount", "balance_expiry_extension_days")}
            for c in scenario["credits"]
        ],
        "account_expiry_extension_days": scenario["account_expiry_extension_days"],
        "new_product_type": scenario["new_product_type"],
        # A campaign scenario's window and product types, shown only when it has them.
        **{k: scenario[k] for k in _CAMPAIGN if scenario[k]},
    }


_CAMPAIGN = ("valid_from", "valid_until", "product_types")


def create_voucher_type(rt: Runtime, actor: Principal, body: VoucherTypeIn) -> dict[str, Any]:
    """Create a voucher type with its scenarios; every reference must exist in its provider."""
    return create_or_find_voucher_type(rt, actor, body)[0]


def create_or_find_voucher_type(
    rt: Runtime, actor: Principal, body: VoucherTypeIn
) -> tuple[dict[str, Any], bool]:
    """As create_or_find_service_provider, for a voucher type and its scenarios."""
    with UnitOfWork(rt) as uow:
        conn = uow.conn
        sp_id = service_provider_id_by_code(conn, body.service_provider)
        actor.require(Permission.CATALOG_WRITE, sp_id)
        values = body.model_dump(exclude={"service_provider", "scenarios", "allowed_product_types"})
        try:
            vt_id = _insert(
                conn,
                t.voucher_types,
                "voucher type",
                body.code,
                service_provider_id=sp_id,
                **values,
            )
        except Conflict:
            existing = load_voucher_type(conn, code=body.code)
            if existing["service_provider_id"] != sp_id:  # codes are unique across providers
                raise
            return _found("voucher type", body.code, public_voucher_type(existing), body), False
        _write_allowed_product_types(conn, vt_id, sp_id, body.allowed_product_types)
        _write_scenarios(conn, vt_id, sp_id, body.scenarios)
        audit.record(
            conn,
            actor,
            "voucher_type.create",
            "voucher_type",
            body.code,
            sp_id,
            body.model_dump(mode="json"),
        )
        result = public_voucher_type(load_voucher_type(conn, voucher_type_id=vt_id))
        _check_selection(body.scenario_selection, result["scenarios"])
        uow.commit()
        return result, True


def list_voucher_types(
    rt: Runtime,
    actor: Principal,
    service_provider: str | None = None,
    *,
    after: paging.Key | None = None,
    limit: int | None = None,
) -> list[dict[str, Any]]:
    """Voucher types by code; ``after`` (a code) and ``limit`` page through them."""
    actor.require(Permission.CATALOG_READ)
    with UnitOfWork(rt, read_only=True) as uow:
        conn = uow.conn
        query = select(t.voucher_types.c.id).order_by(t.voucher_types.c.code).limit(limit)
        if after is not None:
            query = query.where(t.voucher_types.c.code > after[0])
        if service_provider is not None:
            sp_id = service_provider_id_by_code(conn, service_provider)
            actor.require_scope(sp_id)
            query = query.where(t.voucher_types.c.service_provider_id == sp_id)
        if actor.service_provider_id is not None:
            query = query.where(t.voucher_types.c.service_provider_id == actor.service_provider_id)
        return [
            public_voucher_type(load_voucher_type(conn, voucher_type_id=vt_id))
            for vt_id in conn.execute(query).scalars()
        ]


def get_voucher_type(rt: Runtime, actor: Principal, code: str) -> dict[str, Any]:
    actor.require(Permission.CATALOG_READ)
    with UnitOfWork(rt, read_only=True) as uow:
        conn = uow.conn
        loaded = load_voucher_type(conn, code=code)
    actor.require_scope(loaded["service_provider_id"])
    return public_voucher_type(loaded)


def update_voucher_type(
    rt: Runtime, actor: Principal, code: str, body: VoucherTypeUpdate
) -> dict[str, Any]:
    """Change a voucher type; given scenarios or allowed product types replace the old ones."""
    with UnitOfWork(rt) as uow:
        conn = uow.conn
        loaded = load_voucher_type(conn, code=code)
        sp_id = loaded["service_provider_id"]
        actor.require(Permission.CATALOG_WRITE, sp_id)
        changes = _changes(body)
        columns = {
            k: v for k, v in changes.items() if k not in ("scenarios", "allowed_product_types")
        }
        if columns:
            conn.execute(
                update(t.voucher_types)
                .where(t.voucher_types.c.id == loaded["id"])
                .values(**columns)
            )
        if body.allowed_product_types is not None:
            _write_allowed_product_types(conn, loaded["id"], sp_id, body.allowed_product_types)
        if body.scenarios is not None:
            _write_scenarios(conn, loaded["id"], sp_id, body.scenarios)
        if changes:
            detail = body.model_dump(mode="json", exclude_unset=True)
            audit.record(conn, actor, "voucher_type.update", "voucher_type", code, sp_id, detail)
        result = public_voucher_type(load_voucher_type(conn, voucher_type_id=loaded["id"]))
        _check_selection(result["scenario_selection"], result["scenarios"])
        uow.commit()
        return result


def scenarios_of(rt: Runtime, actor: Principal, code: str) -> list[dict[str, Any]]:
    """The scenarios of a voucher type with their credits (GET …/scenarios)."""
    return get_voucher_type(rt, actor, code)["scenarios"]  # type: ignore[no-any-return]
