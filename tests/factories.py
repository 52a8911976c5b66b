"""One-line builders of catalog objects for tests."""

from pathlib import Path
from typing import Any

from voms.config import Settings
from voms.crypto import Keyring, write_keyring
from voms.db.engine import make_engine
from voms.db.migrate import upgrade
from voms.runtime import Runtime, build_runtime
from voms.services import auth, catalog
from voms.services.auth import CONSOLE


def new_installation(database_url: str, keys_file: Path) -> Runtime:
    """A new key file and the migrated schema: what a process started on them will find."""
    write_keyring(keys_file, Keyring.new())
    settings = Settings(database_url=database_url, keys_file=keys_file)
    engine = make_engine(settings)
    upgrade(engine)
    engine.dispose()
    return build_runtime(settings)


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
    rt: Runtime,
    role: str = "admin",
    sp: str | None = None,
    name: str | None = None,
    allow: tuple[str, ...] = (),
) -> str:
    _, secret = auth.create_api_key(
        rt,
        CONSOLE,
        name=name or f"{role}-{sp or 'all'}{''.join('+' + a for a in allow)}",
        role=role,
        service_provider=sp,
        allow=allow,
    )
    return secret


def active_batch(
    rt: Runtime, voucher_type: str = "TOPUP10", count: int = 10, activate: bool = True
) -> list[tuple[str, str]]:
    """A batch made by the real generator (and activated): its (serial, PIN) pairs.

    PINs are recovered by decrypting the stored ciphertexts, as only tests may.
    """
    from sqlalchemy import select

    from voms.db import tables as t
    from voms.domain.serials import format_serial
    from voms.services import generation, lifecycle

    batch = generation.generate_batch(rt, CONSOLE, voucher_type=voucher_type, count=count)
    if activate:
        lifecycle.change_batch(rt, CONSOLE, batch["batch_id"], "activate")
    v = t.vouchers
    with rt.engine.connect() as conn:
        rows = conn.execute(
            select(v.c.serial, v.c.encryption_key_id, v.c.pin_ciphertext)
            .where(v.c.batch_id == batch["batch_id"])
            .order_by(v.c.serial)
        ).all()
    width = rt.settings.serial_width
    return [
        (
            format_serial(row.serial, width),
            rt.keyring.decrypt(row.encryption_key_id, row.pin_ciphertext),
        )
        for row in rows
    ]


def subscriber(
    rt: Runtime,
    msisdn: str = "254700000001",
    product_type: str = "GOLD",
    sp: str = "ACME",
    **fields: Any,
) -> dict[str, Any]:
    from voms.services import wallet

    return wallet.create_subscriber(
        rt,
        CONSOLE,
        wallet.SubscriberIn(
            msisdn=msisdn, service_provider=sp, product_type=product_type, **fields
        ),
    )


class Clock:
    """A monotonic clock the test moves by hand (``clock.now += 5``)."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now
