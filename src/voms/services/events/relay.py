"""The relay: delivers the outbox's events to every destination, at least once, in order.

One relay delivers at a time across processes and hosts: it holds the ``event_relay``
lease (a ``job_leases`` row), renewed every third of its length; one that dies (even
killed) frees it when it expires, and the next relay starts where the deliveries' states
say, so a delivery that was in flight goes again, with the same event id. A cycle:

1. **fan out**: new outbox rows (in their order) become one pending delivery per
   active destination that wants their type and may see their service provider;
2. **deliver**: each destination sends its queue in the events' order; the first
   failure stops that destination (the events behind it wait: order per subscriber),
   and is retried with exponential backoff (1 s, 2 s, 4 s … ``VOMS_EVENTS_RETRY_MAX_S``);
   a delivery failing for ``VOMS_EVENTS_DEAD_AFTER_S`` (a day) is dead-lettered and the
   queue moves on; an admin can replay it;
3. **prune** (now and then): delivered events older than ``VOMS_EVENTS_KEEP_DAYS``.
"""

import asyncio
import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import httpx
from prometheus_client import Counter
from sqlalchemy import delete, exists, insert, or_, select, update

from voms.db import tables as t
from voms.db.types import utcnow
from voms.db.upsert import insert_if_absent
from voms.runtime import Runtime
from voms.services.events import cloudevents
from voms.services.events.destinations import environment_urls, sync_environment
from voms.services.events.outbox import Listener
from voms.services.events.transports import (
    AmqpSender,
    NatsSender,
    Outgoing,
    Sender,
    Sent,
    WebhookSender,
)
from voms.services.housekeeping.reencryption import current_keyring
from voms.services.housekeeping.runner import new_holder
from voms.services.uow import UnitOfWork

log = logging.getLogger("voms.events")

LEASE = "event_relay"
PRUNE_EVERY_S = 600.0
_l, _o, _d, _q = t.job_leases, t.event_outbox, t.event_destinations, t.event_deliveries

DELIVERED = Counter(
    "voms_events_delivered", "Event deliveries that succeeded, per destination kind", ["kind"]
)
FAILED = Counter(
    "voms_events_failed", "Event delivery attempts that failed, per destination kind", ["kind"]
)
DEAD = Counter("voms_events_dead", "Event deliveries dead-lettered, per destination kind", ["kind"])


@dataclass(frozen=True)
class Destination(Listener):
    """An active destination: what it wants (:class:`Listener`), where it is, its sender."""

    id: int
    kind: str
    url: str
    key: tuple[Any, ...]  # what its sender is made of: a new one when it changes


class Relay:
    """Run with :meth:`run`; :meth:`cycle` does one round (tests call it directly)."""

    def __init__(self, rt: Runtime, holder: str | None = None) -> None:
        self.rt = rt
        self.holder = holder or new_holder()
        self._senders: dict[int, tuple[tuple[Any, ...], Sender]] = {}
        self._client: httpx.AsyncClient | None = None
        self._pruned_at = 0.0
        self._renewed_at = 0.0  # (monotonic) when our lease was last written
        self.holding = False

    # --- the loop --------------------------------------------------------------------------

    async def run(self, stopping: Callable[[], bool]) -> None:
        """Deliver until ``stopping()`` says so; then release the lease."""
        sync_environment(self.rt)
        log.info("event relay %s started", self.holder)
        try:
            while not stopping():
                try:
                    worked = await self.cycle()
                except Exception:
                    log.exception("event relay cycle failed")
                    worked = 0
                if not worked:
                    await asyncio.sleep(self.rt.settings.events_poll_s)
        finally:
            await self.close()
            self.release()

    async def cycle(self) -> int:
        """One round: lease, fan out, deliver, prune. How many deliveries moved."""
        if not self.claim():
            return 0
        moved = self.fan_out()
        destinations = self._destinations()
        results = await asyncio.gather(*(self._deliver(d) for d in destinations))
        moved += sum(results)
        if time.monotonic() - self._pruned_at >= PRUNE_EVERY_S:
            self._pruned_at = time.monotonic()
            self.prune()
        return moved

    async def close(self) -> None:
        for _, sender in self._senders.values():
            await sender.close()
        self._senders.clear()
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    # --- the lease -------------------------------------------------------------------------

    def claim(self) -> bool:
        """Take or renew the relay's lease; False while another relay holds it.

        A lease renewed less than a third of its length ago is not written again: an idle
        relay writes to the database every few seconds, not every poll.
        """
        lease_s = self.rt.settings.events_lease_s
        if self.holding and time.monotonic() - self._renewed_at < lease_s / 3:
            return True
        renewing_at = time.monotonic()
        now = utcnow()
        lease = timedelta(seconds=self.rt.settings.events_lease_s)
        with UnitOfWork(self.rt) as uow:
            conn = uow.conn
            insert_if_absent(conn, _l, {"job": LEASE})
            free = or_(
                _l.c.holder == self.holder, _l.c.expires_at.is_(None), _l.c.expires_at <= now
            )
            taken = conn.execute(
                update(_l)
                .where(_l.c.job == LEASE, free)
                .values(holder=self.holder, expires_at=now + lease)
            ).rowcount
            uow.commit()
        if bool(taken) != self.holding:
            log.info("event relay %s %s the lease", self.holder, "took" if taken else "lost")
        self.holding = bool(taken)
        if self.holding:
            self._renewed_at = renewing_at
        return self.holding

    def release(self) -> None:
        with UnitOfWork(self.rt) as uow:
            uow.conn.execute(
                update(_l)
                .where(_l.c.job == LEASE, _l.c.holder == self.holder)
                .values(holder=None, expires_at=None)
            )
            uow.commit()
        self.holding = False

    # --- fan out ---------------------------------------------------------------------------

    def fan_out(self) -> int:
        """New outbox rows → one pending delivery per destination that wants each."""
        now = utcnow()
        with UnitOfWork(self.rt) as uow:
            conn = uow.conn
            events = conn.execute(
                select(_o.c.seq, _o.c.type, _o.c.service_provider_id)
                .where(_o.c.dispatched.is_(False))
                .order_by(_o.c.seq)
                .limit(self.rt.settings.events_batch)
            ).all()
            if not events:
                return 0
            destinations = self._destinations(conn)
            rows = [
                {
                    "destination_id": d.id,
                    "event_seq": e.seq,
                    "state": "pending",
                    "attempts": 0,
                    "next_attempt_at": now,
                }
                for e in events
                for d in destinations
                if d.wants(e.type, e.service_provider_id)
            ]
            if rows:
                conn.execute(insert(_q), rows)
            conn.execute(
                update(_o).where(_o.c.seq.in_([e.seq for e in events])).values(dispatched=True)
            )
            uow.commit()
        return len(events)

    def _destinations(self, conn: Any = None) -> list[Destination]:
        query = select(_d).where(_d.c.state == "active").order_by(_d.c.id)
        if conn is None:
            with UnitOfWork(self.rt, read_only=True) as uow:
                rows = uow.conn.execute(query).all()
        else:
            rows = conn.execute(query).all()
        return [
            Destination(
                id=row.id,
                kind=row.kind,
                url=row.url,
                events=frozenset(row.events) if row.events is not None else None,
                service_provider_id=row.service_provider_id,
                key=(row.kind, row.url, row.secret_key_id, row.secret),
            )
            for row in rows
        ]

    # --- delivery --------------------------------------------------------------------------

    async def _deliver(self, destination: Destination) -> int:
        """Send the head of one destination's queue; how many deliveries moved."""
        now = utcnow()
        queue = self._queue(destination.id)
        if not queue or queue[0].next_attempt_at > now:
            return 0
        sender = self._sender(destination)
        if sender is None:
            return 0
        source = self.rt.settings.events_source
        outgoing = [
            Outgoing(
                delivery_id=row.id,
                event_id=row.event_id,
                type=row.type,
                body=cloudevents.body(
                    row.event_id, row.type, row.subject, row.at, row.data, source
                ),
            )
            for row in queue
        ]
        sent = await sender.send(outgoing)
        if not self.claim():  # another relay took over meanwhile: leave the states to it
            return 0
        self._record(destination, queue, sent, utcnow())
        return sent.count + (1 if sent.error else 0)

    def _queue(self, destination_id: int) -> Sequence[Any]:
        with UnitOfWork(self.rt, read_only=True) as uow:
            return uow.conn.execute(
                select(
                    _q.c.id,
                    _q.c.attempts,
                    _q.c.next_attempt_at,
                    _q.c.first_failed_at,
                    _o.c.id.label("event_id"),
                    _o.c.type,
                    _o.c.subject,
                    _o.c.at,
                    _o.c.data,
                )
                .join(_o, _o.c.seq == _q.c.event_seq)
                .where(_q.c.destination_id == destination_id, _q.c.state == "pending")
                .order_by(_q.c.event_seq)
                .limit(self.rt.settings.events_batch)
            ).all()

    def _sender(self, destination: Destination) -> Sender | None:
        known = self._senders.get(destination.id)
        if known is not None and known[0] == destination.key:
            return known[1]
        settings = self.rt.settings
        sender: Sender
        if destination.kind == "webhook":
            with UnitOfWork(self.rt, read_only=True) as uow:
                row = uow.conn.execute(
                    select(_d.c.secret, _d.c.secret_key_id).where(_d.c.id == destination.id)
                ).one()
            if row.secret_key_id not in self.rt.keyring.encryption_keys:
                current_keyring(self.rt)  # re-encrypted under a key rotated in since we started
            secret = self.rt.keyring.decrypt(row.secret_key_id, row.secret)
            if self._client is None:
                self._client = httpx.AsyncClient(
                    timeout=settings.webhook_timeout_s, follow_redirects=False
                )
            # Within a third of the lease, so the lease is renewed before it can run out.
            budget = settings.events_lease_s / 4
            sender = WebhookSender(destination.url, secret, self._client, budget)
        else:
            url = environment_urls(self.rt)[destination.kind]
            if url is None:
                return None
            timeout = settings.webhook_timeout_s
            budget = settings.events_lease_s / 4
            sender = (
                NatsSender(url, timeout)
                if destination.kind == "nats"
                else AmqpSender(url, timeout, budget)
            )
        self._senders[destination.id] = (destination.key, sender)
        return sender

    def _record(
        self, destination: Destination, queue: Sequence[Any], sent: Sent, now: datetime
    ) -> None:
        """Mark what went out delivered; back off (or dead-letter) the one that failed."""
        settings = self.rt.settings
        delivered = [row.id for row in queue[: sent.count]]
        with UnitOfWork(self.rt) as uow:
            conn = uow.conn
            if delivered:
                conn.execute(
                    update(_q)
                    .where(_q.c.id.in_(delivered), _q.c.state == "pending")
                    .values(state="delivered", delivered_at=now, attempts=_q.c.attempts + 1)
                )
                DELIVERED.labels(destination.kind).inc(len(delivered))
            if sent.error is not None and sent.count < len(queue):
                failed = queue[sent.count]
                attempts = failed.attempts + 1
                first_failed = failed.first_failed_at or now
                dead = now - first_failed >= timedelta(seconds=settings.events_dead_after_s)
                wait = min(settings.events_retry_max_s, 2 ** min(attempts - 1, 30))
                conn.execute(
                    update(_q)
                    .where(_q.c.id == failed.id, _q.c.state == "pending")
                    .values(
                        state="dead" if dead else "pending",
                        attempts=attempts,
                        first_failed_at=first_failed,
                        next_attempt_at=now + timedelta(seconds=wait),
                        last_error=sent.error[:300],
                    )
                )
                FAILED.labels(destination.kind).inc()
                if dead:
                    DEAD.labels(destination.kind).inc()
                log.warning(
                    "event delivery %d to %s %d failed (attempt %d): %s",
                    failed.id,
                    destination.kind,
                    destination.id,
                    attempts,
                    sent.error,
                )
            uow.commit()

    # --- prune -----------------------------------------------------------------------------

    def prune(self, now: datetime | None = None) -> int:
        """Forget delivered events older than VOMS_EVENTS_KEEP_DAYS; dead letters and
        pending ones stay. How many outbox rows went."""
        cutoff = (now or utcnow()) - timedelta(days=self.rt.settings.events_keep_days)
        with UnitOfWork(self.rt) as uow:
            conn = uow.conn
            conn.execute(delete(_q).where(_q.c.state == "delivered", _q.c.delivered_at < cutoff))
            # An event some delivery still refers to (pending, dead, delivered lately) stays.
            referred = exists().where(_q.c.event_seq == _o.c.seq)
            gone = conn.execute(
                delete(_o).where(_o.c.dispatched.is_(True), _o.c.at < cutoff, ~referred)
            ).rowcount
            uow.commit()
        return int(gone)


def run_forever(rt: Runtime, stop: threading.Event | None = None) -> None:
    """Run a relay until ``stop`` is set (or the process ends): `voms events relay`."""
    stop = stop or threading.Event()
    asyncio.run(Relay(rt).run(stop.is_set))


class RelayThread:
    """The relay inside `voms serve`: a thread with its own event loop."""

    def __init__(self, rt: Runtime) -> None:
        self.rt = rt
        self._stop = threading.Event()
        self._thread = threading.Thread(
            target=run_forever, args=(rt, self._stop), name="voms-event-relay", daemon=True
        )

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = 15.0) -> None:
        self._stop.set()
        self._thread.join(timeout)
