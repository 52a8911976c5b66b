"""A unit of work and a billing engine in memory: the redemption's rules without a database.

:class:`FakeUnitOfWork` keeps the unit of work's promises (nothing is kept unless
``commit()`` is called, the one idempotency rule, side effects after the commit) over a
few in-memory tables, and answers the statements the redemption path sends by the
table they name. :class:`MemoryWallet` is a :class:`~voms.billing.engine.BillingEngine`
whose accounts live in a dict, as an external charging system's would.
"""

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from types import TracebackType
from typing import Any, NamedTuple, Self

from sqlalchemy import Delete, Insert, Join, Select, Update, create_engine
from sqlalchemy.sql.base import Executable

from voms.billing.builtin import BuiltinWallet
from voms.billing.engine import Account, Applied, AppliedCredit, Balance, Change, Transaction
from voms.config import Settings
from voms.crypto import Keyring
from voms.domain.catalog import Credit, Scenario, VoucherType
from voms.domain.errors import RequestIdReused
from voms.domain.scenarios import extended_expiry
from voms.domain.states import BatchState, SubscriberState, VoucherState
from voms.runtime import Runtime
from voms.services import catalog_cache, recharge_limits
from voms.services.catalog_cache import BalanceTypeInfo, Snapshot
from voms.services.events import outbox
from voms.services.promotions import cache as promotion_plans
from voms.services.promotions.cache import ProviderPlans
from voms.services.uow import AnsweredBefore, FirstAnswer

NOW = datetime(2027, 3, 1, 12, tzinfo=UTC)
CASH, DATA = 1, 2  # balance type ids
PREPAID, POSTPAID = 10, 11  # product type ids
PROVIDER = 1


class VoucherRow(NamedTuple):
    serial: int
    state: str
    batch_state: str
    expires_at: datetime | None
    voucher_type_id: int
    service_provider_id: int
    failures: int | None
    blacklisted_until: datetime | None


class _Subscriber(NamedTuple):
    msisdn: str


@dataclass
class Tables:
    """What the fake unit of work keeps: committed rows only."""

    vouchers: dict[bytes, dict[str, Any]] = field(default_factory=dict)  # by PIN hash
    transactions: list[dict[str, Any]] = field(default_factory=list)
    answers: dict[tuple[str, str], tuple[str, FirstAnswer]] = field(default_factory=dict)
    events: list[dict[str, Any]] = field(default_factory=list)  # the outbox


class _NoDatabase:
    def __getattr__(self, name: str) -> Any:
        raise AssertionError(f"a unit test reached the database (connection.{name})")


class _Rows:
    def __init__(self, rows: list[Any]) -> None:
        self._rows = rows

    def rows(self) -> list[Any]:
        return self._rows


class FakeUnitOfWork:
    """:class:`voms.services.uow.UnitOfWork`'s API over :class:`Tables`."""

    def __init__(self, rt: Runtime, *, read_only: bool = False, snapshot: bool = False) -> None:
        self.tables: Tables = rt.caches["tables"]  # type: ignore[assignment]
        self._rt = self.rt = rt
        self.started_at = NOW
        self._writes: list[Callable[[], None]] = []
        self._after: list[Callable[[], object]] = []
        self._key: tuple[str, str, str] | None = None
        self._answer: tuple[dict[str, Any], int] | None = None

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._writes.clear()  # not committed: nothing of it is kept

    @property
    def conn(self) -> Any:
        return _NoDatabase()  # handed to the caches, which hold all they need

    def fetch(self, statement: Executable, params: Mapping[str, Any]) -> list[Any]:
        table = _table(statement)
        if table == "vouchers":
            hashes = [v for k, v in params.items() if k.startswith("hash")]
            found = [self.tables.vouchers[h] for h in hashes if h in self.tables.vouchers]
            return [VoucherRow(**v, failures=None, blacklisted_until=None) for v in found]
        if table in ("pin_attempts", "voucher_archive"):
            return []
        if table == "subscribers":  # the numbers among those asked for with an account
            accounts = getattr(self._rt.billing, "accounts", {})
            asked = {params["msisdn"], params["recipient"]}
            return [_Subscriber(n) for n in sorted(asked - {None}) if n in accounts]
        raise AssertionError(f"unexpected read of {table}")

    def fetch_together(self, statements: Sequence[tuple[Executable, Any]]) -> list[list[Any]]:
        return [self.fetch(statement, params) for statement, params in statements]

    def ahead(self, statement: Executable, params: Mapping[str, Any]) -> _Rows:
        assert isinstance(statement, Update)
        assert _table(statement) == "vouchers"
        to_state = statement.compile().params["state"]
        for voucher in self.tables.vouchers.values():
            if voucher["serial"] == params["move_serial"]:
                if voucher["state"] != params["from_state"]:
                    return _Rows([])
                self._writes.append(lambda v=voucher: v.update(state=to_state))
                return _Rows([voucher["serial"]])
        return _Rows([])

    def write(self, statement: Executable, params: Any) -> None:
        table = _table(statement)
        if isinstance(statement, Insert) and table == "transactions":
            self._writes.append(lambda: self.tables.transactions.append(dict(params)))
        elif isinstance(statement, Insert) and table == "event_outbox":
            self._writes.append(lambda: self.tables.events.append(dict(params)))
        elif not (isinstance(statement, Delete) and table == "pin_attempts"):
            raise AssertionError(f"unexpected write to {table}")

    def idempotent(
        self, scope: str, request_id: str | None, fingerprint: str, *, look_now: bool = True
    ) -> None:
        if request_id is None:
            return
        self._key = (scope, request_id, fingerprint)
        first = self.tables.answers.get((scope, request_id))
        if first is not None:  # (as the real one finds out at the latest at the commit)
            if first[0] != fingerprint:
                raise RequestIdReused("request id reused with different parameters")
            raise AnsweredBefore(first[1])

    def answer(self, body: dict[str, Any], status: int = 200) -> None:
        self._answer = (body, status)

    def after_commit(self, side_effect: Callable[[], object]) -> None:
        self._after.append(side_effect)

    def commit(self) -> None:
        for write in self._writes:
            write()
        self._writes.clear()
        if self._key is not None and self._answer is not None:
            scope, request_id, fingerprint = self._key
            body, status = self._answer
            self.tables.answers[(scope, request_id)] = (fingerprint, FirstAnswer(status, body))
        for side_effect in self._after:
            side_effect()


def _table(statement: Executable) -> str:
    """The table a statement reads (the first of a join) or writes."""
    if isinstance(statement, Select):
        (source,) = statement.get_final_froms()
        while isinstance(source, Join):
            source = source.left
        return str(source.name)  # type: ignore[attr-defined]
    return str(statement.table.name)  # type: ignore[attr-defined]


@dataclass
class MemoryWallet:
    """A billing engine whose accounts live in memory (as an external system's would)."""

    accounts: dict[str, Account] = field(default_factory=dict)
    committed: list[str | None] = field(default_factory=list)  # transaction ids

    def load_account(self, tx: Transaction, msisdn: str, *, lock: bool) -> Account | None:
        return self.accounts.get(msisdn)

    def check(self, account: Account, change: Change) -> None:
        BuiltinWallet().check(account, change)  # the same rules, whoever keeps the wallet

    def reserve(self, tx: Transaction, account: Account, change: Change) -> None:
        assert account.msisdn in self.accounts

    def apply(self, tx: Transaction, account: Account, change: Change) -> Applied:
        balances = dict(account.balances)
        applied = []
        for credit in change.credits:
            current = balances.get(credit.balance_type_id)
            amount = (current.amount if current else 0) + credit.amount
            expires_at = extended_expiry(
                current.expires_at if current else None,
                credit.balance_expiry_extension_days,
                change.at,
            )
            balances[credit.balance_type_id] = Balance(amount, expires_at)
            applied.append(AppliedCredit(credit.balance_type, credit.amount, amount, expires_at))
        product_type_id = change.new_product_type_id or account.product_type_id
        expiry = extended_expiry(
            account.account_expires_at, change.account_expiry_extension_days, change.at
        )
        self.accounts[account.msisdn] = replace(
            account, balances=balances, product_type_id=product_type_id, account_expires_at=expiry
        )
        return Applied(tuple(applied), expiry, product_type_id)

    def commit(self, change: Change) -> None:
        self.committed.append(change.transaction_id)

    def revoke(self, change: Change) -> None:
        raise AssertionError("nothing here revokes")


def scenario(number: int, *credits: Credit, **options: Any) -> Scenario:
    return Scenario(number, f"offer {number}", number == 1, credits, **options)


def voucher_type(
    id: int = 1,
    code: str = "GOLD",
    scenarios: Sequence[Scenario] = (),
    allowed: frozenset[int] = frozenset(),
) -> VoucherType:
    chosen = tuple(scenarios) or (scenario(1, Credit(CASH, "CASH", 500)),)
    return VoucherType(id, code, PROVIDER, 14, 600, "revoke", allowed, chosen)


def account(msisdn: str, *, state: str = "active", product_type_id: int = PREPAID) -> Account:
    return Account(
        id=hash(msisdn) & 0xFFFF,
        msisdn=msisdn,
        service_provider_id=PROVIDER,
        product_type_id=product_type_id,
        state=SubscriberState(state),
        account_expires_at=NOW + timedelta(days=10),
        balances={CASH: Balance(1_000, None)},
    )


class Shop:
    """A runtime over fakes: catalog, vouchers, wallets; no database anywhere."""

    def __init__(self, *types: VoucherType, max_cash: int | None = 100_000) -> None:
        self.keyring = Keyring.new()
        self.wallet = MemoryWallet()
        self.rt = Runtime(
            settings=Settings(database_url="sqlite://"),
            engine=create_engine("sqlite://"),  # never connected to
            keyring=self.keyring,
            billing=self.wallet,
        )
        self.tables = Tables()
        self.rt.caches["tables"] = self.tables
        snapshot = Snapshot(
            balance_types={
                CASH: BalanceTypeInfo("CASH", max_cash),
                DATA: BalanceTypeInfo("DATA", None),
            },
            product_types={PREPAID: "PREPAID", POSTPAID: "POSTPAID"},
            service_providers={"ACME": PROVIDER},
            pin_lengths=frozenset({14}),
        )
        catalog_cache._snapshots(self.rt).get("snapshot", lambda: snapshot)
        recharge_limits._cache(self.rt).get(PROVIDER, lambda: recharge_limits.NONE)
        # The provider keeps its balances in the built-in wallet (no charging system).
        self.rt.read_cache("charging.billing", 5.0).get("all", lambda: {PROVIDER: ("ACME", None)})
        # A destination wants every event: the outbox (Tables.events) gets them all.
        self.rt.read_cache("event_listeners", outbox.LISTENERS_TTL_S).get(
            "all", lambda: (outbox.Listener(None, None),)
        )
        # No promotion plans: the redemption's promotions step counts nothing.
        promotion_plans._cache(self.rt).get(("sp", PROVIDER), lambda: ProviderPlans((), {}))
        for each in types or (voucher_type(),):
            cache = catalog_cache._voucher_types(self.rt)
            cache.get(("vt", each.id), lambda each=each: each)
            cache.get(("vt_code", each.code), lambda each=each: each)

    def subscriber(self, msisdn: str, **options: Any) -> Account:
        self.wallet.accounts[msisdn] = account(msisdn, **options)
        return self.wallet.accounts[msisdn]

    def voucher(
        self,
        pin: str,
        serial: int,
        *,
        voucher_type_id: int = 1,
        state: VoucherState = VoucherState.AVAILABLE,
        batch_state: BatchState = BatchState.ACTIVE,
        expires_at: datetime | None = None,
    ) -> None:
        self.tables.vouchers[self.keyring.lookup_hash(pin)] = {
            "serial": serial,
            "state": state.value,
            "batch_state": batch_state.value,
            "expires_at": expires_at or NOW + timedelta(days=30),
            "voucher_type_id": voucher_type_id,
            "service_provider_id": PROVIDER,
        }

    def balance(self, msisdn: str, balance_type_id: int = CASH) -> int:
        return self.wallet.accounts[msisdn].balances[balance_type_id].amount
