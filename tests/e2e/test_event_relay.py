"""The event relay against the real brokers and a real webhook receiver: NATS on 4222
and RabbitMQ on 5672 (`.ci/run` starts them), a `voms events relay` process killed with
SIGKILL in the middle of its deliveries. After a second relay takes over, every event
has arrived at every destination, in the outbox's order, with the id it had before;
nothing is lost. SQLite and PostgreSQL.
"""

import asyncio
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aio_pika
import httpx
import nats
import pytest
from sqlalchemy import func, select

from tests import factories
from tests.e2e.processes import start_http_server
from tests.events_support import SECRET, WebhookReceiver
from voms.config import Settings
from voms.db import tables as t
from voms.runtime import Runtime
from voms.services.auth import CONSOLE
from voms.services.events import EVENT_TYPES, destinations
from voms.services.events.transports import EXCHANGE
from voms.services.redemption import RedemptionRequest, redeem

VOMS = str(Path(sys.executable).with_name("voms"))
NATS_URL = "nats://127.0.0.1:4222"
AMQP_URL = "amqp://guest:guest@127.0.0.1:5672/"
REDEMPTIONS = 40
MSISDN = "254700000001"


def _reachable(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=2).close()
    except OSError:
        return False
    return True


@pytest.fixture(autouse=True)
def _brokers() -> None:
    missing = [name for name, port in (("NATS", 4222), ("RabbitMQ", 5672)) if not _reachable(port)]
    if missing:
        message = f"{' and '.join(missing)} not running (./.ci/run starts them)"
        if os.environ.get("VOMS_TEST_REQUIRE_BROKERS") == "1":
            pytest.fail(message)
        pytest.skip(message)


class Listeners:
    """A NATS subscription to voms.> and a RabbitMQ queue bound to voms.events, kept in
    a thread with its own event loop: what the brokers handed on, in order."""

    def __init__(self) -> None:
        self.amqp: list[tuple[str, str, bytes]] = []
        self.nats_got: list[tuple[str, str, bytes]] = []
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._queue_name = f"voms-test-{uuid.uuid4().hex[:8]}"

    def _run(self, coroutine: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result(30)

    def __enter__(self) -> "Listeners":
        self._thread.start()
        self._run(self._start())
        return self

    def __exit__(self, *exc: object) -> None:
        self._run(self._stop())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()

    async def _start(self) -> None:
        self._nats = await nats.connect(NATS_URL)

        async def on_nats(msg: Any) -> None:
            self.nats_got.append((msg.headers["ce-id"], msg.subject, msg.data))

        await self._nats.subscribe("voms.>", cb=on_nats)
        self._amqp = await aio_pika.connect(AMQP_URL)
        channel = await self._amqp.channel()
        exchange = await channel.declare_exchange(
            EXCHANGE, aio_pika.ExchangeType.TOPIC, durable=True
        )
        queue = await channel.declare_queue(self._queue_name, auto_delete=False)
        await queue.bind(exchange, routing_key="#")

        async def on_amqp(message: aio_pika.abc.AbstractIncomingMessage) -> None:
            async with message.process():
                self.amqp.append(
                    (message.message_id or "", message.routing_key or "", message.body)
                )

        await queue.consume(on_amqp)
        self._queue = queue

    async def _stop(self) -> None:
        await self._nats.close()
        await self._queue.delete(if_unused=False, if_empty=False)
        await self._amqp.close()


@pytest.fixture
def listeners() -> Iterator[Listeners]:
    with Listeners() as running:
        yield running


def _env(settings: Settings) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("VOMS_")}
    env |= {
        "VOMS_DATABASE_URL": settings.database_url,
        "VOMS_KEYS_FILE": str(settings.keys_file),
        "VOMS_NATS_URL": NATS_URL,
        "VOMS_AMQP_URL": AMQP_URL,
        "VOMS_EVENTS_LEASE_S": "2",
        "VOMS_EVENTS_BATCH": "5",
        "VOMS_EVENTS_POLL_S": "0.1",
    }
    return env


def _relay(settings: Settings, log: Path) -> subprocess.Popen[bytes]:
    with log.open("ab") as sink:
        return subprocess.Popen(
            [VOMS, "events", "relay"], env=_env(settings), stdout=sink, stderr=subprocess.STDOUT
        )


def _undelivered(rt: Runtime) -> int:
    q = t.event_deliveries
    with rt.engine.connect() as conn:
        undispatched = conn.execute(
            select(func.count()).where(t.event_outbox.c.dispatched.is_(False))
        ).scalar_one()
        pending = conn.execute(select(func.count()).where(q.c.state != "delivered")).scalar_one()
    return int(undispatched + pending)


def _first_seen(ids: list[str]) -> list[str]:
    seen: dict[str, None] = {}
    for event_id in ids:
        seen.setdefault(event_id, None)
    return list(seen)


def _same_bytes_for_each_id(pairs: list[tuple[str, bytes]]) -> bool:
    by_id: dict[str, bytes] = {}
    return all(by_id.setdefault(event_id, body) == body for event_id, body in pairs)


def test_a_relay_killed_mid_delivery_loses_nothing_and_keeps_the_ids(
    rt: Runtime, settings: Settings, tmp_path: Path, listeners: Listeners
) -> None:
    factories.standard_catalog(rt)
    factories.subscriber(rt, MSISDN)
    with WebhookReceiver() as receiver:
        receiver.delay_s = 0.05  # slow enough to be killed in the middle
        destinations.add_webhook(
            rt,
            CONSOLE,
            destinations.WebhookIn(url=receiver.url, secret=SECRET, events=list(EVENT_TYPES)),
        )
        # (after the webhook: events are written while a destination wants them)
        vouchers = factories.active_batch(rt, count=REDEMPTIONS)
        for _, pin in vouchers:
            redeem(rt, CONSOLE, RedemptionRequest(msisdn=MSISDN, pin=pin, channel="ussd"))
        with rt.engine.connect() as conn:
            outbox = conn.execute(
                select(t.event_outbox.c.id, t.event_outbox.c.type).order_by(t.event_outbox.c.seq)
            ).all()
        expected = [row.id for row in outbox]
        assert len(expected) == REDEMPTIONS + 2  # batch.generated, batch.activated

        log = tmp_path / "relay.log"
        first = _relay(settings, log)
        deadline = time.monotonic() + 60
        while len(receiver.ids()) < 10 and time.monotonic() < deadline:
            assert first.poll() is None, log.read_text()
            time.sleep(0.01)
        first.send_signal(signal.SIGKILL)
        first.wait(10)
        at_kill = len(set(receiver.ids()))
        assert 10 <= at_kill < len(expected), "the kill came after the end"

        second = _relay(settings, log)
        try:
            deadline = time.monotonic() + 90
            while _undelivered(rt) and time.monotonic() < deadline:
                assert second.poll() is None, log.read_text()
                time.sleep(0.1)
            assert _undelivered(rt) == 0, log.read_text()[-3000:]
            time.sleep(0.3)  # the last NATS messages reach the subscriber
        finally:
            second.send_signal(signal.SIGTERM)
            assert second.wait(30) == 0, log.read_text()[-3000:]

        # The webhook: every event, signed, in order, a repeat carrying the same bytes.
        assert receiver.bad_signatures == 0
        assert _first_seen(receiver.ids()) == expected
        assert _same_bytes_for_each_id(list(zip(receiver.ids(), receiver.bodies, strict=True)))
    # NATS, subject voms.<type>; RabbitMQ, routing key <type>: the same, in the same order.
    types = {row.id: row.type for row in outbox}
    assert _first_seen([event_id for event_id, _, _ in listeners.nats_got]) == expected
    assert all(subject == f"voms.{types[i]}" for i, subject, _ in listeners.nats_got)
    assert _same_bytes_for_each_id([(i, body) for i, _, body in listeners.nats_got])
    assert _first_seen([event_id for event_id, _, _ in listeners.amqp]) == expected
    assert all(key == types[i] for i, key, _ in listeners.amqp)
    assert _same_bytes_for_each_id([(i, body) for i, _, body in listeners.amqp])
    # And never a PIN, anywhere.
    everything = b"".join(
        [
            *receiver.bodies,
            *(b for _, _, b in listeners.nats_got),
            *(b for _, _, b in listeners.amqp),
        ]
    )
    assert not any(pin.encode() in everything for _, pin in vouchers)


def test_voms_serve_runs_the_relay(rt: Runtime, settings: Settings, tmp_path: Path) -> None:
    factories.standard_catalog(rt)
    factories.subscriber(rt, MSISDN)
    (_, pin), *_ = factories.active_batch(rt, count=1)
    key = factories.api_key(rt, "channel")
    with WebhookReceiver() as receiver:
        destinations.add_webhook(
            rt,
            CONSOLE,
            destinations.WebhookIn(url=receiver.url, secret=SECRET, events=["voucher.redeemed"]),
        )
        server, url = start_http_server(
            lambda port: [VOMS, "serve", "--port", str(port)],
            cwd=tmp_path,
            env=_env(settings),
            log=lambda port: tmp_path / f"serve-{port}.log",
        )
        try:
            answer = httpx.post(
                f"{url}/api/v1/redemptions",
                headers={"Authorization": f"Bearer {key}"},
                json={"msisdn": MSISDN, "pin": pin},
                timeout=10,
            ).json()
            deadline = time.monotonic() + 30
            while not receiver.received and time.monotonic() < deadline:
                time.sleep(0.05)
        finally:
            server.send_signal(signal.SIGTERM)
            server.wait(30)
        assert [e["data"]["transaction_id"] for e in receiver.received] == [
            answer["transaction_id"]
        ]
        assert receiver.bad_signatures == 0
