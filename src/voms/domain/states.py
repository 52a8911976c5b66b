"""Batch and voucher states, their transition tables, and the effective state.

A voucher's effective state combines its batch's state with its own, so that one row
update on the batch activates, freezes or deletes millions of vouchers.
"""

import functools
from datetime import datetime
from enum import StrEnum

from voms.domain.errors import Conflict
from voms.domain.results import Result


class BatchState(StrEnum):
    GENERATING = "generating"
    GENERATED = "generated"
    ACTIVE = "active"
    FROZEN = "frozen"
    DELETED = "deleted"
    FAILED = "failed"


class BatchAction(StrEnum):
    COMPLETE = "complete"
    FAIL = "fail"
    ACTIVATE = "activate"
    FREEZE = "freeze"
    UNFREEZE = "unfreeze"
    DELETE = "delete"


class VoucherState(StrEnum):
    """A voucher's own state, independent of its batch."""

    AVAILABLE = "available"
    RESERVED = "reserved"
    REDEEMED = "redeemed"
    FROZEN = "frozen"
    DELETED = "deleted"


class VoucherAction(StrEnum):
    REDEEM = "redeem"
    RESERVE = "reserve"
    COMMIT = "commit"
    REVOKE = "revoke"
    FREEZE = "freeze"
    UNFREEZE = "unfreeze"
    DELETE = "delete"


BATCH_TRANSITIONS: dict[tuple[BatchState, BatchAction], BatchState] = {
    (BatchState.GENERATING, BatchAction.COMPLETE): BatchState.GENERATED,
    (BatchState.GENERATING, BatchAction.FAIL): BatchState.FAILED,
    (BatchState.GENERATED, BatchAction.ACTIVATE): BatchState.ACTIVE,
    (BatchState.GENERATED, BatchAction.FREEZE): BatchState.FROZEN,
    (BatchState.GENERATED, BatchAction.DELETE): BatchState.DELETED,
    (BatchState.ACTIVE, BatchAction.FREEZE): BatchState.FROZEN,
    (BatchState.ACTIVE, BatchAction.DELETE): BatchState.DELETED,
    (BatchState.FROZEN, BatchAction.UNFREEZE): BatchState.ACTIVE,
    (BatchState.FROZEN, BatchAction.DELETE): BatchState.DELETED,
    (BatchState.FAILED, BatchAction.DELETE): BatchState.DELETED,
}

VOUCHER_TRANSITIONS: dict[tuple[VoucherState, VoucherAction], VoucherState] = {
    (VoucherState.AVAILABLE, VoucherAction.REDEEM): VoucherState.REDEEMED,
    (VoucherState.AVAILABLE, VoucherAction.RESERVE): VoucherState.RESERVED,
    (VoucherState.RESERVED, VoucherAction.COMMIT): VoucherState.REDEEMED,
    (VoucherState.RESERVED, VoucherAction.REVOKE): VoucherState.AVAILABLE,
    (VoucherState.AVAILABLE, VoucherAction.FREEZE): VoucherState.FROZEN,
    (VoucherState.FROZEN, VoucherAction.UNFREEZE): VoucherState.AVAILABLE,
    (VoucherState.AVAILABLE, VoucherAction.DELETE): VoucherState.DELETED,
    (VoucherState.FROZEN, VoucherAction.DELETE): VoucherState.DELETED,
}


def next_batch_state(state: BatchState, action: BatchAction) -> BatchState:
    """The batch state after ``action``; an illegal transition is a Conflict (409)."""
    try:
        return BATCH_TRANSITIONS[(state, action)]
    except KeyError:
        raise Conflict(f"cannot {action} a batch that is {state}") from None


def next_voucher_state(state: VoucherState, action: VoucherAction) -> VoucherState:
    """The voucher state after ``action``; an illegal transition is a Conflict (409)."""
    try:
        return VOUCHER_TRANSITIONS[(state, action)]
    except KeyError:
        raise Conflict(f"cannot {action} a voucher that is {state}") from None


@functools.cache  # (the table is fixed: asked on every redemption)
def voucher_states_allowing(action: VoucherAction) -> frozenset[VoucherState]:
    """Own states from which ``action`` is legal (for set-based conditional updates)."""
    return frozenset(state for (state, act) in VOUCHER_TRANSITIONS if act is action)


@functools.cache
def voucher_move(action: VoucherAction) -> tuple[VoucherState, VoucherState]:
    """The one own state ``action`` takes a voucher from, and the state it leaves it in
    (for the conditional update that decides who wins a voucher)."""
    (source,) = voucher_states_allowing(action)
    return source, VOUCHER_TRANSITIONS[(source, action)]


class ReservationState(StrEnum):
    """A voucher held for an external charging system."""

    OPEN = "open"
    HELD = "held"  # timed out with the hold action: waits for a commit or a revoke
    COMMITTED = "committed"
    REVOKED = "revoked"


class ReservationAction(StrEnum):
    COMMIT = "commit"
    REVOKE = "revoke"
    HOLD = "hold"  # the timeout action that keeps the voucher reserved


RESERVATION_TRANSITIONS: dict[tuple[ReservationState, ReservationAction], ReservationState] = {
    (ReservationState.OPEN, ReservationAction.COMMIT): ReservationState.COMMITTED,
    (ReservationState.OPEN, ReservationAction.REVOKE): ReservationState.REVOKED,
    (ReservationState.OPEN, ReservationAction.HOLD): ReservationState.HELD,
    (ReservationState.HELD, ReservationAction.COMMIT): ReservationState.COMMITTED,
    (ReservationState.HELD, ReservationAction.REVOKE): ReservationState.REVOKED,
}

# What a reservation's commit or revoke does to its voucher.
RESERVATION_VOUCHER_ACTION = {
    ReservationAction.COMMIT: VoucherAction.COMMIT,
    ReservationAction.REVOKE: VoucherAction.REVOKE,
}


def reservation_states_allowing(action: ReservationAction) -> frozenset[ReservationState]:
    """Reservation states from which ``action`` is legal."""
    return frozenset(state for (state, act) in RESERVATION_TRANSITIONS if act is action)


def next_reservation_state(state: ReservationState, action: ReservationAction) -> ReservationState:
    """The reservation state after ``action``; an illegal transition is a Conflict (409)."""
    try:
        return RESERVATION_TRANSITIONS[(state, action)]
    except KeyError:
        raise Conflict(f"cannot {action} a reservation that is {state}") from None


class SubscriberState(StrEnum):
    """A subscriber's account state; only an active account is recharged (an expired
    one within its grace period is revived by the recharge: docs/policy.md)."""

    ACTIVE = "active"
    EXPIRED = "expired"
    FROZEN = "frozen"
    SUSPENDED = "suspended"
    DEACTIVATED = "deactivated"


# Deactivation is final: a deactivated number is given a new account, not reopened.
SUBSCRIBER_TRANSITIONS: dict[SubscriberState, frozenset[SubscriberState]] = {
    SubscriberState.ACTIVE: frozenset(
        {
            SubscriberState.EXPIRED,
            SubscriberState.FROZEN,
            SubscriberState.SUSPENDED,
            SubscriberState.DEACTIVATED,
        }
    ),
    SubscriberState.EXPIRED: frozenset(
        {
            SubscriberState.ACTIVE,
            SubscriberState.FROZEN,
            SubscriberState.SUSPENDED,
            SubscriberState.DEACTIVATED,
        }
    ),
    SubscriberState.FROZEN: frozenset(
        {
            SubscriberState.ACTIVE,
            SubscriberState.EXPIRED,
            SubscriberState.SUSPENDED,
            SubscriberState.DEACTIVATED,
        }
    ),
    SubscriberState.SUSPENDED: frozenset(
        {
            SubscriberState.ACTIVE,
            SubscriberState.EXPIRED,
            SubscriberState.FROZEN,
            SubscriberState.DEACTIVATED,
        }
    ),
    SubscriberState.DEACTIVATED: frozenset(),
}


def check_subscriber_move(state: SubscriberState, new_state: SubscriberState) -> None:
    """A subscriber may stay as it is or move as the table allows; otherwise Conflict (409)."""
    if new_state is not state and new_state not in SUBSCRIBER_TRANSITIONS[state]:
        raise Conflict(f"a subscriber that is {state} cannot become {new_state}")


def is_expired(expires_at: datetime | None, now: datetime) -> bool:
    """Expiry is derived from ``expires_at``: no mass update is ever needed."""
    return expires_at is not None and expires_at <= now


def redemption_blocker(
    batch_state: BatchState, voucher_state: VoucherState, expired: bool
) -> Result | None:
    """Why a voucher cannot be redeemed or reserved now, or None when it can.

    Precedence is fixed by docs/api.md: 2009, 2010, 2013, 2011, 2001, 2012, 2014.
    """
    if voucher_state is VoucherState.REDEEMED:
        return Result.ALREADY_REDEEMED
    if voucher_state is VoucherState.RESERVED:
        return Result.ALREADY_RESERVED
    if voucher_state is VoucherState.DELETED:
        return Result.DELETED
    if batch_state is BatchState.GENERATED:
        return Result.NOT_YET_ACTIVE
    if batch_state is not BatchState.ACTIVE:
        return Result.BATCH_NOT_ACTIVE
    if voucher_state is VoucherState.FROZEN:
        return Result.FROZEN
    if expired:
        return Result.EXPIRED
    return None


def effective_voucher_state(
    batch_state: BatchState, voucher_state: VoucherState, expired: bool
) -> str:
    """The state an operator sees: the voucher's own, overridden by its batch."""
    if voucher_state in (VoucherState.REDEEMED, VoucherState.RESERVED, VoucherState.DELETED):
        return voucher_state.value
    if batch_state is BatchState.DELETED:
        return "deleted"
    if batch_state is BatchState.FROZEN or voucher_state is VoucherState.FROZEN:
        return "frozen"
    if batch_state is not BatchState.ACTIVE:
        return {"generated": "inactive"}.get(batch_state.value, batch_state.value)
    if expired:
        return "expired"
    return "active"
