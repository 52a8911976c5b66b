import itertools

import pytest

from voms.domain.errors import Conflict
from voms.domain.results import Result
from voms.domain.states import (
    BATCH_TRANSITIONS,
    RESERVATION_TRANSITIONS,
    SUBSCRIBER_TRANSITIONS,
    VOUCHER_TRANSITIONS,
    BatchAction,
    BatchState,
    ReservationAction,
    ReservationState,
    SubscriberState,
    VoucherAction,
    VoucherState,
    check_subscriber_move,
    effective_voucher_state,
    next_batch_state,
    next_reservation_state,
    next_voucher_state,
    redemption_blocker,
    reservation_states_allowing,
    voucher_move,
)


@pytest.mark.parametrize(("state", "action"), list(itertools.product(BatchState, BatchAction)))
def test_every_batch_transition_is_either_in_the_table_or_refused(
    state: BatchState, action: BatchAction
) -> None:
    if (state, action) in BATCH_TRANSITIONS:
        assert next_batch_state(state, action) is BATCH_TRANSITIONS[(state, action)]
    else:
        with pytest.raises(Conflict, match=f"cannot {action}"):
            next_batch_state(state, action)


@pytest.mark.parametrize(("state", "action"), list(itertools.product(VoucherState, VoucherAction)))
def test_every_voucher_transition_is_either_in_the_table_or_refused(
    state: VoucherState, action: VoucherAction
) -> None:
    if (state, action) in VOUCHER_TRANSITIONS:
        assert next_voucher_state(state, action) is VOUCHER_TRANSITIONS[(state, action)]
    else:
        with pytest.raises(Conflict):
            next_voucher_state(state, action)


def test_a_deleted_batch_can_never_come_back() -> None:
    assert not [a for (s, a) in BATCH_TRANSITIONS if s is BatchState.DELETED]


def test_a_failed_batch_can_only_be_deleted() -> None:
    assert [a for (s, a) in BATCH_TRANSITIONS if s is BatchState.FAILED] == [BatchAction.DELETE]


def test_a_redeemable_voucher_has_no_blocker() -> None:
    assert redemption_blocker(BatchState.ACTIVE, VoucherState.AVAILABLE, expired=False) is None


@pytest.mark.parametrize(
    ("batch", "voucher", "expired", "expected"),
    [
        (BatchState.FROZEN, VoucherState.REDEEMED, True, Result.ALREADY_REDEEMED),
        (BatchState.DELETED, VoucherState.RESERVED, True, Result.ALREADY_RESERVED),
        (BatchState.GENERATED, VoucherState.DELETED, True, Result.DELETED),
        (BatchState.GENERATED, VoucherState.FROZEN, True, Result.NOT_YET_ACTIVE),
        (BatchState.FROZEN, VoucherState.FROZEN, True, Result.BATCH_NOT_ACTIVE),
        (BatchState.DELETED, VoucherState.AVAILABLE, False, Result.BATCH_NOT_ACTIVE),
        (BatchState.FAILED, VoucherState.AVAILABLE, False, Result.BATCH_NOT_ACTIVE),
        (BatchState.ACTIVE, VoucherState.FROZEN, True, Result.FROZEN),
        (BatchState.ACTIVE, VoucherState.AVAILABLE, True, Result.EXPIRED),
    ],
)
def test_blockers_follow_the_precedence_of_api_md(
    batch: BatchState, voucher: VoucherState, expired: bool, expected: Result
) -> None:
    assert redemption_blocker(batch, voucher, expired) is expected


def test_a_frozen_batch_shows_its_vouchers_frozen() -> None:
    assert effective_voucher_state(BatchState.FROZEN, VoucherState.AVAILABLE, False) == "frozen"
    assert effective_voucher_state(BatchState.ACTIVE, VoucherState.AVAILABLE, True) == "expired"
    assert (
        effective_voucher_state(BatchState.GENERATED, VoucherState.AVAILABLE, False) == "inactive"
    )


@pytest.mark.parametrize(
    ("state", "action"), list(itertools.product(ReservationState, ReservationAction))
)
def test_every_reservation_transition_is_either_in_the_table_or_refused(
    state: ReservationState, action: ReservationAction
) -> None:
    if (state, action) in RESERVATION_TRANSITIONS:
        assert next_reservation_state(state, action) is RESERVATION_TRANSITIONS[(state, action)]
        assert state in reservation_states_allowing(action)
    else:
        with pytest.raises(Conflict, match=f"cannot {action}"):
            next_reservation_state(state, action)


def test_finished_reservations_stay_finished() -> None:
    for final in (ReservationState.COMMITTED, ReservationState.REVOKED):
        assert not any(state is final for state, _ in RESERVATION_TRANSITIONS)


@pytest.mark.parametrize(("state", "new"), list(itertools.product(SubscriberState, repeat=2)))
def test_subscriber_moves_follow_the_table_and_deactivation_is_final(
    state: SubscriberState, new: SubscriberState
) -> None:
    if new is state or new in SUBSCRIBER_TRANSITIONS[state]:
        check_subscriber_move(state, new)
    else:
        assert state is SubscriberState.DEACTIVATED
        with pytest.raises(Conflict, match="cannot become"):
            check_subscriber_move(state, new)


def test_each_redemption_move_starts_from_one_state() -> None:
    assert voucher_move(VoucherAction.REDEEM) == (VoucherState.AVAILABLE, VoucherState.REDEEMED)
    assert voucher_move(VoucherAction.RESERVE) == (VoucherState.AVAILABLE, VoucherState.RESERVED)
    assert voucher_move(VoucherAction.COMMIT) == (VoucherState.RESERVED, VoucherState.REDEEMED)
    assert voucher_move(VoucherAction.REVOKE) == (VoucherState.RESERVED, VoucherState.AVAILABLE)
