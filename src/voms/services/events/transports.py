"""The senders a relay delivers through: webhooks (signed HTTP POST), NATS, RabbitMQ.

Each takes a destination's next events in order and says how many of them, from the
first, were delivered, and why it stopped before the end. A sender never reorders: a
webhook gets one POST after the other; NATS and RabbitMQ get the events published in
order on one connection, then confirmed together (a flush; publisher confirms).
"""

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import aio_pika
import httpx
import nats
from nats.aio.client import Client as NatsClient

from voms.crypto import body_signature
from voms.services.events.cloudevents import CONTENT_TYPE, SIGNATURE_HEADER

EXCHANGE = "voms.events"
SUBJECT_PREFIX = "voms."
_ERROR_CHARS = 300


@dataclass(frozen=True)
class Outgoing:
    """One delivery ready to go: the event's id and type, its CloudEvent body."""

    delivery_id: int
    event_id: str
    type: str
    body: bytes


@dataclass(frozen=True)
class Sent:
    """How many of the events, from the first, were delivered; why it stopped."""

    count: int
    error: str | None = None


class Sender(Protocol):
    async def send(self, events: Sequence[Outgoing]) -> Sent: ...

    async def close(self) -> None: ...


def _why(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return f"{type(exc).__name__}: {text}"[:_ERROR_CHARS]


class WebhookSender:
    """POSTs each event, signed, and wants a 2xx answer before the next; stops (for now)
    after ``budget_s`` seconds, so that a slow receiver cannot outlast the relay's lease."""

    def __init__(
        self, url: str, secret: str, client: httpx.AsyncClient, budget_s: float = 10.0
    ) -> None:
        self.url = url
        self.secret = secret
        self.client = client
        self.budget_s = budget_s

    async def send(self, events: Sequence[Outgoing]) -> Sent:
        started = time.monotonic()
        for done, event in enumerate(events):
            if done and time.monotonic() - started > self.budget_s:
                return Sent(done)
            headers = {
                "Content-Type": CONTENT_TYPE,
                SIGNATURE_HEADER: body_signature(self.secret, event.body),
                "X-Voms-Event-Id": event.event_id,
                "User-Agent": "OpenVoMS-events",
            }
            try:
                answer = await self._post(event.body, headers)
            except httpx.HTTPError as exc:
                return Sent(done, _why(exc))
            if not 200 <= answer.status_code < 300:
                return Sent(done, f"HTTP {answer.status_code}")
        return Sent(len(events))

    async def _post(self, body: bytes, headers: dict[str, str]) -> httpx.Response:
        try:
            return await self.client.post(self.url, content=body, headers=headers)
        except (httpx.RemoteProtocolError, httpx.ReadError, httpx.WriteError):
            # A kept-alive connection the receiver had closed meanwhile: once more, on a
            # new one, rather than a backoff (at least once allows the repeat).
            return await self.client.post(self.url, content=body, headers=headers)

    async def close(self) -> None:  # the client is the relay's, shared by every webhook
        return None


class NatsSender:
    """Publishes on ``voms.<type>``, then flushes: the server has them all, in order."""

    def __init__(self, url: str, timeout_s: float) -> None:
        self.url = url
        self.timeout_s = timeout_s
        self._client: NatsClient | None = None

    async def _connected(self) -> NatsClient:
        if self._client is None or not self._client.is_connected:
            await self.close()
            self._client = await nats.connect(
                self.url,
                connect_timeout=max(1, int(self.timeout_s)),
                allow_reconnect=False,
                max_reconnect_attempts=0,
            )
        return self._client

    async def send(self, events: Sequence[Outgoing]) -> Sent:
        try:
            client = await self._connected()
            for event in events:
                await client.publish(
                    SUBJECT_PREFIX + event.type,
                    event.body,
                    headers={
                        "Nats-Msg-Id": event.event_id,  # JetStream drops a duplicate
                        "ce-id": event.event_id,
                        "content-type": CONTENT_TYPE,
                    },
                )
            await client.flush(timeout=max(1, int(self.timeout_s)))
        except Exception as exc:  # any failure: none counts as delivered, all go again
            await self.close()
            return Sent(0, _why(exc))
        return Sent(len(events))

    async def close(self) -> None:
        client, self._client = self._client, None
        if client is not None and not client.is_closed:
            try:
                await client.close()
            except Exception:  # closing a broken connection may fail too
                return


class AmqpSender:
    """Publishes to the topic exchange ``voms.events`` with routing key ``<type>``,
    persistent, and waits for the broker's publisher confirms."""

    def __init__(self, url: str, timeout_s: float, budget_s: float = 10.0) -> None:
        self.url = url
        self.timeout_s = timeout_s
        self.budget_s = budget_s
        self._connection: aio_pika.abc.AbstractConnection | None = None
        self._exchange: aio_pika.abc.AbstractExchange | None = None

    async def _exchange_ready(self) -> aio_pika.abc.AbstractExchange:
        if self._exchange is None or self._connection is None or self._connection.is_closed:
            await self.close()
            self._connection = await aio_pika.connect(self.url, timeout=self.timeout_s)
            channel = await self._connection.channel(publisher_confirms=True)
            self._exchange = await channel.declare_exchange(
                EXCHANGE, aio_pika.ExchangeType.TOPIC, durable=True
            )
        return self._exchange

    async def send(self, events: Sequence[Outgoing]) -> Sent:
        # One after the other, each confirmed: publishing them all at once would leave
        # their order to the tasks' scheduling.
        done = 0
        started = time.monotonic()
        try:
            exchange = await self._exchange_ready()
            for event in events:
                if done and time.monotonic() - started > self.budget_s:
                    break  # the rest next cycle, after the lease is renewed
                await exchange.publish(
                    aio_pika.Message(
                        event.body,
                        content_type=CONTENT_TYPE,
                        message_id=event.event_id,
                        type=event.type,
                        delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
                    ),
                    routing_key=event.type,
                    timeout=self.timeout_s,
                )
                done += 1
        except Exception as exc:
            await self.close()
            return Sent(done, _why(exc))
        return Sent(done)

    async def close(self) -> None:
        connection, self._connection, self._exchange = self._connection, None, None
        if connection is not None and not connection.is_closed:
            try:
                await connection.close()
            except Exception:
                return
