"""Range operations at scale: activate, and change the expiry of, 1,000,000 vouchers that
are part of a larger inactive batch, on SQLite and on PostgreSQL.

    .venv/bin/python bench/ranges.py [--vouchers 1000000] [--margin 100000]
        [--only sqlite|postgresql]

Writes one inactive batch of ``--vouchers`` + twice ``--margin`` vouchers in SQL (a scratch
PostgreSQL database ``voms_bench_ranges`` next to VOMS_TEST_POSTGRES_URL's, and a temporary
SQLite file), then times through the services, each one transaction:

1. activate the middle ``--vouchers`` (they move into an active part of the batch);
2. a new expiry for that same range (now a whole part: one row);
3. a new expiry for a range of the same size shifted by half (half from the part, half
   from the batch: both halves move);
4. for comparison, freeze the first range voucher by voucher (the existing range call).

Figures, not a test.
"""

import argparse
import os
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

DB_NAME = "voms_bench_ranges"
PG_ADMIN_URL = os.environ.get(
    "VOMS_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres"
)


def _database(kind: str, workdir: Path) -> str:
    if kind == "sqlite":
        return f"sqlite:///{workdir / 'bench.db'}"
    import psycopg

    with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{DB_NAME}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{DB_NAME}"')
    return PG_ADMIN_URL.rsplit("/", 1)[0] + f"/{DB_NAME}"


def _stock(rt: Any, count: int) -> tuple[int, int]:
    """An inactive batch of ``count`` vouchers written in SQL; (batch id, first serial)."""
    from bench.sql_batches import sql_batch
    from sqlalchemy import text

    from voms.db.types import utcnow

    now = utcnow()
    with rt.engine.begin() as conn:
        batch_id, first = sql_batch(
            conn, count, state="generated", expires_at=now + timedelta(days=365), created_at=now
        )
        if conn.dialect.name == "sqlite":
            series = (
                "WITH RECURSIVE s(n) AS (SELECT :first UNION ALL SELECT n + 1 FROM s"
                " WHERE n < :last) SELECT n, :batch, randomblob(32), 1, x'00', 1, 'available'"
                " FROM s"
            )
        else:
            series = (
                "SELECT s, :batch, sha256(('r' || s)::bytea), 1, '\\x00'::bytea, 1, 'available'"
                " FROM generate_series(CAST(:first AS bigint), CAST(:last AS bigint)) AS s"
            )
        conn.execute(
            text(
                "INSERT INTO vouchers (serial, batch_id, pin_hash, lookup_key_id,"
                " pin_ciphertext, encryption_key_id, state) " + series
            ),
            {"batch": batch_id, "first": first, "last": first + count - 1},
        )
    with rt.engine.connect() as conn:
        conn.execute(text("ANALYZE"))
        conn.commit()
    return int(batch_id), int(first)


def _timed(label: str, call: Callable[[], dict[str, Any]]) -> float:
    started = time.perf_counter()
    answer = call()
    took = time.perf_counter() - started
    print(f"  {label}: {answer['affected']:,} vouchers in {took:.2f} s", flush=True)
    return took


def run(kind: str, vouchers: int, margin: int) -> None:
    from tests import factories

    from voms.config import Settings
    from voms.crypto import Keyring, write_keyring
    from voms.db.engine import make_engine
    from voms.db.migrate import upgrade
    from voms.db.types import utcnow
    from voms.runtime import build_runtime
    from voms.services import lifecycle, ranges
    from voms.services.auth import CONSOLE

    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        keys = workdir / "keys.json"
        write_keyring(keys, Keyring.new())
        settings = Settings(database_url=_database(kind, workdir), keys_file=keys)
        engine = make_engine(settings)
        upgrade(engine)
        engine.dispose()
        rt = build_runtime(settings)
        factories.standard_catalog(rt)
        total = vouchers + 2 * margin
        print(f"{kind}: writing an inactive batch of {total:,} vouchers…", flush=True)
        _, first = _stock(rt, total)
        low, high = first + margin, first + margin + vouchers - 1
        later = utcnow() + timedelta(days=730)
        _timed(
            "activate a range (split off into a part)",
            lambda: ranges.activate_range(rt, CONSOLE, low, high),
        )
        _timed(
            "new expiry of that range (the whole part: one row)",
            lambda: ranges.amend_range(rt, CONSOLE, low, high, later),
        )
        shift = vouchers // 2
        _timed(
            "new expiry of a range half in the part, half in the batch",
            lambda: ranges.amend_range(
                rt, CONSOLE, low + shift, high + shift, later + timedelta(days=1)
            ),
        )
        _timed(
            "for comparison, freeze the first range voucher by voucher",
            lambda: lifecycle.change_vouchers(rt, CONSOLE, "freeze", low, high),
        )
        rt.engine.dispose()
    if kind == "postgresql":
        import psycopg

        with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{DB_NAME}" WITH (FORCE)')


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--vouchers", type=int, default=1_000_000)
    parser.add_argument("--margin", type=int, default=100_000)
    parser.add_argument("--only", choices=("sqlite", "postgresql"))
    args = parser.parse_args()
    for kind in ("sqlite", "postgresql"):
        if args.only in (None, kind):
            run(kind, args.vouchers, args.margin)


if __name__ == "__main__":
    main()
