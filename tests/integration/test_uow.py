"""The unit of work: rolled back unless committed, the one idempotency rule, side effects
only after the commit."""

from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from sqlalchemy import func, insert, select

from voms.db import tables as t
from voms.db.types import utcnow
from voms.domain.errors import NotFound, RequestIdReused
from voms.runtime import Runtime
from voms.services.uow import AnsweredBefore, UnitOfWork

_k = t.idempotency_keys


def _row(request_id: str) -> dict[str, object]:
    return {
        "scope": "other",
        "request_id": request_id,
        "request_hash": "h" * 64,
        "status_code": 200,
        "response": {},
        "created_at": utcnow(),
    }


def _count(rt: Runtime) -> int:
    with UnitOfWork(rt, read_only=True) as uow:
        return int(uow.conn.execute(select(func.count()).select_from(_k)).scalar_one())


def test_leaving_without_commit_rolls_everything_back(rt: Runtime) -> None:
    with UnitOfWork(rt) as uow:
        uow.write(insert(_k), _row("a"))
        uow.conn.execute(insert(_k), _row("b"))
    assert _count(rt) == 0


def test_an_error_rolls_back_and_is_raised(rt: Runtime) -> None:
    def refused() -> None:
        with UnitOfWork(rt) as uow:
            uow.write(insert(_k), _row("a"))
            raise NotFound("nothing")

    with pytest.raises(NotFound):
        refused()
    assert _count(rt) == 0


def _answer_once(rt: Runtime, request_id: str, fingerprint: str, body: dict[str, Any]) -> Any:
    try:
        with UnitOfWork(rt) as uow:
            uow.idempotent("scope", request_id, fingerprint)
            uow.answer(body, 201)
            uow.commit()
        return body
    except AnsweredBefore as again:
        return ("again", again.first.status_code, again.first.body)


def test_same_request_id_and_body_gives_the_first_answer_again(rt: Runtime) -> None:
    assert _answer_once(rt, "r1", "same", {"batch_id": 1}) == {"batch_id": 1}
    assert _answer_once(rt, "r1", "same", {"batch_id": 2}) == ("again", 201, {"batch_id": 1})


def test_same_request_id_with_another_body_is_a_conflict(rt: Runtime) -> None:
    _answer_once(rt, "r1", "first body", {"batch_id": 1})
    with pytest.raises(RequestIdReused) as refused:
        _answer_once(rt, "r1", "other body", {"batch_id": 2})
    assert refused.value.http_status == 409


def test_a_request_id_is_scoped_to_its_caller(rt: Runtime) -> None:
    _answer_once(rt, "r1", "same", {"batch_id": 1})
    with UnitOfWork(rt) as uow:
        uow.idempotent("another caller", "r1", "same")  # nothing raised
        uow.commit()


def test_a_request_id_stored_by_a_concurrent_call_is_found_at_the_commit(rt: Runtime) -> None:
    # look_now=False: no lookup first; the first answer comes from the failed COMMIT.
    _answer_once(rt, "r1", "same", {"n": 1})

    def unlooked(fingerprint: str) -> None:
        with UnitOfWork(rt) as uow:
            uow.idempotent("scope", "r1", fingerprint, look_now=False)
            uow.answer({"n": 2})
            uow.commit()

    with pytest.raises(AnsweredBefore) as again:
        unlooked("same")
    assert again.value.first.body == {"n": 1}
    with pytest.raises(RequestIdReused):
        unlooked("another")


def test_side_effects_run_after_the_commit_only(rt: Runtime) -> None:
    seen: list[int] = []

    def counted() -> None:
        seen.append(_count(rt))  # a new connection sees the committed row

    with UnitOfWork(rt) as uow:
        uow.write(insert(_k), _row("a"))
        uow.after_commit(counted)
        assert seen == []
        uow.commit()
    assert seen == [1]
    with UnitOfWork(rt) as uow:
        uow.after_commit(counted)
    assert seen == [1]  # rolled back: never run


def test_a_failing_side_effect_does_not_undo_the_commit(rt: Runtime) -> None:
    def broken() -> None:
        raise OSError("the SMS gateway is down")

    with UnitOfWork(rt) as uow:
        uow.write(insert(_k), _row("a"))
        uow.after_commit(broken)
        uow.commit()
    assert _count(rt) == 1


def test_concurrent_calls_with_one_request_id_answer_alike(rt: Runtime) -> None:
    def call(n: int) -> Any:
        return _answer_once(rt, "shared", "same", {"n": n})

    with ThreadPoolExecutor(4) as pool:
        answers = list(pool.map(call, range(8)))
    firsts = [a for a in answers if isinstance(a, dict)]
    assert len(firsts) == 1
    assert all(a == firsts[0] or a == ("again", 201, firsts[0]) for a in answers)
