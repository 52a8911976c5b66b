"""Reversal of a successful redemption or voucher-type recharge, by care or an admin.

The credits go back out of the wallet as ledger rows of cause ``reversal``; the voucher
is made active again when asked. One conditional update marks the original transaction
``reversed_by`` the new one, which decides the winner among concurrent reversals (the
others answer the winner's reversal, as does any later one) and takes the original out
of the one-success-per-voucher backstops, so a reactivated voucher can be redeemed again.

Order of the checks: role (403), the transaction and its provider (404, 403), the body
(422), ``force`` (admin only, 403), then the request id and the reversal itself (409).
"""

import uuid
from datetime import datetime
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, StringConstraints, ValidationError
from sqlalchemy import Connection, Row, insert, select, update

from voms.billing.engine import Change, Credit
from voms.db import tables as t
from voms.db.types import utcnow
from voms.domain.errors import Conflict, Invalid, NotFound
from voms.domain.roles import Permission
from voms.domain.serials import format_serial
from voms.domain.states import VoucherState
from voms.runtime import Runtime
from voms.services import audit, idempotency
from voms.services.auth import Principal
from voms.services.events import outbox as events
from voms.services.uow import AnsweredBefore, UnitOfWork

REVERSIBLE_KINDS = ("redemption", "recharge")
CHANNEL = "care"

Reason = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=200)]
RequestId = Annotated[
    str, StringConstraints(min_length=1, max_length=idempotency.MAX_REQUEST_ID_LENGTH)
]


class ReversalIn(BaseModel):
    """POST /api/v1/transactions/{transaction_id}/reversal."""

    model_config = ConfigDict(extra="forbid")

    reason: Reason
    reactivate_voucher: bool
    force: bool = False  # admin only: take what is left when the credit was spent
    request_id: RequestId | None = None


_tx, _lg, _bt, _v = t.transactions, t.ledger, t.balance_types, t.vouchers
_rv = t.reversals


def _body(raw: object) -> ReversalIn:
    try:
        return ReversalIn.model_validate(raw if raw is not None else {})
    except ValidationError as exc:
        where = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or 'body'}: {err['msg']}"
            for err in exc.errors(include_input=False)
        )
        raise Invalid(where) from None


def _original(conn: Connection, transaction_id: str) -> Row[Any]:
    row = conn.execute(select(_tx).where(_tx.c.id == transaction_id[:36])).first()
    if row is None:
        raise NotFound(f"transaction '{transaction_id}' not found")
    return row


def _first_answer(conn: Connection, transaction_id: str) -> dict[str, Any] | None:
    answer = conn.execute(select(_rv.c.answer).where(_rv.c.transaction_id == transaction_id))
    return answer.scalar()


def reverse(rt: Runtime, actor: Principal, transaction_id: str, raw: object) -> dict[str, Any]:
    """Take a redemption's credits back, optionally reactivating its voucher; idempotent.

    ``raw`` is the decoded JSON body, validated here so that a caller learns of a missing
    transaction (404) before a bad body (422).
    """
    actor.require(Permission.REVERSE)
    with UnitOfWork(rt, read_only=True) as uow:
        conn = uow.conn
        original = _original(conn, transaction_id)
    actor.require_scope(original.service_provider_id)
    body = _body(raw)
    if body.force:
        actor.require(Permission.REVERSE_FORCE)
    scope = idempotency.scope_of(actor)
    request_hash = idempotency.fingerprint(
        rt.keyring,
        "reversal",
        {"transaction_id": original.id, **body.model_dump(exclude={"request_id"})},
    )
    now = utcnow()
    try:
        with UnitOfWork(rt) as uow:
            conn = uow.conn
            uow.idempotent(scope, body.request_id, request_hash)
            answer = _first_answer(conn, original.id) or _reverse(
                rt, uow, actor, original, body, now
            )
            uow.answer(answer, 200)
            uow.commit()
            return answer
    except AnsweredBefore as again:
        return again.first.body


def _reverse(
    rt: Runtime,
    uow: UnitOfWork,
    actor: Principal,
    original: Row[Any],
    body: ReversalIn,
    now: datetime,
) -> dict[str, Any]:
    conn = uow.conn
    if original.result_code != 0 or original.kind not in REVERSIBLE_KINDS:
        raise Conflict(
            f"only a successful redemption or voucher-type recharge can be reversed; "
            f"this is a {original.kind} with result code {original.result_code}"
        )
    if body.reactivate_voucher and original.serial is None:
        raise Conflict("a voucher-type recharge has no voucher to make active again")
    reversal_id = str(uuid.uuid4())
    claimed = conn.execute(
        update(_tx)
        .where(_tx.c.id == original.id, _tx.c.reversed_by.is_(None))
        .values(reversed_by=reversal_id)
    ).rowcount
    if not claimed:  # a concurrent reversal won (PostgreSQL waited for it to commit)
        first = _first_answer(conn, original.id)
        if first is None:
            raise Conflict(f"transaction {original.id} is being reversed; try again")
        return first
    # The voucher before the wallet: the order in which a redemption locks them.
    if body.reactivate_voucher:
        _reactivate(conn, original.serial, now)
    account = rt.billing.load_account(uow, original.recipient_msisdn, lock=True)
    if account is None:
        raise Conflict(f"subscriber '{original.recipient_msisdn}' no longer has a wallet")
    credited = conn.execute(
        select(_lg.c.balance_type_id, _bt.c.code, _lg.c.amount)
        .join(_bt, _bt.c.id == _lg.c.balance_type_id)
        .where(_lg.c.transaction_id == original.id, _lg.c.cause == original.kind)
        .order_by(_bt.c.code)
    ).all()
    takes: list[Credit] = []
    lines: list[dict[str, Any]] = []
    for row in credited:
        held = account.balances.get(row.balance_type_id)
        left = held.amount if held is not None else 0
        taken = min(row.amount, left)
        if taken < row.amount and not body.force:
            raise Conflict(
                f"the {row.code} balance is {left}, below the {row.amount} credited: it was "
                "spent; an admin may force the reversal (what is left is taken)"
            )
        if taken:
            takes.append(Credit(row.balance_type_id, row.code, -taken))
        lines.append(
            {
                "balance_type": row.code,
                "credited": row.amount,
                "amount": -taken,
                "shortfall": row.amount - taken,
                "balance": left - taken,
            }
        )
    if takes:
        rt.billing.apply(
            uow,
            account,
            Change(
                credits=tuple(takes),
                cause="reversal",
                actor=actor.name,
                at=now,
                transaction_id=reversal_id,
                serial=original.serial,
                reason=body.reason,
            ),
        )
    conn.execute(
        update(_lg)
        .where(_lg.c.transaction_id == original.id, _lg.c.cause == original.kind)
        .values(reversed_by=reversal_id)
    )
    conn.execute(
        insert(_tx).values(
            id=reversal_id,
            at=now,
            kind="reversal",
            channel=CHANNEL,
            msisdn=original.msisdn,
            recipient_msisdn=original.recipient_msisdn,
            serial=original.serial,
            voucher_type_id=original.voucher_type_id,
            scenario=original.scenario,
            result_code=0,
            credits=[
                {"balance_type": x["balance_type"], "amount": x["amount"], "balance": x["balance"]}
                for x in lines
                if x["amount"]
            ],
            service_provider_id=original.service_provider_id,
            api_key_id=actor.api_key_id,
            actor=actor.name,
        )
    )
    shortfall = [
        {"balance_type": x["balance_type"], "amount": x["shortfall"]}
        for x in lines
        if x["shortfall"]
    ]
    answer = {
        "reversal_id": reversal_id,
        "transaction_id": original.id,
        "serial": None
        if original.serial is None
        else format_serial(original.serial, rt.settings.serial_width),
        "msisdn": original.recipient_msisdn,
        "reason": body.reason,
        "voucher_reactivated": body.reactivate_voucher,
        "forced": body.force,
        "credits": lines,
        "shortfall": shortfall,
        "at": now.isoformat(),
        "actor": actor.name,
    }
    conn.execute(
        insert(_rv).values(
            transaction_id=original.id,
            reversal_id=reversal_id,
            at=now,
            actor=actor.name,
            reason=body.reason,
            voucher_reactivated=body.reactivate_voucher,
            forced=body.force,
            service_provider_id=original.service_provider_id,
            answer=answer,
        )
    )
    events.reversed_(
        conn,
        original.id,
        reversal_id,
        answer["serial"],
        original.recipient_msisdn,
        body.reactivate_voucher,
        original.service_provider_id,
        now,
    )
    audit.record(
        conn,
        actor,
        "transaction.reverse",
        "transaction",
        original.id,
        original.service_provider_id,
        {
            "reversal_id": reversal_id,
            "reason": body.reason,
            "voucher_reactivated": body.reactivate_voucher,
            "forced": body.force,
            "shortfall": shortfall,
        },
    )
    return answer


def _reactivate(conn: Connection, serial: int, now: datetime) -> None:
    moved = conn.execute(
        update(_v)
        .where(_v.c.serial == serial, _v.c.state == VoucherState.REDEEMED.value)
        .values(
            state=VoucherState.AVAILABLE.value,
            state_changed_at=now,
            redeemed_at=None,
            redeemed_by=None,
        )
    ).rowcount
    if moved:
        return
    state = conn.execute(select(_v.c.state).where(_v.c.serial == serial)).scalar()
    if state is None:
        raise Conflict(f"voucher {serial} is archived: it cannot be made active again")
    raise Conflict(f"voucher {serial} is {state}, not redeemed: it cannot be made active again")


def reversal_of(rt: Runtime, actor: Principal, transaction_id: str) -> dict[str, Any]:
    """The reversal of a transaction, as answered when it was made."""
    actor.require(Permission.LOOKUP)
    with UnitOfWork(rt, read_only=True) as uow:
        conn = uow.conn
        original = _original(conn, transaction_id)
        actor.require_scope(original.service_provider_id)
        answer = _first_answer(conn, original.id)
    if answer is None:
        raise NotFound(f"transaction '{transaction_id}' has not been reversed")
    return answer
