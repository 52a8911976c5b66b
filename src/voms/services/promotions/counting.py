"""Counting a redemption towards the plans it applies to, in its own unit of work.

One upsert adds the redemption to the subscriber's counter of each plan that applies,
or starts a new window when the last one has ended, and returns the counters as they
are now (``promotion_id, value``: RETURNING gives rows in no promised order). It is one
statement for all the plans counted at one moment, their rows in plan order:

- the **count** plans go first, before the subscriber is read: their upsert chooses the
  subscriber's row itself (by MSISDN and provider, each plan's product types written
  into the statement) and goes out with the round trip that locks the account;
- the **value** plans need the scenario's value: their upsert comes after the credit,
  one round trip more.

On SQLite the count plans keep one upsert each (its VALUES lists take no column names);
they run at once there anyway. The upsert takes the counter rows' locks (on SQLite, the
database's write lock), always in plan order, so two redemptions of one subscriber
never wait for each other in a circle; they add one after the other and exactly one of
them sees a counter reach a target: that one, and only that one, is rewarded. The
reward is applied by the redemption's step (:mod:`voms.services.redemption.promotions`)
through the billing engine.

What a redemption of a voucher type on a channel counts in (:class:`_Choice`) is worked
out once per provider's plans as cached (:mod:`voms.services.promotions.cache`) and
reused while no plan starts or ends and the month does not change.
"""

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import (
    BigInteger,
    Integer,
    and_,
    bindparam,
    case,
    column,
    insert,
    literal_column,
    or_,
    select,
    values,
)
from sqlalchemy.dialects import postgresql, sqlite

from voms.billing.engine import Account, Change
from voms.db import tables as t
from voms.db.types import UTCDateTime
from voms.domain.catalog import Credit
from voms.domain.promotions import Plan, month_window, reward_credits
from voms.runtime import Runtime
from voms.services.promotions import cache
from voms.services.promotions.cache import ProviderPlans
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


# --- the statements ------------------------------------------------------------------

_COLUMNS = ["promotion_id", "subscriber_id", "window_start", "window_end", "value", "updated_at"]
_DIALECTS = {"postgresql": postgresql, "sqlite": sqlite}


def _upsert(statement: Any) -> Any:
    """``statement``, an INSERT into the counters, as the upsert that counts."""
    c = t.promotion_counters
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
    ).returning(c.c.promotion_id, c.c.value)


def _in(product_type_ids: frozenset[int]) -> Any:
    """The subscriber is of one of these product types (written into the statement)."""
    ids: list[Any] = [literal_column(str(i)) for i in sorted(product_type_ids)]
    return t.subscribers.c.product_type_id.in_(ids)


def _ts(name: str) -> Any:
    return bindparam(name, type_=UTCDateTime())


_EARLY: dict[tuple[str, tuple[frozenset[int], ...]], Any] = {}


def _early_upsert(dialect_name: str, shape: tuple[frozenset[int], ...]) -> Any:
    """The upsert of count plans, sent before the subscriber is read: it counts the
    subscriber of that MSISDN and provider, in each plan (``promotion_id_0``, …, in plan
    order) that names no product types or names the subscriber's (``shape``: each plan's
    product types). SQLite: one plan only, its parameter ``promotion_id``.

    Kept per dialect and shape: the statement is compiled and prepared once.
    """
    key = (dialect_name, shape)
    statement = _EARLY.get(key)
    if statement is not None:
        return statement
    s = t.subscribers
    if dialect_name == "postgresql":
        ids: list[Any] = [bindparam(f"promotion_id_{i}", type_=Integer) for i in range(len(shape))]
        plans = values(
            column("promotion_id", Integer),
            column("window_start", UTCDateTime()),
            column("window_end", UTCDateTime()),
            name="v",
        ).data(
            [(ids[i], _ts(f"window_start_{i}"), _ts(f"window_end_{i}")) for i in range(len(shape))]
        )
        subscriber = [s.c.msisdn == bindparam("msisdn"), s.c.service_provider_id == bindparam("sp")]
        subscriber += [
            or_(plans.c.promotion_id != ids[i], _in(product_types))
            for i, product_types in enumerate(shape)
            if product_types
        ]
        chosen = (
            select(
                plans.c.promotion_id,
                s.c.id,
                plans.c.window_start,
                plans.c.window_end,
                literal_column("1", BigInteger),
                _ts("updated_at"),
            )
            .select_from(plans.join(s, and_(*subscriber)))
            .order_by(plans.c.promotion_id)  # the counters' locks, in plan order
        )
    else:
        (product_types,) = shape
        chosen = select(
            bindparam("promotion_id", type_=Integer),
            s.c.id,
            _ts("window_start"),
            _ts("window_end"),
            literal_column("1", BigInteger),
            _ts("updated_at"),
        ).where(s.c.msisdn == bindparam("msisdn"), s.c.service_provider_id == bindparam("sp"))
        if product_types:
            chosen = chosen.where(_in(product_types))
    insert_ = _DIALECTS[dialect_name].insert(t.promotion_counters)
    statement = _EARLY[key] = _upsert(insert_.from_select(_COLUMNS, chosen))
    return statement


_LATE: dict[tuple[str, int], Any] = {}


def _late_upsert(dialect_name: str, plans: int) -> Any:
    """The upsert of ``plans`` plans (rows ``promotion_id_0``, ``window_start_0``, …,
    ``value_0``, … in plan order) of the subscriber ``subscriber_id``."""
    key = (dialect_name, plans)
    statement = _LATE.get(key)
    if statement is None:
        rows = [
            {
                "promotion_id": bindparam(f"promotion_id_{i}", type_=Integer),
                "subscriber_id": bindparam("subscriber_id", type_=BigInteger),
                "window_start": _ts(f"window_start_{i}"),
                "window_end": _ts(f"window_end_{i}"),
                "value": bindparam(f"value_{i}", type_=BigInteger),
                "updated_at": _ts("updated_at"),
            }
            for i in range(plans)
        ]
        insert_ = _DIALECTS[dialect_name].insert(t.promotion_counters).values(rows)
        statement = _LATE[key] = _upsert(insert_)
    return statement


# --- what a redemption counts in ------------------------------------------------------


@dataclass(frozen=True)
class _Upsert:
    """One early upsert: its statement and the parameters that do not change while its
    choice holds; the windows that start with the redemption (rolling days) are added
    per call."""

    statement: Any
    fixed: dict[str, Any]
    rolling: tuple[tuple[Plan, str, str], ...]  # the plan, its window's parameters


@dataclass(frozen=True)
class _Choice:
    """The running plans a redemption of one voucher type on one channel counts in,
    whatever the product type, while its moment is in ``[since, until)`` (no plan
    starts or ends then, and the calendar month stays the same)."""

    since: datetime
    until: datetime
    every: tuple[Plan, ...]  # in plan order, as all below
    early: tuple[Plan, ...]  # the count plans
    late: tuple[Plan, ...]  # the value plans
    upserts: tuple[_Upsert, ...]  # the count plans' upserts


def _choice(
    provider: ProviderPlans,
    dialect_name: str,
    voucher_type_id: int | None,
    channel: str,
    now: datetime,
) -> _Choice:
    """The plans counted at ``now``, kept with the provider's cached plans."""
    key = (dialect_name, voucher_type_id, channel)
    choice: _Choice | None = provider.derived.get(key)
    if choice is None or not choice.since <= now < choice.until:
        choice = provider.derived[key] = _choose(
            provider.plans, dialect_name, voucher_type_id, channel, now
        )
    return choice


def _choose(
    plans: Sequence[Plan],
    dialect_name: str,
    voucher_type_id: int | None,
    channel: str,
    now: datetime,
) -> _Choice:
    since, until = month_window(now)
    every = []
    for plan in plans:
        for moment in (plan.starts_at, plan.ends_at):
            if moment is not None and moment <= now:
                since = max(since, moment)
            elif moment is not None:
                until = min(until, moment)
        if plan.runs_at(now) and plan.applies_to(voucher_type_id, channel, None):
            every.append(plan)
    early = tuple(plan for plan in every if plan.counter == "count")
    if dialect_name == "postgresql":
        groups = [early] if early else []
    else:
        groups = [(plan,) for plan in early]
    upserts = []
    for group in groups:
        shape = tuple(plan.product_type_ids for plan in group)
        names = (
            [
                (f"promotion_id_{i}", f"window_start_{i}", f"window_end_{i}")
                for i in range(len(group))
            ]
            if dialect_name == "postgresql"
            else [("promotion_id", "window_start", "window_end")]
        )
        fixed: dict[str, Any] = {}
        rolling = []
        for plan, (promotion_id, start, end) in zip(group, names, strict=True):
            fixed[promotion_id] = plan.id
            if plan.window == "rolling_days":  # the window starts with the redemption
                rolling.append((plan, start, end))
            else:  # the same all through the choice's time
                fixed[start], fixed[end] = plan.window_at(now)
        upserts.append(_Upsert(_early_upsert(dialect_name, shape), fixed, tuple(rolling)))
    return _Choice(
        since,
        until,
        tuple(every),
        early,
        tuple(plan for plan in every if plan.counter != "count"),
        tuple(upserts),
    )


# --- counting --------------------------------------------------------------------------


@dataclass(frozen=True)
class Early:
    """Count plans already counted, their counters coming with the account's round trip."""

    choice: _Choice
    counted: tuple[Later, ...]

    def values(self) -> dict[int, int]:
        """Each counter as the upserts left it, by plan id (none for a plan whose product
        types are not the subscriber's)."""
        return {row.promotion_id: int(row.value) for later in self.counted for row in later.rows()}


def count_early(
    rt: Runtime,
    uow: UnitOfWork,
    service_provider_id: int,
    voucher_type_id: int,
    channel: str,
    msisdn: str,
) -> Early | None:
    """Count this redemption in the running count plans it applies to, before the
    account is read: the upsert goes out in the round trip that locks the account (no
    round trip of its own) and takes the counters' locks before the account's, in
    every call that counts. The product type is checked in the statement; a redemption
    that fails later rolls the counts back with everything else."""
    provider = cache.plans_of(rt, uow.conn, service_provider_id)
    if not provider.plans:
        return None
    now = uow.started_at
    choice = _choice(provider, uow.conn.dialect.name, voucher_type_id, channel, now)
    if not choice.early:
        return None
    counted = []
    for upsert in choice.upserts:
        params = {**upsert.fixed, "updated_at": now, "msisdn": msisdn, "sp": service_provider_id}
        for plan, start, end in upsert.rolling:
            params[start], params[end] = plan.window_at(now)
        counted.append(uow.ahead(upsert.statement, params))
    return Early(choice, tuple(counted))


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
    dialect_name = uow.conn.dialect.name
    choice = _choice(provider, dialect_name, voucher_type_id, channel, now)
    if early is None:
        plans = choice.every
    elif early.choice is choice:
        plans = choice.late
    else:  # the plans were loaded again since: all but those counted early
        done = {plan.id for plan in early.choice.early}
        plans = tuple(plan for plan in choice.every if plan.id not in done)
    money_credits = [c for c in change.credits if c.balance_type_id in provider.money_balance_types]
    value = sum(c.amount for c in money_credits)
    counting: list[tuple[Plan, int]] = []
    for plan in plans:
        if plan.product_type_ids and account.product_type_id not in plan.product_type_ids:
            continue
        amount = plan.amount(value)
        if amount > 0:
            counting.append((plan, amount))
    results = [(plan, 1) for plan in early.choice.early] if early is not None else []
    counters = early.values() if early is not None else {}  # arrived with the account
    if counting:
        params: dict[str, Any] = {"subscriber_id": account.id, "updated_at": now}
        for i, (plan, amount) in enumerate(counting):
            params[f"promotion_id_{i}"] = plan.id
            params[f"window_start_{i}"], params[f"window_end_{i}"] = plan.window_at(now)
            params[f"value_{i}"] = amount
        rows = uow.fetch(_late_upsert(dialect_name, len(counting)), params)
        counters.update((row.promotion_id, int(row.value)) for row in rows)
        results += counting
    if not results:
        return None
    reached = []
    for plan, amount in results:
        after = counters.get(plan.id)
        if after is None:  # an early count that did not apply (another product type)
            continue
        times = plan.rewards_between(after - amount, after)
        if times:
            reached.append(Reached(plan, times))
    return Counted(
        tuple(reached), money_credits[0] if money_credits else None, provider.money_balance_types
    )


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
