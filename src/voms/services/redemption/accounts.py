"""The recipient's account and the policy of a credit: subscriber state, product type,
scenario, and the change the billing engine applies."""

from datetime import datetime
from typing import Any

from voms.billing.engine import Account, Change
from voms.domain.catalog import Scenario, VoucherType
from voms.domain.errors import ResultError
from voms.domain.results import Result
from voms.domain.scenarios import choose_scenario
from voms.domain.states import SubscriberState
from voms.runtime import Runtime
from voms.services import catalog_cache
from voms.services.redemption import requests
from voms.services.redemption.attempts import iso
from voms.services.redemption.requests import Attempt
from voms.services.uow import UnitOfWork


def check_account(
    account: Account | None, voucher_type: VoucherType, *, required: bool = True
) -> None:
    """The recipient may be credited with a voucher of this type: 5001, 5002, 2007.

    ``required=False`` (a reservation, credited by an external charging system): an
    account unknown here is fine; one that is known is checked.
    """
    if account is None or account.service_provider_id != voucher_type.service_provider_id:
        if required:
            raise ResultError(Result.SUBSCRIBER_NOT_FOUND)
        return
    if account.state is SubscriberState.FROZEN:
        raise ResultError(Result.SUBSCRIBER_FROZEN)
    if not account.is_active:
        raise ResultError(Result.SUBSCRIBER_NOT_ACTIVE)
    if not voucher_type.allows_product_type(account.product_type_id):
        raise ResultError(Result.NOT_VALID_FOR_PRODUCT_TYPE)


def scenario(
    attempt: Attempt,
    voucher_type: VoucherType,
    raw: object,
    account: Account | None = None,
    at: datetime | None = None,
    *,
    use_default: bool = False,
) -> Scenario:
    """The scenario asked for, the only one, or the default one (``use_default``: a
    voucher-type recharge; or the type's ``scenario_selection``); 4005, 2008 listing
    the choices. With ``at``, among those running then and offered to the account's
    product type (2007)."""
    number = attempt.scenario = requests.scenario_number(raw)
    known = account is not None and account.service_provider_id == voucher_type.service_provider_id
    product_type_id = account.product_type_id if known and account is not None else None
    chosen = choose_scenario(
        voucher_type, number, use_default=use_default, at=at, product_type_id=product_type_id
    )
    attempt.scenario = chosen.number
    return chosen


def change(rt: Runtime, uow: UnitOfWork, attempt: Attempt, chosen: Scenario, cause: str) -> Change:
    """What the billing engine applies: the scenario's credits with their balance limits."""
    wanted = {credit.balance_type_id for credit in chosen.credits}
    balance_types = catalog_cache.snapshot_knowing(
        rt, uow.conn, lambda s: wanted <= s.balance_types.keys()
    ).balance_types
    return Change(
        credits=tuple(
            credit.limited(balance_types[credit.balance_type_id].max_balance)
            for credit in chosen.credits
        ),
        cause=cause,
        actor=attempt.actor.name,
        at=uow.started_at,
        account_expiry_extension_days=chosen.account_expiry_extension_days,
        new_product_type_id=chosen.new_product_type_id,
        transaction_id=attempt.id,
        serial=attempt.serial,
    )


def credit(rt: Runtime, uow: UnitOfWork, account: Account, checked: Change) -> dict[str, Any]:
    """Reserve and apply a checked change through the billing engine; what the answer
    says of it. Its writes wait for the COMMIT; the engine's commit follows it."""
    product_type_id = checked.new_product_type_id or account.product_type_id
    product_types = catalog_cache.snapshot_knowing(
        rt, uow.conn, lambda s: product_type_id in s.product_types
    ).product_types
    rt.billing.reserve(uow, account, checked)
    applied = rt.billing.apply(uow, account, checked)
    uow.after_commit(lambda: rt.billing.commit(checked))
    return {
        "credits": [
            {
                "balance_type": c.balance_type,
                "amount": c.amount,
                "balance": c.balance,
                "expires_at": iso(c.expires_at),
            }
            for c in applied.credits
        ],
        "account_expires_at": iso(applied.account_expires_at),
        "product_type": product_types.get(applied.product_type_id),
        "rewards": [],
    }
