"""The event relay's throughput on PostgreSQL: events a second to a webhook, NATS and
RabbitMQ at once, from the outbox to confirmed delivery.

    .venv/bin/python bench/events_relay.py [--events 20000] [--batch 200]

Writes ``--events`` events into a scratch database (``voms_bench_events``) with
``emit`` (set-based, one transaction), adds a webhook (a local receiver that checks
every signature), NATS (127.0.0.1:4222) and RabbitMQ (127.0.0.1:5672) destinations, then
runs one relay until every delivery is delivered and prints the time and the rate.
Figures, not a test.
"""

import argparse
import asyncio
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

ADMIN_URL = os.environ.get(
    "VOMS_BENCH_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres"
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--events", type=int, default=20_000)
    parser.add_argument("--batch", type=int, default=200)
    args = parser.parse_args()

    import psycopg
    from sqlalchemy import func, select
    from tests.events_support import SECRET, WebhookReceiver

    from voms.config import Settings
    from voms.crypto import Keyring, write_keyring
    from voms.db import tables as t
    from voms.db.engine import make_engine
    from voms.db.migrate import upgrade
    from voms.runtime import build_runtime
    from voms.services.auth import CONSOLE
    from voms.services.events import destinations, emit
    from voms.services.events.relay import Relay
    from voms.services.uow import UnitOfWork

    name = "voms_bench_events"
    with psycopg.connect(ADMIN_URL, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{name}"')
    url = ADMIN_URL.rsplit("/", 1)[0] + f"/{name}"
    keys = Path(tempfile.mkdtemp()) / "keys.json"
    write_keyring(keys, Keyring.new())
    engine = make_engine(Settings(database_url=url))
    upgrade(engine)
    engine.dispose()
    settings = Settings(
        database_url=url,
        keys_file=keys,
        events_batch=args.batch,
        nats_url="nats://127.0.0.1:4222",  # type: ignore[arg-type]
        amqp_url="amqp://guest:guest@127.0.0.1:5672/",  # type: ignore[arg-type]
    )
    rt = build_runtime(settings)
    started = time.perf_counter()
    with UnitOfWork(rt) as uow:
        for n in range(args.events):
            emit(uow, "voucher.redeemed", str(n), {"serial": str(n), "msisdn": "254700000001"})
        uow.commit()
    written = time.perf_counter() - started
    print(f"outbox: {args.events} events written in {written:.2f} s")
    with WebhookReceiver() as receiver:
        destinations.add_webhook(
            rt,
            CONSOLE,
            destinations.WebhookIn(url=receiver.url, secret=SECRET, events=["voucher.redeemed"]),
        )
        destinations.sync_environment(rt)
        relay = Relay(rt)

        async def drain() -> None:
            q = t.event_deliveries
            while True:
                await relay.cycle()
                with rt.engine.connect() as conn:
                    left = conn.execute(
                        select(func.count()).where(q.c.state != "delivered")
                    ).scalar_one()
                    new = conn.execute(
                        select(func.count()).where(t.event_outbox.c.dispatched.is_(False))
                    ).scalar_one()
                if not left and not new:
                    break
            await relay.close()

        started = time.perf_counter()
        asyncio.run(drain())
        took = time.perf_counter() - started
        assert receiver.bad_signatures == 0
        assert len(set(receiver.ids())) == args.events
    deliveries = 3 * args.events
    print(
        f"relay: {deliveries} deliveries (webhook, NATS, RabbitMQ) in {took:.1f} s: "
        f"{deliveries / took:,.0f} deliveries/s, {args.events / took:,.0f} events/s to all three"
    )
    rt.engine.dispose()
    with psycopg.connect(ADMIN_URL, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


if __name__ == "__main__":
    main()
