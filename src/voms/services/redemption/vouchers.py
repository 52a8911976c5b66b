"""Vouchers: find the one a PIN opens, and take it.

Finding costs one round trip: the lookup by the PIN's keyed hashes (one per live lookup
key) reads the voucher, its batch and the requester's bad-PIN record together. Taking
is the conditional ``UPDATE … WHERE state = <the state the action starts from>
RETURNING`` that decides the winner among concurrent attempts; it goes out with the
next round trip (the account's), and its rows say whether this call won.
"""

import functools
from typing import Any, NamedTuple

from sqlalchemy import bindparam, select, update

from voms.db import tables as t
from voms.domain.catalog import VoucherType
from voms.domain.errors import ResultError
from voms.domain.results import Result
from voms.domain.states import (
    BatchState,
    VoucherAction,
    VoucherState,
    is_expired,
    redemption_blocker,
    voucher_move,
)
from voms.runtime import Runtime
from voms.services import catalog_cache, guessing
from voms.services.redemption import blacklist, requests
from voms.services.redemption.requests import Attempt, RedemptionRequest
from voms.services.uow import Later, UnitOfWork

_v, _bt, _pa = t.vouchers, t.batches, t.pin_attempts
_FIND_VOUCHERS = select(
    _v.c.serial,
    _v.c.state,
    _bt.c.state.label("batch_state"),
    _bt.c.expires_at,
    _bt.c.voucher_type_id,
    _bt.c.service_provider_id,
    # The requester's bad-PIN record, in the same round trip.
    blacklist.BLACKLIST.with_only_columns(_pa.c.failures).scalar_subquery().label("failures"),
    blacklist.BLACKLIST.with_only_columns(_pa.c.blacklisted_until)
    .scalar_subquery()
    .label("blacklisted_until"),
).join(_bt, _bt.c.id == _v.c.batch_id)


@functools.cache
def _find_voucher_by(hashes: int) -> Any:
    """The voucher lookup for a PIN's ``hashes`` lookup hashes (one per lookup key, see
    Keyring.lookup_hashes), each its own parameter.

    Not ``= ANY(array)``: PostgreSQL then planned the prepared statement anew on every
    call, its generic plan for an array of unknown length looking dearer.
    """
    return _FIND_VOUCHERS.where(_v.c.pin_hash.in_([bindparam(f"hash{i}") for i in range(hashes)]))


class Found(NamedTuple):
    """The voucher a PIN opened, checked up to its state, and its voucher type. (A named
    tuple: made for every redemption, where a frozen dataclass costs 3 times as much.)"""

    serial: int
    voucher_type: VoucherType
    had_failures: bool  # the requester has bad PINs to forget after a success


def find(
    rt: Runtime, uow: UnitOfWork, attempt: Attempt, request: RedemptionRequest, msisdn: str
) -> Found:
    """The voucher of the request's PIN: format, lookup, serial, state, voucher type.

    The requester's blacklist answers first (5003 comes before any PIN check). A PIN
    that is malformed or finds nothing is a failed lookup (``attempt.bad_pin``): the
    refusal counts it towards the requester's blacklist.
    """
    # Issue 14: a caller over its failed-lookup budget is refused before any lookup.
    guessing.refuse_if_throttled(rt, attempt.actor, attempt.channel, attempt.service_provider_id)
    try:
        pin = requests.pin(rt, uow, request.pin)
    except ResultError as error:
        blacklist.check(uow, msisdn)
        attempt.bad_pin = error.result is Result.INVALID_VOUCHER_NUMBER  # a failed lookup
        raise
    hashes = rt.keyring.lookup_hashes(pin)
    rows = uow.fetch(_find_voucher_by(len(hashes)), {**_hash_params(hashes), "msisdn": msisdn})
    row = rows[0] if rows else None
    if row is None:  # a failed lookup, unless the PIN is an archived voucher's
        blacklist.check(uow, msisdn)
        _refuse_archived(uow, attempt, hashes)
    had_failures = blacklist.verdict(row, uow)
    if row is None or (
        attempt.service_provider_id is not None
        and row.service_provider_id != attempt.service_provider_id
    ):
        attempt.bad_pin = row is None
        raise ResultError(Result.VOUCHER_NOT_FOUND)
    attempt.serial = row.serial
    attempt.voucher_type_id = row.voucher_type_id
    attempt.service_provider_id = row.service_provider_id
    serial = requests.serial(request.serial)
    if serial is not None and serial != row.serial:
        raise ResultError(Result.INVALID_SERIAL_NUMBER)
    expired = is_expired(row.expires_at, uow.started_at)
    blocker = redemption_blocker(BatchState(row.batch_state), VoucherState(row.state), expired)
    if blocker is not None:
        raise ResultError(blocker)
    voucher_type = catalog_cache.voucher_type(rt, uow.conn, voucher_type_id=row.voucher_type_id)
    if voucher_type is None:  # deleted from the catalog under a live batch
        raise ResultError(Result.VOUCHER_TYPE_NOT_FOUND)
    return Found(row.serial, voucher_type, had_failures)


@functools.cache
def _archived_by(hashes: int) -> Any:
    """The archive's lookup for a PIN's ``hashes`` lookup hashes (as :func:`_find_voucher_by`)."""
    archive = t.voucher_archive
    return (
        select(archive.c.serial, archive.c.state, _bt.c.service_provider_id)
        .join(_bt, _bt.c.id == archive.c.batch_id)
        .where(archive.c.pin_hash.in_([bindparam(f"hash{i}") for i in range(hashes)]))
    )


def _hash_params(hashes: list[bytes]) -> dict[str, bytes]:
    return {f"hash{i}": each for i, each in enumerate(hashes)}


_ARCHIVED_RESULT = {
    "redeemed": Result.ALREADY_REDEEMED,
    "deleted": Result.DELETED,
    "expired": Result.EXPIRED,
}


def _refuse_archived(uow: UnitOfWork, attempt: Attempt, hashes: list[bytes]) -> None:
    """An archived voucher's PIN is a real PIN: answer its final state, not 'not found'.

    Otherwise a subscriber typing an old, used voucher would count towards a blacklist.
    """
    rows = uow.fetch(_archived_by(len(hashes)), _hash_params(hashes))
    if not rows:
        return
    row = rows[0]
    if (
        attempt.service_provider_id is not None
        and row.service_provider_id != attempt.service_provider_id
    ):
        raise ResultError(Result.VOUCHER_NOT_FOUND)
    attempt.serial = row.serial
    attempt.service_provider_id = row.service_provider_id
    raise ResultError(_ARCHIVED_RESULT[row.state])


# --- taking a voucher -----------------------------------------------------------------------


def _move_statement(action: VoucherAction) -> Any:
    to_state = voucher_move(action)[1]
    values: dict[str, Any] = {"state": to_state.value, "state_changed_at": bindparam("now")}
    if to_state is VoucherState.REDEEMED:
        values.update(redeemed_at=bindparam("now"), redeemed_by=bindparam("redeemed_by"))
    return (
        update(_v)
        .where(_v.c.serial == bindparam("move_serial"), _v.c.state == bindparam("from_state"))
        .values(**values)
        .returning(_v.c.serial)
    )


# The redemption family's moves, built once: the hot path then skips building and
# cache-keying a statement per call.
_MOVES = {
    action: _move_statement(action)
    for action in (
        VoucherAction.REDEEM,
        VoucherAction.RESERVE,
        VoucherAction.COMMIT,
        VoucherAction.REVOKE,
    )
}


def move(
    uow: UnitOfWork, serial: int, action: VoucherAction, redeemed_by: str | None = None
) -> Later:
    """The voucher transition ``action`` as the conditional update that decides who wins
    the voucher, sent with the next round trip; a row for the winner."""
    from_state, to_state = voucher_move(action)
    params: dict[str, Any] = {
        "move_serial": serial,
        "from_state": from_state.value,
        "now": uow.started_at,
    }
    if to_state is VoucherState.REDEEMED:
        params["redeemed_by"] = redeemed_by
    return uow.ahead(_MOVES[action], params)


_VOUCHER_BY_SERIAL = (
    select(_v.c.state, _bt.c.state.label("batch_state"), _bt.c.expires_at)
    .join(_bt, _bt.c.id == _v.c.batch_id)
    .where(_v.c.serial == bindparam("serial"))
)


def ensure_taken(uow: UnitOfWork, taken: Later, serial: int) -> None:
    """Raise why the voucher could not be taken when a concurrent call won it."""
    if taken.rows():
        return
    (row,) = uow.fetch(_VOUCHER_BY_SERIAL, {"serial": serial})
    expired = is_expired(row.expires_at, uow.started_at)
    result = redemption_blocker(BatchState(row.batch_state), VoucherState(row.state), expired)
    raise ResultError(result or Result.ALREADY_REDEEMED)
