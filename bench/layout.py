"""The vouchers layout: a redemption's voucher update on full pages against pages 85 % full.

    .venv/bin/python bench/layout.py [--rows 5000000] [--updates 20000] [--rounds 2]

In a scratch PostgreSQL database (``voms_bench_layout`` next to VOMS_TEST_POSTGRES_URL's),
two tables shaped like ``vouchers`` (the same columns and indexes: primary key on the
serial, UNIQUE random 32-byte lookup hash, batch index), one with the default fill
factor (100) and one with 85 (migration 0006_scale), each filled with ``--rows`` rows in
SQL and vacuumed. Then, alternately, pgbench runs ``--updates`` single-row transactions
on each, the redemption's UPDATE of a random voucher, and the bench prints per table:
transactions per second, WAL bytes per update and the share of HOT updates (no index
entry written). WAL bytes and the HOT share do not depend on the host's load; the rate
does. Figures, not a test.
"""

import argparse
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import psycopg

DB_NAME = "voms_bench_layout"
UPDATE = """\\set s random(1, {rows})
UPDATE {table} SET state = 'redeemed', state_changed_at = now(), redeemed_at = now(),
  redeemed_by = '254700000001' WHERE serial = :s AND state = 'available';
"""


def _build(conn: psycopg.Connection, table: str, fillfactor: int, rows: int) -> None:
    conn.execute(f"DROP TABLE IF EXISTS {table}")
    conn.execute(
        f"""CREATE TABLE {table} (
          serial bigint PRIMARY KEY, batch_id integer NOT NULL, pin_hash bytea NOT NULL UNIQUE,
          lookup_key_id smallint NOT NULL, pin_ciphertext bytea NOT NULL,
          encryption_key_id smallint NOT NULL, state varchar(10) NOT NULL,
          state_changed_at timestamptz, redeemed_at timestamptz, redeemed_by varchar(15)
        ) WITH (fillfactor = {fillfactor})"""
    )
    conn.execute(f"CREATE INDEX ix_{table}_batch_id ON {table} (batch_id)")
    for first in range(1, rows + 1, 1_000_000):
        last = min(rows, first + 999_999)
        conn.execute(
            f"INSERT INTO {table} SELECT s, 1 + s / 10000000,"
            " sha256(int8send(s) || int8send((random() * 9e18)::int8)), 1,"
            " sha256(int8send(-s)) || substr(sha256(int8send(s + 1)), 1, 10), 1, 'available'"
            f" FROM generate_series({first}::bigint, {last}::bigint) AS s"
        )
    conn.execute(f"VACUUM ANALYZE {table}")


def _run(
    url: str, conn: psycopg.Connection, table: str, rows: int, updates: int, work: Path
) -> dict[str, float]:
    script = work / f"{table}.sql"
    script.write_text(UPDATE.format(rows=rows, table=table))
    conn.execute("CHECKPOINT")
    stats = f"SELECT n_tup_upd, n_tup_hot_upd FROM pg_stat_user_tables WHERE relname = '{table}'"
    conn.execute("SELECT pg_stat_clear_snapshot()")
    before_upd, before_hot = conn.execute(stats).fetchone()  # type: ignore[misc]
    (lsn_before,) = conn.execute("SELECT pg_current_wal_lsn()").fetchone()  # type: ignore[misc]
    clients = 8
    began = time.perf_counter()
    subprocess.run(
        [
            "pgbench",
            "--no-vacuum",
            "--protocol=prepared",
            f"--client={clients}",
            "--jobs=2",
            f"--transactions={updates // clients}",
            "-f",
            str(script),
            url,
        ],
        check=True,
        capture_output=True,
    )
    seconds = time.perf_counter() - began
    (wal,) = conn.execute(  # type: ignore[misc]
        "SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), %s)", (lsn_before,)
    ).fetchone()
    time.sleep(1.5)  # the backends' statistics reach the shared counters
    conn.execute("SELECT pg_stat_clear_snapshot()")
    after_upd, after_hot = conn.execute(stats).fetchone()  # type: ignore[misc]
    done = clients * (updates // clients)
    changed = after_upd - before_upd
    return {
        "tps": done / seconds,
        "wal_per_update": float(wal) / done,
        "hot_share": (after_hot - before_hot) / changed if changed else 0.0,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=5_000_000)
    parser.add_argument("--updates", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    admin = os.environ.get(
        "VOMS_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres"
    )
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{DB_NAME}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{DB_NAME}"')
    url = admin.rsplit("/", 1)[0] + f"/{DB_NAME}"
    work = Path(tempfile.mkdtemp(prefix="voms-layout-"))
    try:
        with psycopg.connect(url, autocommit=True) as conn:
            tables = {"full_pages": 100, "fillfactor_85": 85}
            for table, fillfactor in tables.items():
                began = time.perf_counter()
                _build(conn, table, fillfactor, args.rows)
                (size,) = conn.execute(  # type: ignore[misc]
                    "SELECT pg_total_relation_size(%s)", (table,)
                ).fetchone()
                print(
                    f"{table}: {args.rows:,} rows in {time.perf_counter() - began:.0f} s, "
                    f"{size / args.rows:.0f} B/row with indexes",
                    flush=True,
                )
            for number in range(1, args.rounds + 1):
                for table in tables:
                    figures = _run(url, conn, table, args.rows, args.updates, work)
                    print(
                        f"round {number} {table:14} {figures['tps']:7.0f} updates/s, "
                        f"{figures['wal_per_update']:6.0f} WAL bytes/update, "
                        f"HOT {figures['hot_share']:.0%}",
                        flush=True,
                    )
    finally:
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{DB_NAME}" WITH (FORCE)')
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
