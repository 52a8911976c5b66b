"""Counting a redemption towards the plans it applies to, in its own unit of work.

One upsert per plan that applies (all of them in one round trip on PostgreSQL): it adds
the redemption to the subscriber's counter, or starts a new window when the last one
has ended, and returns the counter as it is now. The upsert takes the counter row's
lock (on SQLite, the database's write lock), so concurrent redemptions of one subscriber
add one after the other and exactly one of them sees the counter reach a target: that
one, and only that one, is rewarded. The reward is applied by the redemption's step
(:mod:`voms.services.redemption.promotions`) through the billing engine.
"""

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import BigInteger, Integer, bindparam, case, insert, literal_column, select
from sqlalchemy.dialects import postgresql, sqlite

from voms.billing.engine import Account, Change
from voms.db import tables as t
from voms.db.types import UTCDateTime
from voms.domain.catalog import Credit
from voms.domain.promotions import Plan, reward_credits
from voms.runtime import Runtime
from voms.services.promotions import cache
from voms.services.uow import Later, UnitOfWork


@dataclass(frozen=True)
class Reached:
    """A plan whose target this redemption reached ``times`` times."""

    plan: Plan
    times: int


@dataclass(frozen=True)
class Counted:
    """What a redemption counted: the plans it reached, and its money (the base of a
    percentage reward; None when it credited no balance type with a currency)."""

    reached: tuple[Reached, ...]
    money: Credit | None
    currencies: dict[int, str]


def _upsert(dialect: Any, early: Any = None) -> Any:
    """The counter's upsert; ``early``: its row chosen from the subscriber's (by MSISDN)."""
    c = t.promotion_counters
    statement = dialect.insert(c)
    if early is not None:
        statement = statement.from_select(
            ["promotion_id", "subscriber_id", "window_start", "window_end", "value", "updated_at"],
            early,
        )
    ended = c.c.window_end <= statement.excluded.updated_at
    return statement.on_conflict_do_update(
        index_elements=[c.c.promotion_id, c.c.subscriber_id],
        set_={
            "value": case(
                (ended, statement.excluded.value), else_=c.c.value + statement.excluded.value
            ),
            "window_start": case((ended, statement.excluded.window_start), else_=c.c.window_start),
            "window_end": case((ended, statement.excluded.window_end), else_=c.c.window_end),
            "updated_at": statement.excluded.updated_at,
        },
    ).returning(c.c.value)


_UPSERT = {"postgresql": _upsert(postgresql), "sqlite": _upsert(sqlite)}
_EARLY: dict[tuple[str, frozenset[int]], Any] = {}


def _early_upsert(dialect_name: str, product_type_ids: frozenset[int]) -> Any:
    """The upsert of a count plan, sent before the subscriber is read: it counts the
    subscriber of that MSISDN, provider and (when the plan names them) product types."""
    key = (dialect_name, product_type_ids)
    statement = _EARLY.get(key)
    if statement is None:
        s = t.subscribers
        chosen = select(
            bindparam("promotion_id", type_=Integer),
            s.c.id,
            bindparam("window_start", type_=UTCDateTime()),
            bindparam("window_end", type_=UTCDateTime()),
            bindparam("value", type_=BigInteger),
            bindparam("updated_at", type_=UTCDateTime()),
        ).where(s.c.msisdn == bindparam("msisdn"), s.c.service_provider_id == bindparam("sp"))
        if product_type_ids:  # written into the statement: one statement per plan
            chosen = chosen.where(
                s.c.product_type_id.in_([literal_column(str(i)) for i in sorted(product_type_ids)])
            )
        dialect = postgresql if dialect_name == "postgresql" else sqlite
        statement = _EARLY[key] = _upsert(dialect, chosen)
    return statement


@dataclass(frozen=True)
class Early:
    """Count plans already counted, their rows coming with the account's round trip."""

    counted: tuple[tuple[Plan, Later], ...]


def count_early(
    rt: Runtime,
    uow: UnitOfWork,
    service_provider_id: int,
    voucher_type_id: int,
    channel: str,
    msisdn: str,
) -> Early | None:
    """Count this redemption in the running count plans it applies to, before the
    account is read: the upserts go out in the round trip that locks the account (no
    round trip of their own) and take the counters' locks before the account's, in
    every call that counts. The product type is checked in the statement; a redemption
    that fails later rolls the counts back with everything else."""
    provider = cache.plans_of(rt, uow.conn, service_provider_id)
    now = uow.started_at
    counted = []
    for plan in provider.plans:
        if plan.counter != "count" or not plan.runs_at(now):
            continue
        if not plan.applies_to(voucher_type_id, channel, None):
            continue
        start, end = plan.window_at(now)
        row = {
            "promotion_id": plan.id,
            "window_start": start,
            "window_end": end,
            "value": 1,
            "updated_at": now,
            "msisdn": msisdn,
            "sp": service_provider_id,
        }
        statement = _early_upsert(uow.conn.dialect.name, plan.product_type_ids)
        counted.append((plan, uow.ahead(statement, row)))
    return Early(tuple(counted)) if counted else None


def count(
    rt: Runtime,
    uow: UnitOfWork,
    account: Account,
    change: Change,
    voucher_type_id: int | None,
    channel: str,
    early: Early | None = None,
) -> Counted | None:
    """Add this credit to the counters of the plans it applies to; the targets reached.

    ``account`` is the recipient as loaded before the credit (its product type decides
    eligibility), ``change`` the credit (the scenario's credits: the voucher's value).
    None when no plan applies (no statement was run).
    """
    provider = cache.plans_of(rt, uow.conn, account.service_provider_id)
    if not provider.plans:
        return None
    now = uow.started_at
    done = {plan.id for plan, _ in early.counted} if early is not None else set()
    money_credits = [c for c in change.credits if c.balance_type_id in provider.money_balance_types]
    value = sum(c.amount for c in money_credits)
    counting: list[tuple[Plan, int, dict[str, Any]]] = []
    for plan in provider.plans:
        if plan.id in done or not (
            plan.runs_at(now) and plan.applies_to(voucher_type_id, channel, account.product_type_id)
        ):
            continue
        amount = plan.amount(value)
        if amount <= 0:
            continue
        counting.append((plan, amount, _row(plan, account.id, amount, now)))
    results: list[tuple[Plan, int, list[Any]]] = []
    for plan, later in early.counted if early is not None else ():
        results.append((plan, 1, later.rows()))  # arrived with the account
    if counting:
        statement = _UPSERT[uow.conn.dialect.name]
        fetched = uow.fetch_together([(statement, row) for _, _, row in counting])
        results.extend(
            (plan, amount, rows) for (plan, amount, _), rows in zip(counting, fetched, strict=True)
        )
    if not results:
        return None
    reached = []
    for plan, amount, rows in results:
        if not rows:  # an early count that did not apply (another product type)
            continue
        after = int(rows[0].value)
        times = plan.rewards_between(after - amount, after)
        if times:
            reached.append(Reached(plan, times))
    return Counted(
        tuple(reached), money_credits[0] if money_credits else None, provider.money_balance_types
    )


def _row(plan: Plan, subscriber_id: int, amount: int, now: datetime) -> dict[str, Any]:
    start, end = plan.window_at(now)
    return {
        "promotion_id": plan.id,
        "subscriber_id": subscriber_id,
        "window_start": start,
        "window_end": end,
        "value": amount,
        "updated_at": now,
    }


def reward_change(
    reached: Reached,
    counted: Counted,
    account: Account,
    max_balances: dict[int, int | None],
    base: Change,
) -> Change:
    """The change a reached target applies, ledger cause ``reward``.

    A credit that would pass its balance type's maximum is cut to what fits (a reward
    never makes the redemption fail with 5004).
    """
    reward = reached.plan.reward
    credits = []
    for credit in reward_credits(reward, reached.times, counted.money):
        max_balance = max_balances.get(credit.balance_type_id)
        amount = credit.amount
        if max_balance is not None:
            have = account.balances.get(credit.balance_type_id)
            amount = min(amount, max_balance - (have.amount if have else 0))
        if amount > 0:
            credits.append(
                Credit(
                    credit.balance_type_id,
                    credit.balance_type,
                    amount,
                    credit.balance_expiry_extension_days,
                    max_balance,
                )
            )
    return Change(
        credits=tuple(credits),
        cause="reward",
        actor=base.actor,
        at=base.at,
        account_expiry_extension_days=reward.account_expiry_extension_days * reached.times,
        new_product_type_id=reward.new_product_type_id,
        transaction_id=base.transaction_id,
        serial=base.serial,
        reason=f"promotion {reached.plan.code}"[:200],
    )


_INSERT_REWARD = insert(t.promotion_rewards).inline()


def record_reward(
    uow: UnitOfWork, reached: Reached, counted: Counted, account: Account, change: Change
) -> None:
    """The reward's row (the rewards report reads these), written with the COMMIT."""
    money = [c for c in change.credits if c.balance_type_id in counted.currencies]
    uow.write(
        _INSERT_REWARD,
        {
            "at": change.at,
            "promotion_id": reached.plan.id,
            "service_provider_id": account.service_provider_id,
            "subscriber_id": account.id,
            "msisdn": account.msisdn,
            "transaction_id": change.transaction_id,
            "times": reached.times,
            "credits": [
                {"balance_type": c.balance_type, "amount": c.amount} for c in change.credits
            ],
            "account_expiry_extension_days": change.account_expiry_extension_days,
            "new_product_type_id": change.new_product_type_id,
            "value": sum(c.amount for c in money),
            "currency": counted.currencies[money[0].balance_type_id] if money else "",
        },
    )
