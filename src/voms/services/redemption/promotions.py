"""The promotions step of a credit: count it towards the plans it applies to, and grant
the rewards of the targets it reached, in the same unit of work (docs/promotions.md).

Count plans are counted before the account is loaded (:func:`count_early`: their
upsert rides on the round trip that locks the account, and takes the counters' locks
before the account's in every call); value plans, which need the scenario, after the
credit. Then each reward is one more change through the billing engine, ledger cause
``reward``, listed in the answer's ``rewards``. A provider without running plans costs
nothing but a cache lookup.
"""

from dataclasses import replace
from datetime import datetime
from typing import Any

from voms.billing.engine import Account, Balance, Change
from voms.domain.catalog import VoucherType
from voms.runtime import Runtime
from voms.services import alerts, catalog_cache
from voms.services.events import outbox as events
from voms.services.promotions import counting
from voms.services.redemption import accounts
from voms.services.redemption.requests import Attempt
from voms.services.uow import UnitOfWork


def count_early(
    rt: Runtime, uow: UnitOfWork, attempt: Attempt, voucher_type: VoucherType, recipient: str
) -> counting.Early | None:
    """Count the credit in the count plans it applies to, before the recipient's account
    is loaded (their upsert goes out with that round trip); call :func:`reward` after."""
    return counting.count_early(
        rt, uow, voucher_type.service_provider_id, voucher_type.id, attempt.channel, recipient
    )


def reward(
    rt: Runtime,
    uow: UnitOfWork,
    attempt: Attempt,
    account: Account,
    change: Change,
    answer: dict[str, Any],
    early: counting.Early | None = None,
) -> None:
    """Count the credit ``change`` made to ``account`` (as loaded before it) in the plans
    not counted early, and add the rewards it earned to ``answer`` (what
    ``accounts.credit`` answered)."""
    counted = counting.count(
        rt, uow, account, change, attempt.voucher_type_id, attempt.channel, early
    )
    if counted is None or not counted.reached:
        return
    current = _after(account, change, answer)
    balance_types = catalog_cache.snapshot(rt, uow.conn).balance_types
    max_balances = {i: b.max_balance for i, b in balance_types.items()}
    for reached in counted.reached:
        granted = counting.reward_change(reached, counted, current, max_balances, change)
        given = accounts.credit(rt, uow, current, granted)
        counting.record_reward(uow, reached, counted, current, granted)
        _tell(uow, attempt, current, reached.plan.code, given["credits"])
        answer["rewards"].append(
            {
                "promotion": reached.plan.code,
                "credits": given["credits"],
                "account_expiry_extension_days": granted.account_expiry_extension_days,
                "new_product_type": given["product_type"] if granted.new_product_type_id else None,
            }
        )
        answer["account_expires_at"] = given["account_expires_at"]
        answer["product_type"] = given["product_type"]
        current = _after(current, granted, given)


def _after(account: Account, change: Change, answer: dict[str, Any]) -> Account:
    """The account once ``change`` is applied, as its answer tells it."""
    ids = {c.balance_type: c.balance_type_id for c in change.credits}
    balances = dict(account.balances)
    for credit in answer["credits"]:
        if credit["balance"] is not None and credit["balance_type"] in ids:
            balances[ids[credit["balance_type"]]] = Balance(
                credit["balance"], _moment(credit["expires_at"])
            )
    return replace(
        account,
        balances=balances,
        account_expires_at=_moment(answer["account_expires_at"]),
        product_type_id=change.new_product_type_id or account.product_type_id,
    )


def _moment(value: str | None) -> datetime | None:
    return datetime.fromisoformat(value) if value is not None else None


def _tell(
    uow: UnitOfWork, attempt: Attempt, account: Account, promotion: str, credits: list[Any]
) -> None:
    """The reward's event (``promotion.rewarded``) and its SMS to the subscriber (sent by
    the ``alert_delivery`` job after quiet hours), both written with the redemption."""
    shown = [
        {"balance_type": c["balance_type"], "amount": c["amount"], "balance": c.get("balance")}
        for c in credits
    ]
    events.emit(
        uow,
        "promotion.rewarded",
        account.msisdn,
        {
            "transaction_id": attempt.id,
            "promotion": promotion,
            "msisdn": account.msisdn,
            "credits": [{k: c[k] for k in ("balance_type", "amount")} for c in shown],
        },
        service_provider_id=account.service_provider_id,
        at=uow.started_at,
    )
    alerts.reward_granted(
        uow,
        transaction_id=attempt.id,
        promotion=promotion,
        service_provider_id=account.service_provider_id,
        subscriber_id=account.id,
        msisdn=account.msisdn,
        credits=shown,
    )
