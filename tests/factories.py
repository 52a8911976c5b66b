"""One-line builders of catalog objects for tests."""

from typing import Any

from voms.runtime import Runtime
from voms.services import auth, catalog
from voms.services.auth import CONSOLE


def service_provider(rt: Runtime, code: str = "ACME") -> dict[str, Any]:
    return catalog.create_service_provider(
        rt, CONSOLE, catalog.ServiceProviderIn(code=code, name=f"{code} Mobile")
    )


def balance_type(
    rt: Runtime, code: str = "CASH", sp: str = "ACME", max_balance: int | None = None
) -> dict[str, Any]:
    return catalog.create_balance_type(
        rt,
        CONSOLE,
        catalog.BalanceTypeIn(
            code=code,
            name=code.title(),
            unit="cent",
            currency="KES" if code == "CASH" else None,
            service_provider=sp,
            max_balance=max_balance,
        ),
    )


def product_type(rt: Runtime, code: str = "GOLD", sp: str = "ACME") -> dict[str, Any]:
    return catalog.create_product_type(
        rt, CONSOLE, catalog.ProductTypeIn(code=code, name=code.title(), service_provider=sp)
    )


def voucher_type(
    rt: Runtime, code: str = "TOPUP10", sp: str = "ACME", **fields: Any
) -> dict[str, Any]:
    body: dict[str, Any] = {
        "code": code,
        "name": f"{code} voucher",
        "service_provider": sp,
        "pin_length": 14,
        "validity_days": 365,
        "scenarios": [
            {
                "number": 1,
                "name": "10 KES",
                "default": True,
                "credits": [
                    {"balance_type": "CASH", "amount": 1000, "balance_expiry_extension_days": 30}
                ],
                "account_expiry_extension_days": 60,
            }
        ],
    }
    body.update(fields)
    return catalog.create_voucher_type(rt, CONSOLE, catalog.VoucherTypeIn.model_validate(body))


def standard_catalog(rt: Runtime, sp: str = "ACME") -> None:
    """A provider with CASH and SMS balances, GOLD and SILVER products, TOPUP10."""
    service_provider(rt, sp)
    balance_type(rt, "CASH", sp)
    balance_type(rt, "SMS", sp)
    product_type(rt, "GOLD", sp)
    product_type(rt, "SILVER", sp)
    voucher_type(rt, "TOPUP10" if sp == "ACME" else f"TOPUP10_{sp}", sp)


def api_key(
    rt: Runtime, role: str = "admin", sp: str | None = None, name: str | None = None
) -> str:
    _, secret = auth.create_api_key(
        rt, CONSOLE, name=name or f"{role}-{sp or 'all'}", role=role, service_provider=sp
    )
    return secret
