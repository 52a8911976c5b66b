"""The billing engine: what the redemption service needs from whoever holds the wallets.

The built-in wallet (:mod:`voms.billing.builtin`) is the default engine. The redemption
service works in one unit of work and hands it to the engine: the built-in wallet writes
in it, so the voucher and the wallet change together or not at all. An external charging
system cannot join that transaction: it is an :class:`voms.billing.external.ExternalEngine`
(UCIP, HTTP), called outside it by :mod:`voms.services.redemption.charging`.
"""

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol

from sqlalchemy.sql.base import Executable

from voms.domain.catalog import Credit
from voms.domain.states import SubscriberState

__all__ = [
    "Account",
    "Applied",
    "AppliedCredit",
    "Balance",
    "BillingEngine",
    "Change",
    "Credit",
    "Transaction",
]


@dataclass(frozen=True)
class Balance:
    amount: int
    expires_at: datetime | None


@dataclass(frozen=True)
class Account:
    """A subscriber as the engine knows it, with balances by balance type id."""

    id: int
    msisdn: str
    service_provider_id: int
    product_type_id: int
    state: SubscriberState
    account_expires_at: datetime | None
    balances: dict[int, Balance] = field(default_factory=dict)

    @property
    def is_active(self) -> bool:
        return self.state is SubscriberState.ACTIVE


@dataclass(frozen=True)
class Change:
    """What to apply to one account, and why (written to every ledger row)."""

    credits: tuple[Credit, ...]
    cause: str  # redemption, recharge, reward, adjustment
    actor: str
    at: datetime
    account_expiry_extension_days: int = 0
    new_product_type_id: int | None = None
    transaction_id: str | None = None
    serial: int | None = None
    reason: str | None = None


@dataclass(frozen=True)
class AppliedCredit:
    balance_type: str
    amount: int
    balance: int
    expires_at: datetime | None


@dataclass(frozen=True)
class Applied:
    """The account after a change: new balances, account expiry, product type."""

    credits: tuple[AppliedCredit, ...]
    account_expires_at: datetime | None
    product_type_id: int


class Transaction(Protocol):
    """What an engine that keeps wallets in our database gets of the caller's unit of
    work (:class:`voms.services.uow.UnitOfWork`): its reads and its deferred writes."""

    def fetch_together(
        self, statements: Sequence[tuple[Executable, Mapping[str, Any]]]
    ) -> list[list[Any]]: ...

    def write(
        self, statement: Executable, params: Mapping[str, Any] | Sequence[Mapping[str, Any]]
    ) -> None: ...


class BillingEngine(Protocol):
    """Where subscribers' balances live; a credit goes through these steps, in order:

    ``load_account`` → ``check`` → ``reserve`` → ``apply`` → (the unit of work commits)
    → ``commit``; ``revoke`` undoes a reserved change whose transaction failed or whose
    outcome the engine never confirmed. The built-in wallet writes in our own
    transaction, so its reserve, commit and revoke have nothing to do; an external
    charging system (UCIP, HTTP) holds the credit at ``reserve`` under the change's
    ``transaction_id`` and settles it at ``commit`` or ``revoke``.
    """

    def load_account(self, tx: Transaction, msisdn: str, *, lock: bool) -> Account | None:
        """The account of ``msisdn`` or None; ``lock`` holds it until the transaction ends."""
        ...

    def check(self, account: Account, change: Change) -> None:
        """Refuse a change that cannot be applied, before anything is taken.

        Raises ``ResultError(BALANCE_LIMIT_EXCEEDED)`` when a balance would pass its
        type's maximum, and ``Conflict`` when one would fall below zero.
        """
        ...

    def reserve(self, tx: Transaction, account: Account, change: Change) -> None:
        """Hold ``change`` at the engine until :meth:`commit` or :meth:`revoke`."""
        ...

    def apply(self, tx: Transaction, account: Account, change: Change) -> Applied:
        """Apply a checked ``change`` to a locked account; the account as it is after.

        Only writes, statements that return no rows, belong here: they go out with the
        unit of work's COMMIT in one round trip; a read would first send what waits, a
        round trip more. Read what is needed in :meth:`load_account`.
        """
        ...

    def commit(self, change: Change) -> None:
        """Make a reserved and applied change final (once our transaction is durable)."""
        ...

    def revoke(self, change: Change) -> None:
        """Drop a reserved change: its transaction failed, or its outcome is unknown."""
        ...
