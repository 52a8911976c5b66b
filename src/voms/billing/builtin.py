"""The built-in prepaid wallet: subscribers, balances per balance type, and the ledger.

Every change of a balance's amount writes one ledger row in the same transaction, so a
balance always equals the sum of its ledger rows. Writers lock the subscriber row first
(``load_account(lock=True)``): concurrent credits of one wallet queue up instead of
losing updates, and always take their locks in the same order.
"""

from datetime import datetime
from typing import Any

from sqlalchemy import bindparam, insert, select, update

from voms.billing.engine import Account, Applied, AppliedCredit, Balance, Change, Transaction
from voms.db import tables as t
from voms.domain.errors import Conflict, ResultError
from voms.domain.results import Result
from voms.domain.scenarios import extended_expiry
from voms.domain.states import SubscriberState

_s, _b = t.subscribers, t.balances

_SUBSCRIBER = select(
    _s.c.id,
    _s.c.msisdn,
    _s.c.service_provider_id,
    _s.c.product_type_id,
    _s.c.state,
    _s.c.account_expires_at,
).where(_s.c.msisdn == bindparam("msisdn"))
# PostgreSQL locks the subscriber row; SQLite needs no row lock (writers are serialized by
# BEGIN IMMEDIATE) and SQLAlchemy leaves the clause out there.
_SUBSCRIBER_LOCKED = _SUBSCRIBER.with_for_update()
# Read after the lock is granted, in a statement of its own: under READ COMMITTED a
# join in the locking statement would return the balances as they were before the wait.
# Sent together with the locking statement (fetch_together), it runs after it.
_BALANCES = (
    select(_b.c.balance_type_id, _b.c.amount, _b.c.expires_at)
    .join(_s, _s.c.id == _b.c.subscriber_id)
    .where(_s.c.msisdn == bindparam("msisdn"))
)

# inline(): no RETURNING of generated keys, so that the inserts can be pipelined.
_INSERT_BALANCE = insert(_b).inline()
_UPDATE_BALANCE = (
    update(_b)
    .where(
        _b.c.subscriber_id == bindparam("sid"),
        _b.c.balance_type_id == bindparam("btid"),
    )
    .values(amount=bindparam("new_amount"), expires_at=bindparam("new_expires_at"))
)
_INSERT_LEDGER = insert(t.ledger).inline()
_UPDATE_SUBSCRIBER = (
    update(_s)
    .where(_s.c.id == bindparam("sid"))
    .values(account_expires_at=bindparam("expires"), product_type_id=bindparam("product"))
)


def _unexpired(current: Balance | None, at: datetime) -> Balance | None:
    """The balance as a credit at ``at`` finds it: past its expiry date, it is empty."""
    if current is None or current.amount <= 0 or current.expires_at is None:
        return current
    return current if current.expires_at > at else Balance(0, current.expires_at)


def _expiry_row(
    subscriber_id: int, balance_type_id: int, expired: Balance, change: Change
) -> dict[str, Any]:
    """The ledger row that takes an expired amount out (cause ``expiry``)."""
    return {
        "at": change.at,
        "subscriber_id": subscriber_id,
        "balance_type_id": balance_type_id,
        "amount": -expired.amount,
        "balance_after": 0,
        "cause": "expiry",
        "transaction_id": None,
        "serial": None,
        "reason": "balance expired",
        "actor": change.actor,
    }


class BuiltinWallet:
    """The default :class:`~voms.billing.engine.BillingEngine`: wallets in our database."""

    def load_account(self, tx: Transaction, msisdn: str, *, lock: bool) -> Account | None:
        key = {"msisdn": msisdn}
        rows, balances = tx.fetch_together(
            [(_SUBSCRIBER_LOCKED if lock else _SUBSCRIBER, key), (_BALANCES, key)]
        )
        if not rows:
            return None
        row = rows[0]
        return Account(
            id=row.id,
            msisdn=row.msisdn,
            service_provider_id=row.service_provider_id,
            product_type_id=row.product_type_id,
            state=SubscriberState(row.state),
            account_expires_at=row.account_expires_at,
            balances={b.balance_type_id: Balance(b.amount, b.expires_at) for b in balances},
        )

    def check(self, account: Account, change: Change) -> None:
        for credit in change.credits:
            current = _unexpired(account.balances.get(credit.balance_type_id), change.at)
            amount = (current.amount if current else 0) + credit.amount
            if amount < 0:
                raise Conflict(f"the {credit.balance_type} balance would fall below zero")
            if credit.amount > 0 and credit.max_balance is not None and amount > credit.max_balance:
                raise ResultError(Result.BALANCE_LIMIT_EXCEEDED, balance_type=credit.balance_type)

    def reserve(self, tx: Transaction, account: Account, change: Change) -> None:
        """Nothing to hold: the account's row lock (``load_account(lock=True)``) holds it."""

    def commit(self, change: Change) -> None:
        """Nothing to settle: the ledger rows were committed with the transaction."""

    def revoke(self, change: Change) -> None:
        """Nothing to undo: a failed transaction rolled the writes back."""

    def apply(self, tx: Transaction, account: Account, change: Change) -> Applied:
        # Writes only (checked before, by check()): they return nothing, so they go out
        # with the COMMIT in one round trip.
        applied: list[AppliedCredit] = []
        inserts: list[dict[str, Any]] = []
        updates: list[dict[str, Any]] = []
        ledger_rows: list[dict[str, Any]] = []
        for credit in sorted(change.credits, key=lambda c: c.balance_type_id):
            current = account.balances.get(credit.balance_type_id)
            if current is not None and _unexpired(current, change.at) is not current:
                # Expired, and the balance_expiry job has not been by yet: it expires now.
                ledger_rows.append(_expiry_row(account.id, credit.balance_type_id, current, change))
                current = Balance(0, current.expires_at)
            amount = (current.amount if current else 0) + credit.amount
            expires_at = extended_expiry(
                current.expires_at if current else None,
                credit.balance_expiry_extension_days,
                change.at,
            )
            if current is None:
                inserts.append(
                    {
                        "subscriber_id": account.id,
                        "balance_type_id": credit.balance_type_id,
                        "amount": amount,
                        "expires_at": expires_at,
                    }
                )
            else:
                updates.append(
                    {
                        "sid": account.id,
                        "btid": credit.balance_type_id,
                        "new_amount": amount,
                        "new_expires_at": expires_at,
                    }
                )
            ledger_rows.append(
                {
                    "at": change.at,
                    "subscriber_id": account.id,
                    "balance_type_id": credit.balance_type_id,
                    "amount": credit.amount,
                    "balance_after": amount,
                    "cause": change.cause,
                    "transaction_id": change.transaction_id,
                    "serial": change.serial,
                    "reason": change.reason,
                    "actor": change.actor,
                }
            )
            applied.append(AppliedCredit(credit.balance_type, credit.amount, amount, expires_at))
        account_expires_at = extended_expiry(
            account.account_expires_at, change.account_expiry_extension_days, change.at
        )
        product_type_id = change.new_product_type_id or account.product_type_id
        for statement, rows in (
            (_INSERT_BALANCE, inserts),
            (_UPDATE_BALANCE, updates),
            (_INSERT_LEDGER, ledger_rows),
        ):
            if rows:
                tx.write(statement, rows)
        if (
            account_expires_at != account.account_expires_at
            or product_type_id != account.product_type_id
        ):
            tx.write(
                _UPDATE_SUBSCRIBER,
                {"sid": account.id, "expires": account_expires_at, "product": product_type_id},
            )
        return Applied(tuple(applied), account_expires_at, product_type_id)
