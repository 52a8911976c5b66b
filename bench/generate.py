"""Generation benchmark: N vouchers through the real service vs a raw bulk load.

For each database: a fresh, migrated database; ``generate_batch`` of N vouchers (PINs,
keyed hashes, AES-GCM, collision handling, progress, states); then a raw bulk load of N
rows of the same shape into a table with the same indexes (primary key, UNIQUE hash,
batch index, foreign key) through the same loader, with pre-made random bytes and only
the load timed. Prints seconds, the ratio, and peak RSS (this process and its workers).

    .venv/bin/python bench/generate.py [--count 1000000] [--databases sqlite,postgresql]
        [--postgres-url postgresql://postgres@127.0.0.1:5432/postgres] [--workers N]
"""

import argparse
import os
import resource
import secrets
import sys
import tempfile
import time
from pathlib import Path

import psycopg
from sqlalchemy import Column, ForeignKey, Index, MetaData, Table

from voms.config import Settings
from voms.crypto import Keyring, write_keyring
from voms.db import bulk
from voms.db import tables as t
from voms.db.engine import make_engine
from voms.db.migrate import upgrade
from voms.runtime import Runtime, build_runtime
from voms.services import catalog, generation
from voms.services.auth import CONSOLE


def _catalog(rt: Runtime) -> None:
    catalog.create_service_provider(
        rt, CONSOLE, catalog.ServiceProviderIn(code="BENCH", name="Bench")
    )
    catalog.create_balance_type(
        rt,
        CONSOLE,
        catalog.BalanceTypeIn(code="CASH", name="Cash", unit="cent", service_provider="BENCH"),
    )
    catalog.create_voucher_type(
        rt,
        CONSOLE,
        catalog.VoucherTypeIn.model_validate(
            {
                "code": "BENCH14",
                "name": "Bench",
                "service_provider": "BENCH",
                "pin_length": 14,
                "scenarios": [
                    {
                        "number": 1,
                        "name": "10",
                        "default": True,
                        "credits": [{"balance_type": "CASH", "amount": 1000}],
                    }
                ],
            }
        ),
    )


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
    return Table(
        "raw_vouchers", meta, *columns, Index("ix_raw_vouchers_batch_id", "batch_id")
    )


def _raw_load(rt: Runtime, count: int, batch_id: int) -> float:
    """Seconds to bulk-load ``count`` ready-made rows shaped like vouchers."""
    raw = _raw_table()
    raw.create(rt.engine)
    chunk = rt.settings.generation_chunk_size
    ciphertext_length = 12 + 14 + 16
    spent = 0.0
    serial = 900_000_000_000
    for start in range(0, count, chunk):
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
        with rt.engine.begin() as conn:
            bulk.load(conn, raw, generation.VOUCHER_COLUMNS, rows)
        spent += time.perf_counter() - began
    return spent


def _peak_rss_mb() -> tuple[float, float]:
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    workers = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    return own, workers


def _database(kind: str, folder: Path, pg_url: str) -> tuple[str, str | None]:
    if kind == "sqlite":
        return f"sqlite:///{folder / 'bench.db'}", None
    name = f"voms_bench_{os.getpid()}"
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}"')
        conn.execute(f'CREATE DATABASE "{name}"')
    return pg_url.rsplit("/", 1)[0] + f"/{name}", name


def _drop(pg_url: str, name: str) -> None:
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def run(kind: str, count: int, pg_url: str, workers: int | None, raw: bool) -> None:
    with tempfile.TemporaryDirectory(prefix="voms-bench-") as tmp:
        folder = Path(tmp)
        url, pg_name = _database(kind, folder, pg_url)
        try:
            keys = folder / "keys.json"
            write_keyring(keys, Keyring.new())
            settings = Settings(database_url=url, keys_file=keys)
            engine = make_engine(settings)
            upgrade(engine)
            engine.dispose()
            rt = build_runtime(settings)
            _catalog(rt)
            began = time.perf_counter()
            created = generation.create_batch(rt, CONSOLE, voucher_type="BENCH14", count=count)
            batch = generation.fill_batch(
                rt, CONSOLE, created.batch["batch_id"], workers=workers
            )
            generate_s = time.perf_counter() - began
            assert batch["state"] == "generated"
            assert batch["generated_count"] == count
            own, children = _peak_rss_mb()
            print(
                f"{kind:10} generate {count:>10,} vouchers: {generate_s:7.2f} s "
                f"({count / generate_s:,.0f}/s); peak RSS main {own:.0f} MB, "
                f"workers {children:.0f} MB",
                flush=True,
            )
            if raw:
                raw_s = _raw_load(rt, count, batch["batch_id"])
                print(
                    f"{kind:10} raw bulk load {count:>10,} rows:  {raw_s:7.2f} s; "
                    f"ratio generate/raw = {generate_s / raw_s:.2f}",
                    flush=True,
                )
            rt.engine.dispose()
        finally:
            if pg_name is not None:
                _drop(pg_url, pg_name)


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
    print(f"{os.cpu_count()} CPUs; Python {sys.version.split()[0]}", flush=True)
    for kind in args.databases.split(","):
        run(kind.strip(), args.count, args.postgres_url, args.workers, not args.no_raw)


if __name__ == "__main__":
    main()
