"""GET /api/v1/transactions on millions of rows: keyset pages stay index range scans.

    .venv/bin/python bench/transactions.py [--rows 10000000]

Fills ``transactions`` of a scratch PostgreSQL database (``voms_bench_tx``) with
generated attempts (100,000 subscribers, one serial each attempt), then times the
service's queries through the real service function: newest page, a deep page by cursor,
by msisdn, by serial, by time window. Prints milliseconds per call and the plan's top
node for each. Figures, not a test.
"""

import argparse
import os
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def _fill(url: str, rows: int) -> None:
    import psycopg

    with psycopg.connect(url, autocommit=True) as conn:
        started = time.perf_counter()
        conn.execute(
            """
            INSERT INTO transactions (id, at, kind, channel, msisdn, recipient_msisdn, serial,
              voucher_type_id, scenario, result_code, credits, service_provider_id, actor)
            SELECT md5(n::text), timestamptz '2026-01-01' + n * interval '1 second',
              'redemption', 'ussd', '2547' || lpad((n %% 100000)::text, 8, '0'),
              '2547' || lpad((n %% 100000)::text, 8, '0'), 100000000000 + n, 1, 1,
              CASE WHEN n %% 10 = 0 THEN 2004 ELSE 0 END,
              '[{"balance_type": "CASH", "amount": 1000}]', 1, 'bench'
            FROM generate_series(1, %s) AS n
            """,
            (rows,),
        )
        conn.execute("ANALYZE transactions")
        print(f"filled {rows:,} rows in {time.perf_counter() - started:.0f} s", file=sys.stderr)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=10_000_000)
    parser.add_argument(
        "--pg-url",
        default=os.environ.get(
            "VOMS_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres"
        ),
    )
    args = parser.parse_args()

    import psycopg
    from sqlalchemy import text

    from voms.config import Settings
    from voms.crypto import Keyring, write_keyring
    from voms.db.engine import make_engine
    from voms.db.migrate import upgrade
    from voms.runtime import build_runtime
    from voms.services import transactions
    from voms.services.auth import CONSOLE

    name = "voms_bench_tx"
    with psycopg.connect(args.pg_url, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{name}"')
    url = args.pg_url.rsplit("/", 1)[0] + f"/{name}"
    keys = Path(tempfile.mkdtemp()) / "keys.json"
    write_keyring(keys, Keyring.new())
    settings = Settings(database_url=url, keys_file=keys)
    engine = make_engine(settings)
    upgrade(engine)
    engine.dispose()
    _fill(url, args.rows)
    rt = build_runtime(settings)

    deep = transactions.list_transactions(rt, CONSOLE, limit=1000)["next_cursor"]
    for _ in range(50):  # fifty pages down
        deep = transactions.list_transactions(rt, CONSOLE, limit=1000, cursor=deep)["next_cursor"]
    middle = datetime(2026, 1, 1, tzinfo=UTC) + timedelta(seconds=args.rows // 2)
    calls: list[tuple[str, dict[str, Any]]] = [
        ("newest 100", {}),
        ("page 51 by cursor (1000/page)", {"limit": 1000, "cursor": deep}),
        ("by msisdn", {"msisdn": "254700004242"}),
        ("by serial", {"serial": 100000000000 + args.rows // 3}),
        ("one hour window", {"since": middle, "until": middle + timedelta(hours=1)}),
        ("msisdn, next page", {"msisdn": "254700004242", "limit": 10}),
    ]
    print(f"\n{args.rows:,} transactions, PostgreSQL")
    print(f"{'query':<32}{'ms p50':>8}{'ms max':>8}{'rows':>6}")
    for label, kwargs in calls:
        if label == "msisdn, next page":
            first = transactions.list_transactions(rt, CONSOLE, **kwargs)
            kwargs = {**kwargs, "cursor": first["next_cursor"]}
        times = []
        for _ in range(20):
            started = time.perf_counter()
            page = transactions.list_transactions(rt, CONSOLE, **kwargs)
            times.append(1000 * (time.perf_counter() - started))
        print(
            f"{label:<32}{statistics.median(times):>8.2f}{max(times):>8.2f}"
            f"{len(page['transactions']):>6}"
        )
    with rt.engine.connect() as conn:
        plan = conn.execute(
            text(
                "EXPLAIN SELECT * FROM transactions WHERE msisdn = '254700004242' "
                "OR recipient_msisdn = '254700004242' ORDER BY at DESC, id DESC LIMIT 101"
            )
        ).scalars()
        print("\nplan by msisdn:\n  " + "\n  ".join(plan))
    rt.engine.dispose()


if __name__ == "__main__":
    main()
