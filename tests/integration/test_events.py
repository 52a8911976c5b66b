"""Events: written in the transaction that causes them, delivered by the relay to a real
webhook receiver (signed, in order, retried, dead-lettered, replayed). SQLite and
PostgreSQL."""

import dataclasses
import json
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import select, update

from tests import factories
from tests.events_support import SECRET, WebhookReceiver, run_cycle
from voms.db import hot
from voms.db import tables as t
from voms.db.types import utcnow
from voms.domain.errors import ResultError
from voms.domain.pins import with_check_digit
from voms.domain.roles import Role
from voms.runtime import Runtime
from voms.services import blacklist, lifecycle, redemption, reversal
from voms.services.auth import CONSOLE, Principal
from voms.services.events import destinations, emit
from voms.services.events import outbox as events_outbox
from voms.services.events.relay import Relay
from voms.services.housekeeping import runner
from voms.services.housekeeping.registry import JOBS
from voms.services.redemption import RedemptionRequest
from voms.services.uow import UnitOfWork

MSISDN = "254700000001"


def _outbox(rt: Runtime) -> list[Any]:
    with rt.engine.connect() as conn:
        return conn.execute(select(t.event_outbox).order_by(t.event_outbox.c.seq)).all()


def _world(rt: Runtime) -> list[tuple[str, str]]:
    factories.standard_catalog(rt)
    factories.subscriber(rt, MSISDN)
    return factories.active_batch(rt, count=6)


def _redeem(rt: Runtime, pin: str) -> dict[str, Any]:
    return redemption.redeem(rt, CONSOLE, RedemptionRequest(msisdn=MSISDN, pin=pin))


def _webhook(rt: Runtime, url: str, types: list[str], sp: str | None = None) -> int:
    body = destinations.WebhookIn(url=url, secret=SECRET, events=types, service_provider=sp)
    return int(destinations.add_webhook(rt, CONSOLE, body)["id"])


def _listen(rt: Runtime) -> None:
    """A webhook for every event (never delivered to here): events are written only while
    a destination wants them."""
    _webhook(rt, "https://listener.invalid/hook", list(events_outbox.EVENT_TYPES))


def _cycle(relay: Relay) -> int:
    return run_cycle(relay)


def test_a_redemption_writes_its_event_with_it_and_never_the_pin(rt: Runtime) -> None:
    _listen(rt)
    vouchers = _world(rt)
    before = len(_outbox(rt))
    serial, pin = vouchers[0]
    answer = _redeem(rt, pin)
    new = _outbox(rt)[before:]
    assert [row.type for row in new] == ["voucher.redeemed"]
    event = new[0]
    assert event.subject == serial
    assert event.data["transaction_id"] == answer["transaction_id"]
    assert event.data["serial"] == serial
    assert event.data["msisdn"] == MSISDN
    assert event.data["channel"] == "rest"
    assert event.data["credits"] == [
        {"balance_type": c["balance_type"], "amount": c["amount"]} for c in answer["credits"]
    ]
    assert pin not in json.dumps(event.data)
    assert event.service_provider_id is not None


def test_a_refused_redemption_writes_no_event(rt: Runtime) -> None:
    _listen(rt)
    vouchers = _world(rt)
    _redeem(rt, vouchers[0][1])
    before = len(_outbox(rt))
    with pytest.raises(ResultError):
        _redeem(rt, vouchers[0][1])  # already redeemed: 2009
    assert len(_outbox(rt)) == before


def test_an_event_of_a_rolled_back_unit_of_work_does_not_exist(rt: Runtime) -> None:
    _listen(rt)
    with UnitOfWork(rt) as uow:
        emit(uow, "job.failed", "x", {"job": "x"})
        # left without commit()
    with UnitOfWork(rt) as uow:
        kept = emit(uow, "job.failed", "y", {"job": "y"})
        uow.commit()
    assert [row.id for row in _outbox(rt)] == [kept]


def test_an_event_may_not_carry_a_pin(rt: Runtime) -> None:
    with UnitOfWork(rt) as uow, pytest.raises(ValueError, match="PIN"):
        emit(uow, "voucher.redeemed", "1", {"serial": "1", "voucher": {"PIN": "123"}})


def test_the_redemption_event_costs_no_round_trip(
    rt: Runtime, monkeypatch: pytest.MonkeyPatch
) -> None:
    if rt.engine.dialect.name != "postgresql":
        pytest.skip("round trips are PostgreSQL's")
    _listen(rt)
    vouchers = _world(rt)
    _redeem(rt, vouchers[0][1])  # statements prepared once
    pipelines: list[int] = []
    real = hot._pipeline
    monkeypatch.setattr(
        hot,
        "_pipeline",
        lambda conn, session, statements, **kw: (
            pipelines.append(len(statements)) or real(conn, session, statements, **kw)
        ),
    )
    _redeem(rt, vouchers[1][1])
    with_event = list(pipelines)
    pipelines.clear()
    monkeypatch.setattr(events_outbox, "attempt_succeeded", lambda *args: None)
    _redeem(rt, vouchers[2][1])
    assert len(with_event) == len(pipelines)  # the INSERT rides along with the COMMIT
    assert sum(with_event) == sum(pipelines) + 1


def test_lifecycle_reversal_and_blacklist_changes_have_their_events(rt: Runtime) -> None:
    _listen(rt)
    vouchers = _world(rt)
    with rt.engine.connect() as conn:
        batch_id = conn.execute(select(t.batches.c.id)).scalar_one()
    lifecycle.change_batch(rt, CONSOLE, batch_id, "freeze", reason="stolen")
    lifecycle.change_batch(rt, CONSOLE, batch_id, "unfreeze")
    lifecycle.change_vouchers(rt, CONSOLE, "freeze", vouchers[5][0])
    answer = _redeem(rt, vouchers[0][1])
    reversal.reverse(
        rt, CONSOLE, answer["transaction_id"], {"reason": "r", "reactivate_voucher": False}
    )
    blacklist.block(rt, CONSOLE, blacklist.BlockIn(msisdn=MSISDN, reason="fraud"))
    rows = _outbox(rt)
    types = [row.type for row in rows]
    assert types[0] == "batch.generated"
    assert types[-7:] == [
        "batch.activated",
        "batch.frozen",
        "batch.unfrozen",
        "voucher.frozen",
        "voucher.redeemed",
        "voucher.reversed",
        "subscriber.blacklisted",
    ]
    frozen = rows[-6]
    assert frozen.data["batch_id"] == batch_id
    assert frozen.data["reason"] == "stolen"
    assert frozen.subject == str(batch_id)
    assert rows[-4].data["serial_from"] == vouchers[5][0]
    assert rows[-2].data["transaction_id"] == answer["transaction_id"]
    assert rows[-1].data == {"msisdn": MSISDN, "reason": "manual", "until": None}
    assert len({row.service_provider_id for row in rows}) == 1


def test_the_relay_delivers_signed_cloudevents_in_order(rt: Runtime) -> None:
    vouchers = _world(rt)
    with WebhookReceiver() as receiver:
        _webhook(rt, receiver.url, ["voucher.redeemed"])
        for _, pin in vouchers[:4]:
            _redeem(rt, pin)
        relay = Relay(rt)
        _cycle(relay)
        expected = [row.id for row in _outbox(rt) if row.type == "voucher.redeemed"]
        assert receiver.ids() == expected
        assert receiver.bad_signatures == 0
        first = receiver.received[0]
        assert first["specversion"] == "1.0"
        assert first["type"] == "voucher.redeemed"
        assert first["source"] == rt.settings.events_source
        assert first["data"]["serial"] == vouchers[0][0]
        assert all(pin not in body.decode() for body in receiver.bodies for _, pin in vouchers)
        assert _cycle(relay) == 0  # nothing twice
        assert len(receiver.ids()) == 4


def test_a_failing_webhook_holds_back_the_events_behind_it_then_gets_them_in_order(
    rt: Runtime,
) -> None:
    vouchers = _world(rt)
    with WebhookReceiver() as receiver:
        hook = _webhook(rt, receiver.url, ["voucher.redeemed"])
        for _, pin in vouchers[:3]:
            _redeem(rt, pin)
        relay = Relay(rt)
        receiver.fail_with = 503
        _cycle(relay)
        page = destinations.list_deliveries(rt, CONSOLE, destination_id=hook)["items"]
        by_state = {d["state"] for d in page}
        assert by_state == {"pending"}
        oldest = min(page, key=lambda d: d["id"])
        assert oldest["attempts"] == 1
        assert oldest["last_error"] == "HTTP 503"
        assert [d["attempts"] for d in page if d["id"] != oldest["id"]] == [0, 0]
        _cycle(relay)  # backing off: not tried again yet
        again = destinations.list_deliveries(rt, CONSOLE, destination_id=hook)["items"]
        assert [d["attempts"] for d in again if d["id"] == oldest["id"]] == [1]
        receiver.fail_with = None
        with rt.engine.begin() as conn:  # the backoff has passed
            conn.execute(update(t.event_deliveries).values(next_attempt_at=utcnow()))
        _cycle(relay)
        expected = [row.id for row in _outbox(rt) if row.type == "voucher.redeemed"]
        assert receiver.ids() == expected


def test_a_delivery_failing_for_a_day_is_dead_lettered_and_can_be_replayed(rt: Runtime) -> None:
    vouchers = _world(rt)
    with WebhookReceiver() as receiver:
        hook = _webhook(rt, receiver.url, ["voucher.redeemed"])
        _redeem(rt, vouchers[0][1])
        _redeem(rt, vouchers[1][1])
        relay = Relay(rt)
        receiver.fail_with = 500
        _cycle(relay)
        with rt.engine.begin() as conn:  # it has been failing for a day
            conn.execute(
                update(t.event_deliveries).values(
                    first_failed_at=utcnow() - timedelta(days=1, seconds=1),
                    next_attempt_at=utcnow(),
                )
            )
        _cycle(relay)
        dead = destinations.list_deliveries(rt, CONSOLE, state="dead")["items"]
        assert len(dead) == 1
        assert dead[0]["attempts"] == 2
        receiver.fail_with = None
        _cycle(relay)  # the queue moved on past the dead letter
        second = [row.id for row in _outbox(rt) if row.type == "voucher.redeemed"][1]
        assert receiver.ids() == [second]
        replayed = destinations.replay(rt, CONSOLE, destination_id=hook)
        assert replayed["replayed"] == 1
        _cycle(relay)
        assert receiver.ids() == [second, dead[0]["event_id"]]
        assert destinations.list_deliveries(rt, CONSOLE, state="dead")["items"] == []


def test_a_providers_webhook_hears_only_its_providers_events(rt: Runtime) -> None:
    vouchers = _world(rt)
    factories.standard_catalog(rt, "OTHER")
    with WebhookReceiver() as mine, WebhookReceiver() as theirs:
        _webhook(rt, mine.url, ["voucher.redeemed"], sp="ACME")
        _webhook(rt, theirs.url, ["voucher.redeemed"], sp="OTHER")
        _redeem(rt, vouchers[0][1])
        _cycle(Relay(rt))
        assert len(mine.ids()) == 1
        assert theirs.ids() == []
    other_admin = Principal(name="other", role=Role.ADMIN, service_provider_id=2)
    seen = destinations.list_deliveries(rt, other_admin)["items"]
    assert seen == []


def test_one_relay_at_a_time_holds_the_lease(rt: Runtime) -> None:
    first, second = Relay(rt), Relay(rt)
    assert first.claim()
    assert not second.claim()
    first.release()
    assert second.claim()


def test_bad_pins_that_blacklist_a_number_raise_its_event(rt: Runtime) -> None:
    _listen(rt)
    vouchers = _world(rt)
    unknown = with_check_digit("9" * (len(vouchers[0][1]) - 1))
    for _ in range(rt.settings.max_bad_pin_attempts):
        with pytest.raises(ResultError):
            redemption.redeem(
                rt, CONSOLE, RedemptionRequest(msisdn=MSISDN, pin=unknown, channel="ussd")
            )
    (event,) = [row for row in _outbox(rt) if row.type == "subscriber.blacklisted"]
    assert (event.subject, event.data["reason"]) == (MSISDN, "bad_pins")
    assert event.data["until"] is not None
    assert unknown not in json.dumps(event.data)


def test_reservations_raise_reserved_then_committed_or_revoked(rt: Runtime) -> None:
    _listen(rt)
    vouchers = _world(rt)
    held = redemption.reserve(rt, CONSOLE, RedemptionRequest(msisdn=MSISDN, pin=vouchers[0][1]))
    redemption.commit(rt, CONSOLE, held["reservation_id"])
    other = redemption.reserve(rt, CONSOLE, RedemptionRequest(msisdn=MSISDN, pin=vouchers[1][1]))
    redemption.revoke(rt, CONSOLE, other["reservation_id"])
    rows = [row for row in _outbox(rt) if row.type.startswith("voucher.")]
    assert [(row.type, row.data["reservation_id"]) for row in rows] == [
        ("voucher.reserved", held["reservation_id"]),
        ("voucher.committed", held["reservation_id"]),
        ("voucher.reserved", other["reservation_id"]),
        ("voucher.revoked", other["reservation_id"]),
    ]
    assert rows[1].data["serial"] == vouchers[0][0]


def test_an_event_nobody_listens_to_is_not_written(rt: Runtime) -> None:
    vouchers = _world(rt)
    _redeem(rt, vouchers[0][1])
    assert _outbox(rt) == []
    hook = _webhook(rt, "https://listener.invalid/hook", ["voucher.redeemed"])
    _redeem(rt, vouchers[1][1])  # the webhook is heard of at once in this process
    _redeem(rt, vouchers[2][1])
    assert [row.type for row in _outbox(rt)] == ["voucher.redeemed"] * 2
    with UnitOfWork(rt) as uow:  # a type the webhook does not want
        assert emit(uow, "job.failed", "x", {"job": "x"}) is None
        uow.commit()
    destinations.remove_webhook(rt, CONSOLE, hook)
    _redeem(rt, vouchers[3][1])
    assert len(_outbox(rt)) == 2


def test_a_failed_job_raises_its_event(rt: Runtime, monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(ctx: object) -> int:
        raise RuntimeError("disk full")

    _listen(rt)
    job = JOBS["blacklist_release"]
    monkeypatch.setitem(JOBS, job.name, dataclasses.replace(job, run=broken))
    outcome = runner.run(rt, job.name)
    assert outcome["outcome"] == "failed"
    (event,) = _outbox(rt)
    assert (event.type, event.subject, event.service_provider_id) == ("job.failed", job.name, None)
    assert event.data == {
        "job": job.name,
        "run_id": outcome["run_id"],
        "error": "RuntimeError: disk full",
    }
