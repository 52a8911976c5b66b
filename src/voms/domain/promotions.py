"""Promotion plans: their windows, who counts, and what a target reached gives.

Pure rules, no I/O; the counting itself is an upsert of the plans' counters in the
redemption's transaction (:mod:`voms.services.promotions.counting`). Times are aware
UTC datetimes; a window is ``[start, end)``: a redemption at the very instant a month
ends counts in the next month.
"""

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Literal

from voms.domain.catalog import Credit
from voms.domain.scenarios import LATEST_EXPIRY

WindowKind = Literal["calendar_month", "rolling_days", "campaign"]
CounterKind = Literal["count", "value"]
WINDOW_KINDS: tuple[WindowKind, ...] = ("calendar_month", "rolling_days", "campaign")
COUNTER_KINDS: tuple[CounterKind, ...] = ("count", "value")


@dataclass(frozen=True)
class Reward:
    """What reaching a plan's target gives, once per time it is reached."""

    credits: tuple[Credit, ...] = ()
    account_expiry_extension_days: int = 0
    percent_of_value: int = 0  # of the voucher's money value, onto its money balance
    new_product_type_id: int | None = None


@dataclass(frozen=True)
class Plan:
    """A promotion plan as the redemption sees it (cached per process)."""

    id: int
    code: str
    service_provider_id: int
    starts_at: datetime
    ends_at: datetime | None
    window: WindowKind
    days: int | None  # rolling_days only
    counter: CounterKind
    target: int
    repeat: bool
    reward: Reward
    voucher_type_ids: frozenset[int] = frozenset()  # empty: every voucher type
    channels: frozenset[str] = frozenset()  # empty: every channel
    product_type_ids: frozenset[int] = frozenset()  # empty: every product type

    def runs_at(self, now: datetime) -> bool:
        """The plan counts redemptions made at ``now``."""
        return self.starts_at <= now and (self.ends_at is None or now < self.ends_at)

    def applies_to(
        self, voucher_type_id: int | None, channel: str, product_type_id: int | None
    ) -> bool:
        """A redemption of this voucher type, on this channel, by this product type counts
        (``product_type_id`` None: whatever the product type)."""
        return (
            (not self.voucher_type_ids or voucher_type_id in self.voucher_type_ids)
            and (not self.channels or channel in self.channels)
            and (
                product_type_id is None
                or not self.product_type_ids
                or product_type_id in self.product_type_ids
            )
        )

    def window_at(self, now: datetime) -> tuple[datetime, datetime]:
        """The window a counter opened at ``now`` covers, ``[start, end)``.

        A calendar month (UTC); rolling days from this redemption on (a counter whose
        window has ended starts a new one at its next redemption); or the campaign.
        """
        if self.window == "calendar_month":
            return month_window(now)
        if self.window == "rolling_days":
            assert self.days is not None
            return now, min(now + timedelta(days=self.days), LATEST_EXPIRY)
        return self.starts_at, self.ends_at or LATEST_EXPIRY

    def amount(self, value: int) -> int:
        """What one redemption of money ``value`` adds to this plan's counter."""
        return 1 if self.counter == "count" else value

    def rewards_between(self, before: int, after: int) -> int:
        """How many rewards a counter moving from ``before`` to ``after`` earns."""
        return rewards_between(before, after, self.target, self.repeat)


def month_window(now: datetime) -> tuple[datetime, datetime]:
    """The UTC calendar month of ``now``: from its first instant to the next month's."""
    now = now.astimezone(UTC)
    start = now.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    end = (start + timedelta(days=32)).replace(day=1)
    return start, end


def rewards_between(before: int, after: int, target: int, repeat: bool) -> int:
    """Rewards earned by a counter going from ``before`` to ``after`` (within a window).

    A once plan rewards the move that reaches the target; a repeat plan rewards every
    multiple of the target passed (a large voucher on a value counter may pass two).
    """
    if after <= before:
        return 0
    if not repeat:
        return 1 if before < target <= after else 0
    return after // target - before // target


def reward_credits(reward: Reward, times: int, money: Credit | None) -> tuple[Credit, ...]:
    """The credits of ``times`` rewards; ``money`` is the voucher's money credit, the
    base of ``percent_of_value`` (rounded down, added to that balance type)."""
    amounts: dict[int, Credit] = {}
    for credit in reward.credits:
        amounts[credit.balance_type_id] = Credit(
            credit.balance_type_id,
            credit.balance_type,
            credit.amount * times,
            credit.balance_expiry_extension_days,
        )
    if reward.percent_of_value and money is not None:
        extra = money.amount * reward.percent_of_value * times // 100
        known = amounts.get(money.balance_type_id)
        if extra > 0:
            amounts[money.balance_type_id] = Credit(
                money.balance_type_id,
                money.balance_type,
                extra + (known.amount if known else 0),
                known.balance_expiry_extension_days if known else 0,
            )
    return tuple(amounts[key] for key in sorted(amounts) if amounts[key].amount > 0)
