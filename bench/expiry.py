"""The expiry jobs at scale on PostgreSQL: account_lifecycle and balance_expiry over
1,000,000 subscribers with one balance each.

    .venv/bin/python bench/expiry.py [--subscribers 1000000] [--chunk 20000]

Creates a scratch database (``voms_bench_expiry`` next to VOMS_TEST_POSTGRES_URL's) and
writes the subscribers, balances and their ledger credits in SQL: a third with an
account expired 3 days ago (they become expired), a third 60 days ago (deactivated), a
third in the future; half of the balances expired. Runs each job through the
housekeeping runner and prints its time, rows and the process's peak memory, then runs
``voms verify``'s checks. Figures, not a test.
"""

import argparse
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

DB_NAME = "voms_bench_expiry"


def _peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--subscribers", type=int, default=1_000_000)
    parser.add_argument("--chunk", type=int, default=20_000)
    args = parser.parse_args()

    import psycopg
    from sqlalchemy import text
    from tests import factories

    from voms.config import Settings
    from voms.crypto import Keyring, write_keyring
    from voms.db.engine import make_engine
    from voms.db.migrate import upgrade
    from voms.runtime import build_runtime
    from voms.services import housekeeping, verify
    from voms.services.auth import CONSOLE

    admin_url = os.environ.get(
        "VOMS_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres"
    )
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{DB_NAME}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{DB_NAME}"')
    url = admin_url.rsplit("/", 1)[0] + f"/{DB_NAME}"
    with tempfile.TemporaryDirectory() as workdir:
        keys = Path(workdir) / "keys.json"
        write_keyring(keys, Keyring.new())
        settings = Settings(database_url=url, keys_file=keys, housekeeping_chunk_size=args.chunk)
        engine = make_engine(settings)
        upgrade(engine)
        engine.dispose()
        rt = build_runtime(settings)
        factories.standard_catalog(rt)
        n = args.subscribers
        print(f"writing {n} subscribers, balances and ledger credits…", file=sys.stderr)
        started = time.perf_counter()
        with rt.engine.begin() as conn:
            sp, pt, bt = (
                conn.execute(text(f"SELECT id FROM {table} ORDER BY id LIMIT 1")).scalar_one()
                for table in ("service_providers", "product_types", "balance_types")
            )
            conn.execute(
                text(
                    "INSERT INTO subscribers (msisdn, service_provider_id, product_type_id,"
                    " state, account_expires_at, created_at)"
                    " SELECT (254800000000 + g)::text, :sp, :pt, 'active',"
                    " now() + CASE g % 3 WHEN 0 THEN interval '-3 days'"
                    " WHEN 1 THEN interval '-60 days' ELSE interval '30 days' END, now()"
                    " FROM generate_series(1, :n) g"
                ),
                {"sp": sp, "pt": pt, "n": n},
            )
            conn.execute(
                text(
                    "INSERT INTO balances (subscriber_id, balance_type_id, amount, expires_at)"
                    " SELECT id, :bt, 1000, now() + CASE id % 2 WHEN 0"
                    " THEN interval '-1 day' ELSE interval '10 days' END FROM subscribers"
                ),
                {"bt": bt},
            )
            conn.execute(
                text(
                    "INSERT INTO ledger (at, subscriber_id, balance_type_id, amount,"
                    " balance_after, cause, actor)"
                    " SELECT now() - interval '40 days', subscriber_id, balance_type_id,"
                    " amount, amount, 'adjustment', 'bench' FROM balances"
                )
            )
            conn.execute(text("ANALYZE"))
        print(f"written in {time.perf_counter() - started:.1f} s", file=sys.stderr)
        for job in ("account_lifecycle", "balance_expiry"):
            started = time.perf_counter()
            run = housekeeping.run_job(rt, CONSOLE, job)
            took = time.perf_counter() - started
            print(
                f"{job}: {run['rows_affected']} rows in {took:.1f} s "
                f"({run['rows_affected'] / took:,.0f} rows/s), outcome {run['outcome']}, "
                f"peak RSS {_peak_mb():.0f} MB"
            )
        started = time.perf_counter()
        problems = verify.verify(rt).problems
        print(f"verify: {problems or 'ok'} in {time.perf_counter() - started:.1f} s")
        rt.engine.dispose()


if __name__ == "__main__":
    main()
