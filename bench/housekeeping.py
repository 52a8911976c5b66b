"""Housekeeping at scale on PostgreSQL: expiry counts and archiving of 1,000,000 vouchers
while redemptions run, against the same redemptions with no job running.

    .venv/bin/python bench/housekeeping.py [--vouchers 1000000] [--threads 8]

Creates a scratch database (``voms_bench_hk`` next to VOMS_TEST_POSTGRES_URL's), a live
batch made by the real generator (the PINs being redeemed), and an old batch of
``--vouchers`` vouchers written in SQL (expired a year ago, 30 % of them redeemed a year
ago). A separate process redeems live PINs from ``--threads`` threads through the
redemption service, first alone (baseline), then while the expiry_counts and
voucher_archive jobs run here. Prints job times and redemption rate and latency in each
phase. Figures, not a test.
"""

import argparse
import multiprocessing as mp
import os
import statistics
import sys
import tempfile
import threading
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

DB_NAME = "voms_bench_hk"
MSISDNS = 200


def _prepare(admin_url: str, workdir: Path, old: int, live: int, chunk: int) -> dict[str, Any]:
    import psycopg
    from bench.sql_batches import sql_batch
    from sqlalchemy import text
    from tests import factories

    from voms.config import Settings
    from voms.crypto import Keyring, write_keyring
    from voms.db.engine import make_engine
    from voms.db.migrate import upgrade
    from voms.db.types import utcnow
    from voms.runtime import build_runtime

    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{DB_NAME}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{DB_NAME}"')
    url = admin_url.rsplit("/", 1)[0] + f"/{DB_NAME}"
    keys = workdir / "keys.json"
    write_keyring(keys, Keyring.new())
    settings = Settings(database_url=url, keys_file=keys, housekeeping_chunk_size=chunk)
    engine = make_engine(settings)
    upgrade(engine)
    engine.dispose()
    rt = build_runtime(settings)
    factories.standard_catalog(rt)
    for i in range(MSISDNS):
        factories.subscriber(rt, f"2547{i:08d}")
    print(f"generating {live} live vouchers…", file=sys.stderr)
    pins = [pin for _, pin in factories.active_batch(rt, count=live)]
    print(f"writing {old} old vouchers in SQL…", file=sys.stderr)
    long_ago = utcnow() - timedelta(days=365)
    with rt.engine.begin() as conn:
        batch_id, first = sql_batch(
            conn, old, state="active", expires_at=long_ago, created_at=long_ago
        )
        conn.execute(
            text(
                "INSERT INTO vouchers (serial, batch_id, pin_hash, lookup_key_id, pin_ciphertext,"
                " encryption_key_id, state, redeemed_at, redeemed_by)"
                " SELECT s, :batch, sha256(('old' || s)::bytea), 1, '\\x00'::bytea, 1,"
                " CASE WHEN s % 10 < 3 THEN 'redeemed' ELSE 'available' END,"
                " CASE WHEN s % 10 < 3 THEN CAST(:at AS timestamptz) END,"
                " CASE WHEN s % 10 < 3 THEN '254700000001' END"
                " FROM generate_series(CAST(:first AS bigint), CAST(:last AS bigint)) AS s"
            ),
            {"batch": batch_id, "at": long_ago, "first": first, "last": first + old - 1},
        )
    with rt.engine.connect() as conn:
        conn.execute(text("ANALYZE"))
        conn.commit()
    rt.engine.dispose()
    return {"url": url, "keys": str(keys), "pins": pins, "chunk": chunk}


# --- the redeemer (its own process) -------------------------------------------------------


def _redeemer(url: str, keys: str, pins: list[str], threads: int, phase: Any, results: Any) -> None:
    from voms.config import Settings
    from voms.domain.errors import ResultError
    from voms.runtime import build_runtime
    from voms.services import redemption
    from voms.services.auth import CONSOLE
    from voms.services.redemption import RedemptionRequest

    rt = build_runtime(
        Settings(
            database_url=url, keys_file=Path(keys), db_pool_size=threads, max_bad_pin_attempts=1000
        )
    )
    lock = threading.Lock()
    queue = list(reversed(pins))
    samples: dict[int, list[tuple[float, int]]] = {}

    def work(index: int) -> None:
        msisdn = f"2547{index % MSISDNS:08d}"
        while phase.value >= 0:
            with lock:
                if not queue:
                    return
                pin = queue.pop()
            current = phase.value
            start = time.perf_counter()
            try:
                redemption.redeem(rt, CONSOLE, RedemptionRequest(msisdn=msisdn, pin=pin))
                code = 0
            except ResultError as exc:
                code = exc.result.code
            elapsed = time.perf_counter() - start
            with lock:
                samples.setdefault(current, []).append((elapsed, code))

    workers = [threading.Thread(target=work, args=(i,)) for i in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    results.put(samples)
    rt.engine.dispose()


def _summary(name: str, samples: list[tuple[float, int]], seconds: float) -> str:
    if not samples:
        return f"{name}: no redemptions"
    latencies = sorted(elapsed for elapsed, _ in samples)
    ok = sum(1 for _, code in samples if code == 0)
    p99 = latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))]
    return (
        f"{name}: {len(samples) / seconds:7.0f} redemptions/s over {seconds:5.1f} s, "
        f"p50 {statistics.median(latencies) * 1000:6.1f} ms, p99 {p99 * 1000:6.1f} ms, "
        f"max {latencies[-1] * 1000:6.1f} ms ({ok} ok, {len(samples) - ok} refused)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--vouchers", type=int, default=1_000_000)
    parser.add_argument("--live", type=int, default=60_000, help="PINs for the redeemer")
    parser.add_argument("--threads", type=int, default=8)
    parser.add_argument("--chunk", type=int, default=20_000)
    parser.add_argument("--baseline-seconds", type=float, default=8.0)
    args = parser.parse_args()
    admin_url = os.environ.get(
        "VOMS_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres"
    )

    from sqlalchemy import func, select

    from voms.config import Settings
    from voms.db import tables as t
    from voms.runtime import build_runtime
    from voms.services import housekeeping
    from voms.services.auth import CONSOLE

    with tempfile.TemporaryDirectory() as folder:
        ready = _prepare(admin_url, Path(folder), args.vouchers, args.live, args.chunk)
        ctx = mp.get_context("spawn")
        phase = ctx.Value("i", 0)
        results = ctx.Queue()
        redeemer = ctx.Process(
            target=_redeemer,
            args=(ready["url"], ready["keys"], ready["pins"], args.threads, phase, results),
        )
        rt = build_runtime(
            Settings(
                database_url=ready["url"],
                keys_file=Path(ready["keys"]),
                housekeeping_chunk_size=args.chunk,
                archive_retention_days=180,
            )
        )
        redeemer.start()
        time.sleep(2.0)  # the redeemer's imports and first connections
        phase.value = 1
        time.sleep(args.baseline_seconds)
        phase.value = 2
        started = time.perf_counter()
        expiry = housekeeping.run_job(rt, CONSOLE, "expiry_counts")
        expiry_s = time.perf_counter() - started
        archive_started = time.perf_counter()
        archived = housekeeping.run_job(rt, CONSOLE, "voucher_archive")
        archive_s = time.perf_counter() - archive_started
        during_s = time.perf_counter() - started
        phase.value = -1
        samples = results.get(timeout=120)
        redeemer.join(60)
        with rt.engine.connect() as conn:
            left = conn.execute(select(func.count()).select_from(t.vouchers)).scalar_one()
            in_archive = conn.execute(
                select(func.count()).select_from(t.voucher_archive)
            ).scalar_one()
        rt.engine.dispose()

    print(
        f"PostgreSQL, {os.cpu_count()} CPUs, chunk {args.chunk} rows, "
        f"{args.threads} redeeming threads"
    )
    print(
        f"expiry_counts:   {expiry['rows_affected']:>9,} vouchers counted expired "
        f"in {expiry_s:6.2f} s"
        f" ({expiry['outcome']})"
    )
    print(
        f"voucher_archive: {archived['rows_affected']:>9,} vouchers archived in {archive_s:6.2f} s"
        f" ({archived['rows_affected'] / archive_s:,.0f}/s, {archived['outcome']})"
    )
    print(f"after: {left:,} vouchers live, {in_archive:,} archived")
    print(_summary("redemptions alone      ", samples.get(1, []), args.baseline_seconds))
    print(_summary("redemptions during jobs", samples.get(2, []), during_s))


if __name__ == "__main__":
    main()
