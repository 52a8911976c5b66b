"""Generation benchmark: N vouchers through the real service vs a raw bulk load.

For each database, each in a fresh database and a fresh process: first a raw bulk load
of N rows shaped like vouchers into a table with the same indexes (primary key, UNIQUE
hash, batch index, foreign key), through the same loader and transaction sizes, with
the random bytes made outside the timed part; then ``fill_batch`` of N vouchers (PINs,
keyed hashes, AES-GCM, collision handling, progress, states). Prints seconds, the
ratio, and the peak RSS of the generating process and of its crypto worker.

    .venv/bin/python bench/generate.py [--count 1000000] [--databases sqlite,postgresql]
        [--postgres-url postgresql://postgres@127.0.0.1:5432/postgres] [--workers N]
        [--no-raw]
"""

import argparse
import multiprocessing
import os
import resource
import secrets
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import psycopg
from sqlalchemy import Column, ForeignKey, Index, MetaData, Table

from voms.config import Settings
from voms.crypto import Keyring, write_keyring
from voms.db import bulk
from voms.db import tables as t
from voms.db.engine import make_engine
from voms.db.migrate import upgrade
from voms.runtime import Runtime, build_runtime
from voms.services import generation
from voms.services.auth import CONSOLE

# The tests' catalog factories build the bench's catalog.
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def _raw_table() -> Table:
    """vouchers' shape and indexes under another name."""
    meta = MetaData()
    Table("batches", meta, Column("id", t.batches.c.id.type, primary_key=True))
    columns = [
        Column(
            c.name,
            c.type,
            *([ForeignKey("batches.id")] if c.name == "batch_id" else []),
            primary_key=c.primary_key,
            nullable=c.nullable,
            unique=c.unique,
            autoincrement=False,
        )
        for c in t.vouchers.columns
    ]
    return Table("raw_vouchers", meta, *columns, Index("ix_raw_vouchers_batch_id", "batch_id"))


def _raw_load(rt: Runtime, count: int, batch_id: int) -> float:
    """Seconds to bulk-load ``count`` ready-made rows shaped like vouchers.

    Same loader and transaction sizes as the generator; the random bytes are made
    outside the timed part.
    """
    raw = _raw_table()
    raw.create(rt.engine)
    chunk = rt.settings.generation_chunk_size
    per_transaction = bulk.rows_per_transaction(rt.engine, chunk)
    ciphertext_length = 12 + 14 + 16
    spent = 0.0
    serial = 900_000_000_000
    for first in range(0, count, per_transaction):
        with rt.engine.connect() as conn:
            for start in range(first, min(count, first + per_transaction), chunk):
                size = min(chunk, count - start)
                hashes = secrets.token_bytes(32 * size)
                ciphertexts = secrets.token_bytes(ciphertext_length * size)
                rows = [
                    (
                        serial + start + i,
                        batch_id,
                        hashes[32 * i : 32 * i + 32],
                        1,
                        ciphertexts[ciphertext_length * i : ciphertext_length * (i + 1)],
                        1,
                        "available",
                    )
                    for i in range(size)
                ]
                began = time.perf_counter()
                if not conn.in_transaction():
                    conn.begin()
                bulk.load(conn, raw, generation.VOUCHER_COLUMNS, rows, skip_taken="pin_hash")
                spent += time.perf_counter() - began
            began = time.perf_counter()
            conn.commit()
            spent += time.perf_counter() - began
    return spent


def _fresh_runtime(kind: str, folder: Path, pg_url: str, tag: str) -> tuple[Runtime, str | None]:
    """A migrated, empty database with the bench catalog; the PostgreSQL name to drop."""
    pg_name = None
    if kind == "sqlite":
        url = f"sqlite:///{folder / f'{tag}.db'}"
    else:
        pg_name = f"voms_bench_{tag}_{os.getpid()}"
        with psycopg.connect(pg_url, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{pg_name}"')
            conn.execute(f'CREATE DATABASE "{pg_name}"')
        url = pg_url.rsplit("/", 1)[0] + f"/{pg_name}"
    keys = folder / "keys.json"
    if not keys.exists():
        write_keyring(keys, Keyring.new())
    settings = Settings(database_url=url, keys_file=keys)
    engine = make_engine(settings)
    upgrade(engine)
    engine.dispose()
    rt = build_runtime(settings)
    from tests import factories

    factories.standard_catalog(rt)
    return rt, pg_name


def _measure(kind: str, mode: str, count: int, pg_url: str, workers: int | None, out: Any) -> None:
    """In a child process: one timed run; sends seconds and peak RSS (own, its workers)."""
    with tempfile.TemporaryDirectory(prefix="voms-bench-") as tmp:
        rt, pg_name = _fresh_runtime(kind, Path(tmp), pg_url, mode)
        try:
            batch = generation.create_batch(rt, CONSOLE, voucher_type="TOPUP10", count=count)
            batch_id = batch.batch["batch_id"]
            if mode == "raw":
                seconds = _raw_load(rt, count, batch_id)
            else:
                began = time.perf_counter()
                done = generation.fill_batch(rt, CONSOLE, batch_id, workers=workers)
                seconds = time.perf_counter() - began
                assert done["state"] == "generated"
                assert done["generated_count"] == count
            rt.engine.dispose()
        finally:
            if pg_name is not None:
                with psycopg.connect(pg_url, autocommit=True) as conn:
                    conn.execute(f'DROP DATABASE IF EXISTS "{pg_name}" WITH (FORCE)')
                    conn.execute("CHECKPOINT")  # no checkpoint debt for the next run
    own, workers = (
        resource.getrusage(resource.RUSAGE_SELF),
        resource.getrusage(resource.RUSAGE_CHILDREN),
    )
    out.send(
        (
            seconds,
            own.ru_maxrss / 1024,
            workers.ru_maxrss / 1024,
            own.ru_utime + own.ru_stime,
            workers.ru_utime + workers.ru_stime,
        )
    )


def _in_child(*args: Any) -> tuple[float, float, float, float, float]:
    context = multiprocessing.get_context("spawn")
    receive, send = context.Pipe(duplex=False)
    process = context.Process(target=_measure, args=(*args, send))
    process.start()
    result: tuple[float, float, float, float, float] = receive.recv()
    process.join()
    return result


def run(kind: str, count: int, pg_url: str, workers: int | None, raw: bool) -> None:
    """Raw load first (any later slowdown counts against the generator), then generate."""
    raw_s = None
    if raw:
        raw_s, _, _, raw_cpu, _ = _in_child(kind, "raw", count, pg_url, workers)
        print(
            f"{kind:10} raw bulk load {count:>11,} rows:     {raw_s:8.2f} s "
            f"(CPU of the loading process {raw_cpu:.1f} s)",
            flush=True,
        )
    generate_s, own, children, own_cpu, children_cpu = _in_child(
        kind, "generate", count, pg_url, workers
    )
    ratio = f"; ratio generate/raw = {generate_s / raw_s:.2f}" if raw_s else ""
    print(
        f"{kind:10} generate      {count:>11,} vouchers: {generate_s:8.2f} s "
        f"({count / generate_s:,.0f}/s){ratio}\n"
        f"{'':10} peak RSS: generator process {own:.0f} MB, crypto worker {children:.0f} MB; "
        f"CPU: generator {own_cpu:.1f} s, worker {children_cpu:.1f} s",
        flush=True,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--count", type=int, default=1_000_000)
    parser.add_argument("--databases", default="sqlite,postgresql")
    parser.add_argument(
        "--postgres-url",
        default=os.environ.get(
            "VOMS_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres"
        ),
    )
    parser.add_argument("--workers", type=int, default=None, help="crypto worker processes")
    parser.add_argument("--no-raw", action="store_true", help="skip the raw bulk load")
    args = parser.parse_args()
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    print(
        f"{os.cpu_count()} CPUs, load average {load} (other work skews the figures); "
        f"Python {sys.version.split()[0]}",
        flush=True,
    )
    for kind in args.databases.split(","):
        run(kind.strip(), args.count, args.postgres_url, args.workers, not args.no_raw)


if __name__ == "__main__":
    main()
