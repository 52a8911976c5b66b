"""The frame every call runs in: one unit of work, the record of the attempt, the answer.

A call's work runs in one unit of work; its writes, the record of the attempt and the
stored answer go out with the COMMIT. A refused call is rolled back whole, then
recorded in a short unit of work of its own, so it changes no balance. The request id
is not looked up first (``look_now=False``): storing it fails if it was used before,
and so does a repeated call's work (its voucher is taken); either way the refusal's
unit of work then finds the first answer and gives it again.
"""

from collections.abc import Callable
from datetime import datetime
from typing import Any

from sqlalchemy import insert

from voms.db import tables as t
from voms.domain.errors import RequestIdReused, ResultError
from voms.domain.msisdn import msisdn_is_authenticated
from voms.domain.results import Result
from voms.runtime import Runtime
from voms.services import guessing
from voms.services.events import outbox as events
from voms.services.redemption import blacklist
from voms.services.redemption.requests import AnyRequest, Attempt, Response, channel, request_key
from voms.services.uow import AnsweredBefore, FirstAnswer, UnitOfWork

Work = Callable[[UnitOfWork], Response]
RequestKey = tuple[str, str | None, str]


def run(rt: Runtime, attempt: Attempt, request: AnyRequest, work: Work) -> Response:
    """Run ``work`` in one unit of work, recording the attempt whatever its outcome."""
    key: RequestKey = ("", None, "")
    try:
        attempt.channel = channel(request.channel)
        key = request_key(rt, attempt, request)
        with UnitOfWork(rt) as uow:
            uow.idempotent(*key, look_now=False)
            response = work(uow)
            record(uow, attempt, Result.SUCCESS, response.get("credits", []))
            response["transaction_id"] = attempt.id
            events.attempt_succeeded(
                uow, attempt.kind, attempt.channel, attempt.service_provider_id, response
            )
            uow.answer(response)
            _after_recharge(rt, uow, attempt, response)
            uow.commit()
        return response
    except AnsweredBefore as again:
        return _replay(again.first)
    except (ResultError, RequestIdReused) as refusal:
        return _refused(rt, attempt, refusal, key)


# The attempts that credit a wallet: a redemption, a recharge, a reservation's commit.
_CREDITING = frozenset({"redemption", "recharge", "commit"})


def _after_recharge(rt: Runtime, uow: UnitOfWork, attempt: Attempt, response: Response) -> None:
    """A successful credit is followed by its SMS (the recipient's notice, the
    confirmation), whatever the channel, once it is durable."""
    hook = rt.after_recharge
    if hook is not None and attempt.kind in _CREDITING:
        channel = attempt.channel
        uow.after_commit(lambda: hook(channel, response))


def _refused(
    rt: Runtime, attempt: Attempt, refusal: ResultError | RequestIdReused, key: RequestKey
) -> Response:
    """Record a refused call (and a bad PIN) in a unit of work of its own.

    A request id answered before gets its first answer again, or 5006 when it came with
    another body. Otherwise the refusal is stored under the request id, and raised.
    """
    reused = isinstance(refusal, RequestIdReused)
    error = ResultError(Result.REQUEST_ID_REUSED) if reused else refusal
    assert isinstance(error, ResultError)
    extra = {**error.extra, "transaction_id": attempt.id}
    try:
        with UnitOfWork(rt) as uow:
            if not reused:
                uow.idempotent(*key)
                # Issue 14: a bad PIN counts against the number only where the network
                # gives it; budgets, subscriber-first answer and masking: voms.services.guessing.
                if (
                    attempt.bad_pin
                    and attempt.msisdn is not None
                    and msisdn_is_authenticated(attempt.channel)
                ):
                    blacklist.count_bad_pin(rt, uow, attempt.msisdn)
                error = guessing.after_failure(rt, uow, attempt, error)
                extra = {**error.extra, "transaction_id": attempt.id}
            record(uow, attempt, error.result, [])
            uow.answer(error.result.body(**extra), error.http_status)
            uow.commit()
    except AnsweredBefore as again:
        return _replay(again.first)
    except RequestIdReused as other_body:
        return _refused(rt, attempt, other_body, key)
    raise ResultError(error.result, **extra)


def _replay(first: FirstAnswer) -> Response:
    """The first answer again: returned when it was a success, raised when it was not."""
    response = dict(first.body)
    code = response.pop("result_code", 0)
    response.pop("result_text", None)
    if code == 0:
        return first.body
    raise ResultError(Result.from_code(code), **response)


_INSERT_TRANSACTION = insert(t.transactions)


def record(
    uow: UnitOfWork,
    attempt: Attempt,
    result: Result,
    credits: list[Any],
    at: datetime | None = None,
) -> None:
    """The attempt's row in ``transactions`` (written with the COMMIT)."""
    uow.write(
        _INSERT_TRANSACTION,
        {
            "id": attempt.id,
            "at": at or uow.started_at,
            "kind": attempt.kind,
            "channel": attempt.channel,
            "msisdn": attempt.msisdn,
            "recipient_msisdn": attempt.recipient,
            "serial": attempt.serial,
            "voucher_type_id": attempt.voucher_type_id,
            "scenario": attempt.scenario,
            "result_code": result.code,
            "credits": credits,
            "reservation_id": attempt.reservation_id,
            "service_provider_id": attempt.service_provider_id,
            "api_key_id": attempt.actor.api_key_id,
            "actor": attempt.actor.name,
        },
    )


def success(**extra: Any) -> Response:
    return Result.SUCCESS.body(**extra)


def iso(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None
