"""Alerts end to end: subscribers' SMS through the real Kannel (bearerbox, smsbox and its
sendsms interface, fakesmsc as the network), operators' e-mail through a real SMTP server
(aiosmtpd), on SQLite and PostgreSQL. Each alert leaves once, whatever runs twice.
"""

import queue
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from email import message_from_bytes
from typing import Any

import pytest
from aiosmtpd.controller import Controller
from pydantic import SecretStr
from sqlalchemy import func, insert, select, update

from tests import factories
from tests.e2e.processes import free_port
from tests.e2e.test_kannel import (
    BEARERBOX,
    FAKESMSC,
    SENDSMS_PASSWORD,
    SHORT_CODE,
    SMSBOX,
    FakeSmsc,
    Ports,
    Process,
    _wait_for_http,
    kannel_conf,
)
from voms.channels import sms
from voms.db import tables as t
from voms.db.types import utcnow
from voms.runtime import Runtime
from voms.services import alerts, lifecycle, wallet
from voms.services.alerts import delivery, detection
from voms.services.auth import CONSOLE
from voms.services.housekeeping import runner
from voms.services.housekeeping.context import JobContext
from voms.services.uow import UnitOfWork

pytestmark = pytest.mark.skipif(
    not all(p.exists() for p in (BEARERBOX, SMSBOX, FAKESMSC)),
    reason="Kannel is not installed (Debian packages kannel and kannel-extras)",
)

ALICE, BOB, CAROL = "254700000101", "254700000102", "254700000103"
QUIET_GRACE_S = 3.0  # how long we wait to be sure nothing more arrives


# --- the real Kannel, once for the module -------------------------------------------------


@dataclass
class Kannel:
    sendsms_url: str
    smsc: FakeSmsc

    def drain(self) -> None:
        while True:
            try:
                self.smsc.received.get_nowait()
            except queue.Empty:
                return

    def expect(self, count: int) -> list[str]:
        """Exactly ``count`` messages: they arrive, then nothing more for a while."""
        got = self.smsc.expect(count, timeout=60) if count else []
        time.sleep(QUIET_GRACE_S)
        extra = []
        while not self.smsc.received.empty():
            extra.append(self.smsc.received.get_nowait())
        assert extra == [], f"more SMS than expected: {extra}"
        return got


@pytest.fixture(scope="module")
def kannel(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Kannel]:
    folder = tmp_path_factory.mktemp("kannel")
    ports = Ports(*(free_port() for _ in range(5)))
    conf = folder / "kannel.conf"
    conf.write_text(kannel_conf(folder, ports))
    started: list[Process | FakeSmsc] = []
    try:
        bearerbox = Process(
            "bearerbox", [str(BEARERBOX), "-v", "2", str(conf)], folder / "bearerbox.out"
        )
        started.append(bearerbox)
        _wait_for_http(f"http://127.0.0.1:{ports.admin}/status", bearerbox)
        smsbox = Process("smsbox", [str(SMSBOX), "-v", "4", str(conf)], folder / "smsbox.out")
        started.append(smsbox)
        _wait_for_http(f"http://127.0.0.1:{ports.sendsms}/", smsbox)
        smsc = FakeSmsc(ports.smsc, folder / "fakesmsc.out")
        started.append(smsc)
        time.sleep(1)  # fakesmsc connects to bearerbox
        yield Kannel(f"http://127.0.0.1:{ports.sendsms}/cgi-bin/sendsms", smsc)
    finally:
        for process in reversed(started):
            process.stop()


# --- the real SMTP server -------------------------------------------------------------------


@dataclass
class Mailbox:
    messages: list[dict[str, Any]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        parsed = message_from_bytes(envelope.content)
        with self.lock:
            self.messages.append(
                {
                    "to": list(envelope.rcpt_tos),
                    "subject": parsed["Subject"],
                    "body": parsed.get_payload(decode=True).decode(),
                }
            )
        return "250 Message accepted for delivery"

    def subjects(self) -> list[str]:
        with self.lock:
            return sorted(m["subject"] for m in self.messages)


@dataclass
class Smtp:
    port: int
    mailbox: Mailbox


@pytest.fixture(scope="module")
def smtp() -> Iterator[Smtp]:
    mailbox = Mailbox()
    port = free_port()
    controller = Controller(mailbox, hostname="127.0.0.1", port=port)
    controller.start()
    try:
        yield Smtp(port, mailbox)
    finally:
        controller.stop()


@pytest.fixture
def wired(rt: Runtime, kannel: Kannel, smtp: Smtp) -> Runtime:
    """The runtime sending through Kannel and the SMTP server, as `voms serve` would."""
    rt.settings = rt.settings.model_copy(
        update={
            "kannel_sendsms_url": kannel.sendsms_url,
            "kannel_sendsms_username": "voms",
            "kannel_sendsms_password": SecretStr(SENDSMS_PASSWORD),
            "kannel_sendsms_from": SHORT_CODE,
            "smtp_host": "127.0.0.1",
            "smtp_port": smtp.port,
            "smtp_to": "noc@example.net",
        }
    )
    sms.install_alerts(rt)
    kannel.drain()
    with smtp.mailbox.lock:
        smtp.mailbox.messages.clear()
    factories.standard_catalog(rt)
    return rt


def sms_line(to: str, text: str) -> str:
    return f"{SHORT_CODE} {to} text {text}"


def run(rt: Runtime, job: str, now: datetime | None = None) -> dict[str, Any]:
    return runner.run(rt, job, now=now)


def configure(rt: Runtime, **body: Any) -> dict[str, Any]:
    return alerts.update_settings(rt, CONSOLE, "ACME", alerts.AlertSettingsIn.model_validate(body))


def credit(
    rt: Runtime, msisdn: str, amount: int, balance_type: str = "CASH", days: int = 0
) -> None:
    wallet.adjust_balance(
        rt,
        CONSOLE,
        msisdn,
        wallet.AdjustmentIn(
            balance_type=balance_type,
            amount=amount,
            reason="test",
            balance_expiry_extension_days=days,
        ),
    )


def states(rt: Runtime) -> dict[str, int]:
    a = t.alerts
    with rt.engine.connect() as conn:
        return {
            row.state: row.n
            for row in conn.execute(select(a.c.state, func.count().label("n")).group_by(a.c.state))
        }


# --- subscribers -------------------------------------------------------------------------


def test_subscriber_alerts_leave_once_through_kannel(wired: Runtime, kannel: Kannel) -> None:
    rt = wired
    soon = utcnow() + timedelta(days=2)
    factories.subscriber(rt, ALICE)
    factories.subscriber(rt, BOB, account_expires_at=soon)
    factories.subscriber(rt, CAROL)
    credit(rt, ALICE, 500)  # below the CASH threshold of 10.00 KES
    credit(rt, CAROL, 5000, days=2)  # plenty, but expiring in 2 days
    credit(rt, BOB, 5000)
    credit(rt, BOB, 10, "SMS")  # SMS has its own threshold: 10 is not below 5
    credit(rt, CAROL, 3, "SMS")  # … but 3 is
    configure(rt, low_balance={"CASH": 1000, "SMS": 5}, expiry_notice_days=3)
    sp_id, bob = _provider_id(rt), _subscriber_id(rt, BOB)
    with UnitOfWork(rt) as uow:  # what the promotions write when they grant a reward
        alerts.reward_granted(
            uow,
            transaction_id="tx-1",
            promotion="TALKFEST",
            service_provider_id=sp_id,
            subscriber_id=bob,
            msisdn=BOB,
            credits=[{"balance_type": "CASH", "amount": 200, "balance": 5200}],
        )
        uow.commit()

    for _ in range(2):  # the second run finds nothing new and sends nothing
        run(rt, "alert_detection")
        run(rt, "alert_delivery")
    date = soon.date().isoformat()
    assert sorted(kannel.expect(5)) == sorted(
        [
            sms_line(ALICE, "Your KES balance is low: 5.00 KES."),
            sms_line(CAROL, "Your SMS balance is low: 3 SMS."),
            sms_line(CAROL, f"Your 50.00 KES expire on {date}. Recharge to keep them."),
            sms_line(BOB, f"Your account expires on {date}. Recharge to keep it."),
            sms_line(BOB, "Bonus from TALKFEST: +2.00 KES, balance 52.00 KES."),
        ]
    )
    assert states(rt) == {"sent": 5}

    # Recharged above the threshold: the occurrence ends; falling below again is a new one.
    credit(rt, ALICE, 1000)
    run(rt, "alert_detection")
    credit(rt, ALICE, -1200)
    run(rt, "alert_detection")
    run(rt, "alert_delivery")
    run(rt, "alert_detection")
    run(rt, "alert_delivery")
    assert kannel.expect(1) == [sms_line(ALICE, "Your KES balance is low: 3.00 KES.")]


def test_an_alert_speaks_the_subscriber_s_language(wired: Runtime, kannel: Kannel) -> None:
    rt = wired
    factories.subscriber(rt, ALICE)
    credit(rt, ALICE, 250)
    with rt.engine.begin() as conn:
        conn.execute(
            update(t.subscribers).where(t.subscribers.c.msisdn == ALICE).values(language="sw")
        )
    configure(rt, low_balance={"CASH": 1000})
    run(rt, "alert_detection")
    run(rt, "alert_delivery")
    assert kannel.expect(1) == [sms_line(ALICE, "Salio lako la KES liko chini: 2.50 KES.")]


def _subscriber_id(rt: Runtime, msisdn: str) -> int:
    s = t.subscribers
    with rt.engine.connect() as conn:
        return int(conn.execute(select(s.c.id).where(s.c.msisdn == msisdn)).scalar_one())


def test_quiet_hours_hold_subscriber_alerts_until_morning(
    wired: Runtime, kannel: Kannel, smtp: Smtp
) -> None:
    rt = wired
    factories.subscriber(rt, ALICE)
    credit(rt, ALICE, 100)
    factories.subscriber(rt, CAROL)
    credit(rt, CAROL, 100)
    # Nairobi is UTC+3: quiet from 21:00 to 08:00 local is 18:00 to 05:00 UTC.
    configure(
        rt,
        low_balance={"CASH": 1000},
        quiet_hours={"from": "21:00", "until": "08:00"},
        time_zone="Africa/Nairobi",
        voucher_stock={"TOPUP10": 5},
    )
    night = datetime(2026, 12, 6, 20, 30, tzinfo=UTC)  # 23:30 in Nairobi
    run(rt, "alert_detection")
    run(rt, "alert_delivery", now=night)
    run(rt, "alert_delivery", now=night + timedelta(hours=8))  # 07:30: still quiet
    kannel.expect(0)
    # Operators are not held: the stock alert went at night.
    assert [m["subject"] for m in smtp.mailbox.messages] == [
        "[OpenVoMS] ACME: voucher stock of TOPUP10 is low"
    ]
    assert states(rt) == {"pending": 2, "sent": 1}

    # Carol recharged during the night: her alert is over and dropped, never sent.
    credit(rt, CAROL, 5000)
    run(rt, "alert_detection")
    run(rt, "alert_delivery", now=night + timedelta(hours=9))  # 08:30 in Nairobi
    assert kannel.expect(1) == [sms_line(ALICE, "Your KES balance is low: 1.00 KES.")]
    assert states(rt) == {"sent": 2, "dropped": 1}


# --- operators ---------------------------------------------------------------------------


def test_operator_alerts_leave_once_by_email(wired: Runtime, smtp: Smtp) -> None:
    rt = wired
    factories.active_batch(rt, "TOPUP10", count=10)
    batch = _last_batch(rt)
    in_five_days = utcnow() + timedelta(days=5)
    with rt.engine.begin() as conn:
        conn.execute(
            update(t.batches).where(t.batches.c.id == batch).values(expires_at=in_five_days)
        )
        # a job that failed an hour ago
        conn.execute(
            insert(t.job_runs).values(
                job="transaction_feed",
                trigger="schedule",
                runner="host:1:abc",
                started_at=utcnow() - timedelta(hours=1),
                finished_at=utcnow() - timedelta(hours=1),
                outcome="failed",
                rows_affected=0,
                detail={},
                error="OSError: disk full",
            )
        )
        # three of ACME's subscribers blacklisted for bad PINs in the last minutes
        for msisdn in (ALICE, BOB, CAROL):
            conn.execute(
                insert(t.pin_attempts).values(
                    msisdn=msisdn,
                    failures=5,
                    blacklisted_until=utcnow() + timedelta(hours=1),
                    updated_at=utcnow() - timedelta(minutes=2),
                )
            )
    for msisdn in (ALICE, BOB, CAROL):
        factories.subscriber(rt, msisdn)
    configure(
        rt,
        voucher_stock={"TOPUP10": 50},
        batch_expiry_days=7,
        blacklist_burst={"count": 3, "minutes": 10},
        operator_emails=["ops@acme.example"],
    )
    for _ in range(2):
        run(rt, "alert_detection")
        run(rt, "alert_delivery")
    got = {m["subject"]: m for m in smtp.mailbox.messages}
    assert sorted(got) == sorted(
        [
            "[OpenVoMS] ACME: voucher stock of TOPUP10 is low",
            f"[OpenVoMS] ACME: batch {batch} expires on {in_five_days.date().isoformat()}",
            "[OpenVoMS] ACME: burst of blacklistings",
            "[OpenVoMS] job transaction_feed failed",
        ]
    )
    assert len(smtp.mailbox.messages) == 4
    stock = got["[OpenVoMS] ACME: voucher stock of TOPUP10 is low"]
    assert stock["to"] == ["ops@acme.example"]
    assert "available in live batches: 10, below the threshold of 50" in stock["body"]
    assert got["[OpenVoMS] job transaction_feed failed"]["to"] == ["noc@example.net"]
    assert "disk full" in got["[OpenVoMS] job transaction_feed failed"]["body"]

    # New stock lifts the type above its threshold; selling down again alerts again.
    factories.active_batch(rt, "TOPUP10", count=50)
    run(rt, "alert_detection")
    lifecycle.change_batch(rt, CONSOLE, _last_batch(rt), "freeze")
    run(rt, "alert_detection")
    run(rt, "alert_delivery")
    assert len(smtp.mailbox.messages) == 5


def _job_run(rt: Runtime, outcome: str, error: str | None = None) -> None:
    with rt.engine.begin() as conn:
        conn.execute(
            insert(t.job_runs).values(
                job="report_rollups",
                trigger="schedule",
                runner="host:1:abc",
                started_at=utcnow(),
                finished_at=utcnow(),
                outcome=outcome,
                rows_affected=0,
                detail={},
                error=error,
            )
        )


def test_a_job_failing_again_and_again_is_one_alert_until_it_succeeds(
    wired: Runtime, smtp: Smtp
) -> None:
    rt = wired
    for attempt in range(3):  # failing every minute
        _job_run(rt, "failed", f"OperationalError: attempt {attempt}")
        run(rt, "alert_detection")
        run(rt, "alert_delivery")
    assert [m["subject"] for m in smtp.mailbox.messages] == ["[OpenVoMS] job report_rollups failed"]
    assert "attempt 0" in smtp.mailbox.messages[0]["body"]
    _job_run(rt, "succeeded")
    run(rt, "alert_detection")
    _job_run(rt, "abandoned", "the runner stopped before the end")
    run(rt, "alert_detection")
    run(rt, "alert_delivery")
    assert [m["subject"] for m in smtp.mailbox.messages][1:] == [
        "[OpenVoMS] job report_rollups abandoned"
    ]


def _last_batch(rt: Runtime) -> int:
    with rt.engine.connect() as conn:
        return int(conn.execute(select(func.max(t.batches.c.id))).scalar_one())


def test_a_failed_send_is_tried_again_later(wired: Runtime, smtp: Smtp) -> None:
    rt = wired
    configure(rt, voucher_stock={"TOPUP10": 5})
    good_port = rt.settings.smtp_port
    rt.settings = rt.settings.model_copy(update={"smtp_port": free_port()})  # nobody there
    run(rt, "alert_detection")
    failed = run(rt, "alert_delivery")
    assert failed["detail"]["failed"] == 1
    assert smtp.mailbox.messages == []
    rt.settings = rt.settings.model_copy(update={"smtp_port": good_port})
    run(rt, "alert_delivery")  # not yet: it waits before trying again
    assert smtp.mailbox.messages == []
    run(rt, "alert_delivery", now=utcnow() + delivery.RETRY_AFTER + timedelta(seconds=1))
    assert len(smtp.mailbox.messages) == 1


# --- once, under two concurrent runs -------------------------------------------------------


def test_two_concurrent_runs_send_each_alert_once(
    wired: Runtime, kannel: Kannel, smtp: Smtp
) -> None:
    """Two runners at once (as two hosts whose leases overlapped): the occurrence key and
    the delivery claim make every alert leave exactly once."""
    rt = wired
    numbers = [f"2547001{n:05d}" for n in range(20)]
    for msisdn in numbers:
        factories.subscriber(rt, msisdn)
        credit(rt, msisdn, 100)
    configure(rt, low_balance={"CASH": 1000}, voucher_stock={"TOPUP10": 5})
    rt.settings = rt.settings.model_copy(update={"housekeeping_chunk_size": 3})

    def both(job: Any) -> None:
        barrier = threading.Barrier(2)
        errors: list[BaseException] = []

        def one() -> None:
            try:
                barrier.wait()
                job(JobContext(rt=rt, now=utcnow(), chunk_size=3))
            except BaseException as exc:
                errors.append(exc)

        threads = [threading.Thread(target=one) for _ in range(2)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(120)
        assert errors == []

    both(detection.detect)
    both(delivery.deliver)
    both(delivery.deliver)
    got = kannel.expect(len(numbers))
    assert sorted(got) == sorted(
        sms_line(msisdn, "Your KES balance is low: 1.00 KES.") for msisdn in numbers
    )
    assert len(smtp.mailbox.messages) == 1
    assert states(rt) == {"sent": len(numbers) + 1}


def test_alerts_are_recorded_once_per_occurrence_key(wired: Runtime) -> None:
    rt = wired
    factories.subscriber(rt, ALICE)
    credit(rt, ALICE, 100)
    configure(rt, low_balance={"CASH": 1000})
    ctx = JobContext(rt=rt, now=utcnow(), chunk_size=10)
    assert detection.detect(ctx) == 1
    assert detection.detect(ctx) == 0
    a = t.alerts
    with rt.engine.connect() as conn:
        keys = conn.execute(select(a.c.occurrence_key)).scalars().all()
    assert keys == [f"low_balance:{_subscriber_id(rt, ALICE)}:{_balance_type_id(rt)}"]


def _balance_type_id(rt: Runtime, code: str = "CASH") -> int:
    bt = t.balance_types
    with rt.engine.connect() as conn:
        return int(conn.execute(select(bt.c.id).where(bt.c.code == code)).scalar_one())


def _provider_id(rt: Runtime, code: str = "ACME") -> int:
    sp = t.service_providers
    with rt.engine.connect() as conn:
        return int(conn.execute(select(sp.c.id).where(sp.c.code == code)).scalar_one())
