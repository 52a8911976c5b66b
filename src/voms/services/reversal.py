"""Reversal of a successful redemption or voucher-type recharge, by care or an admin.

The credits go back out of the wallet as ledger rows of cause ``reversal``, with the
credits of the promotion rewards the redemption earned (ledger cause ``reward``, same
transaction id); the promotion counters the redemption added to are lowered again (see
:func:`_uncount`); the voucher is made active again when asked. One conditional update
marks the original transaction
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
from sqlalchemy import Connection, Row, bindparam, case, insert, or_, select, update

from voms.billing.engine import Change, Credit
from voms.db import tables as t
from voms.db.types import utcnow
from voms.domain.errors import Conflict, Invalid, NotFound
from voms.domain.promotions import Plan
from voms.domain.roles import Permission
from voms.domain.serials import format_serial
from voms.domain.states import VoucherState
from voms.runtime import Runtime
from voms.services import audit, idempotency
from voms.services.auth import Principal
from voms.services.events import outbox as events
from voms.services.promotions.plans import plan_of
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
_rv, _pc, _s = t.reversals, t.promotion_counters, t.subscribers
REWARD = "reward"  # the ledger cause of a promotion reward's credits


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
    # The voucher, the counters of count plans, the wallet, those of value plans: the
    # order in which a redemption locks them.
    if body.reactivate_voucher:
        _reactivate(conn, original.serial, now)
    plans = _plans_counted(conn, original)
    uncounted = _uncount(conn, original, [p for p in plans if p.counter == "count"], 0, now)
    account = rt.billing.load_account(uow, original.recipient_msisdn, lock=True)
    if account is None:
        raise Conflict(f"subscriber '{original.recipient_msisdn}' no longer has a wallet")
    credited = conn.execute(
        select(
            _lg.c.balance_type_id,
            _bt.c.code,
            _bt.c.currency,
            _lg.c.amount,
            _lg.c.cause,
            _lg.c.reason,
        )
        .join(_bt, _bt.c.id == _lg.c.balance_type_id)
        .where(_lg.c.transaction_id == original.id, _lg.c.cause.in_((original.kind, REWARD)))
        .order_by(_lg.c.id)
    ).all()
    own = sorted((row for row in credited if row.cause != REWARD), key=lambda row: row.code)
    value = sum(row.amount for row in own if row.currency)  # the voucher's money
    uncounted += _uncount(conn, original, [p for p in plans if p.counter != "count"], value, now)
    left = {i: b.amount for i, b in account.balances.items()}
    taken_of: dict[int, tuple[str, int]] = {}

    def take(row: Any) -> dict[str, Any]:
        have = left.get(row.balance_type_id, 0)
        taken = min(row.amount, have)
        if taken < row.amount and not body.force:
            raise Conflict(
                f"the {row.code} balance is {have}, below the {row.amount} credited: it was "
                "spent; an admin may force the reversal (what is left is taken)"
            )
        left[row.balance_type_id] = have - taken
        code, before = taken_of.get(row.balance_type_id, (row.code, 0))
        taken_of[row.balance_type_id] = (code, before + taken)
        return {
            "balance_type": row.code,
            "credited": row.amount,
            "amount": -taken,
            "shortfall": row.amount - taken,
            "balance": left[row.balance_type_id],
        }

    lines = [take(row) for row in own]
    rewards: dict[str, list[dict[str, Any]]] = {}  # promotion → its credits' lines
    for row in credited:
        if row.cause == REWARD:  # reason: "promotion CODE" (counting.reward_change)
            promotion = (row.reason or "").removeprefix("promotion ")
            rewards.setdefault(promotion, []).append(take(row))
    takes = [
        Credit(balance_type_id, code, -taken)
        for balance_type_id, (code, taken) in sorted(taken_of.items(), key=lambda i: i[1][0])
        if taken
    ]
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
        .where(_lg.c.transaction_id == original.id, _lg.c.cause.in_((original.kind, REWARD)))
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
            credits=[  # as the ledger rows: one a balance type, rewards' credits with it
                {
                    "balance_type": c.balance_type,
                    "amount": c.amount,
                    "balance": left[c.balance_type_id],
                }
                for c in takes
            ],
            service_provider_id=original.service_provider_id,
            api_key_id=actor.api_key_id,
            actor=actor.name,
        )
    )
    short: dict[str, int] = {}
    for x in [*lines, *(x for credits in rewards.values() for x in credits)]:
        if x["shortfall"]:
            short[x["balance_type"]] = short.get(x["balance_type"], 0) + x["shortfall"]
    shortfall = [{"balance_type": code, "amount": short[code]} for code in sorted(short)]
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
        "rewards": [
            {"promotion": promotion, "credits": credits} for promotion, credits in rewards.items()
        ],
        "counters": uncounted,
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


def _plans_counted(conn: Connection, original: Row[Any]) -> list[Plan]:
    """The promotion plans that counted ``original`` when it was made, in plan order:
    those of its provider running at that moment that apply to its voucher type and
    channel, and to the recipient's product type (as it is now: the one it had before
    the redemption is not kept)."""
    p, s = t.promotions, _s
    at = original.at
    subscriber = conn.execute(
        select(s.c.product_type_id).where(s.c.msisdn == original.recipient_msisdn)
    ).first()
    if subscriber is None:
        return []
    rows = conn.execute(
        select(p)
        .where(
            p.c.service_provider_id == original.service_provider_id,
            p.c.starts_at <= at,
            or_(p.c.ends_at.is_(None), p.c.ends_at > at),
        )
        .order_by(p.c.id)
    ).all()
    plans = [plan_of(row, {}) for row in rows]
    return [
        plan
        for plan in plans
        if plan.applies_to(original.voucher_type_id, original.channel, subscriber.product_type_id)
    ]


_UNCOUNT = (
    update(_pc)
    .where(
        _pc.c.promotion_id == bindparam("promotion"),
        _pc.c.subscriber_id
        == select(_s.c.id).where(_s.c.msisdn == bindparam("msisdn")).scalar_subquery(),
        _pc.c.window_start <= bindparam("at"),
        _pc.c.window_end > bindparam("at"),
    )
    .values(
        value=case((_pc.c.value > bindparam("amount"), _pc.c.value - bindparam("amount")), else_=0),
        updated_at=bindparam("now"),
    )
    .returning(_pc.c.value)
)


def _uncount(
    conn: Connection, original: Row[Any], plans: list[Plan], value: int, now: datetime
) -> list[dict[str, Any]]:
    """Take ``original`` off the recipient's counter of each plan, in plan order (the
    order a redemption locks them in): 1 off a count plan's, its money ``value`` off a
    value plan's, never below 0, and only while the counter's window is still the one the
    redemption counted in (a window since ended or started again keeps its count). The
    counters as they are now, for the answer."""
    lowered = []
    for plan in plans:
        amount = plan.amount(value)
        if amount <= 0:
            continue
        after = conn.execute(
            _UNCOUNT,
            {
                "promotion": plan.id,
                "msisdn": original.recipient_msisdn,
                "at": original.at,
                "amount": amount,
                "now": now,
            },
        ).scalar()
        if after is not None:
            lowered.append({"promotion": plan.code, "amount": -amount, "value": int(after)})
    return lowered


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
