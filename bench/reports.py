"""Reports over a year of transactions: the rollups, not the transactions, set the time.

    .venv/bin/python bench/reports.py [--rows 10000000] [--vouchers 100000000]

Builds a scratch PostgreSQL database (``voms_bench_reports``): two providers with five
voucher types each, ``--rows`` redemption-family attempts spread evenly over one year
(7 channels, 90 % successes, four failure codes), and batches holding ``--vouchers``
vouchers in all (batch rows with their counts: inventory and liability never read
``vouchers``). Then it folds the transactions into the rollups with the real job code
(timed: rows per second) and times each report through the real service function
(median of five calls). Figures, not a test.

The rollups grow with hours x (provider, voucher type, channel, kind, result, partner)
combinations met, not with transactions: here every combination occurs every hour, so
the tables are as large as they get for this catalog at any number of transactions.
"""

import argparse
import os
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

YEAR_START = datetime(2025, 12, 1, tzinfo=UTC)
CHANNELS = ("rest", "soap", "ussd", "sms", "ivr", "web", "care")


def _fill_transactions(url: str, rows: int, voucher_types: list[tuple[int, int]]) -> None:
    """``rows`` attempts, one every (year / rows) seconds; voucher type, channel and
    result cycle through their values with co-prime periods, so all combinations occur."""
    import psycopg

    step = 365 * 86400 / rows
    vt_ids = "ARRAY[" + ",".join(str(vt) for vt, _ in voucher_types) + "]"
    sp_ids = "ARRAY[" + ",".join(str(sp) for _, sp in voucher_types) + "]"
    with psycopg.connect(url, autocommit=True) as conn:
        started = time.perf_counter()
        done = 0
        while done < rows:
            chunk = min(1_000_000, rows - done)
            conn.execute(
                f"""
                INSERT INTO transactions (id, at, kind, channel, msisdn, recipient_msisdn,
                  serial, voucher_type_id, scenario, result_code, credits,
                  service_provider_id, actor)
                SELECT md5(n::text),
                  timestamptz '{YEAR_START.isoformat()}' + n * interval '{step} second',
                  'redemption',
                  (ARRAY{list(CHANNELS)})[1 + n %% 7],
                  '2547' || lpad((n %% 1000000)::text, 8, '0'),
                  '2547' || lpad((n %% 1000000)::text, 8, '0'),
                  100000000000 + n,
                  ({vt_ids})[1 + n %% 10], 1,
                  CASE WHEN n %% 10 <> 0 THEN 0
                       ELSE (ARRAY[2002, 2004, 2009, 2014])[1 + (n / 10) %% 4] END,
                  '[{{"balance_type": "CASH", "amount": 1000}}]',
                  ({sp_ids})[1 + n %% 10], 'bench'
                FROM generate_series(%s::bigint, %s::bigint) AS n
                """,
                (done + 1, done + chunk),
            )
            done += chunk
            print(f"  {done:,} transactions", file=sys.stderr)
        conn.execute("ANALYZE transactions")
        print(f"filled {rows:,} transactions in {time.perf_counter() - started:.0f} s")


def _fill_batches(url: str, vouchers: int, voucher_types: list[tuple[int, int]]) -> None:
    """1,000 batches holding ``vouchers`` in all, a tenth of each redeemed."""
    import psycopg

    per_batch = max(1, vouchers // 1000)
    with psycopg.connect(url, autocommit=True) as conn:
        for i, (vt, sp) in enumerate(voucher_types):
            conn.execute(
                """
                INSERT INTO batches (service_provider_id, voucher_type_id, state, count,
                  generated_count, serial_first, serial_last, expires_at, created_by,
                  created_at, updated_at)
                SELECT %(sp)s, %(vt)s, 'active', %(n)s, %(n)s,
                  500000000000 + (b * 10 + %(i)s) * %(n)s,
                  500000000000 + (b * 10 + %(i)s + 1) * %(n)s - 1,
                  now() + interval '300 days', 'bench', now(), now()
                FROM generate_series(0, 99) AS b
                """,
                {"sp": sp, "vt": vt, "n": per_batch, "i": i},
            )
        conn.execute(
            """
            INSERT INTO voucher_state_moves (batch_id, state, net)
            SELECT id, 'available', -(generated_count / 10) FROM batches
            UNION ALL SELECT id, 'redeemed', generated_count / 10 FROM batches
            """
        )
    print(f"filled 1,000 batches of {per_batch:,} vouchers ({per_batch * 1000:,} in all)")


def _time(call: object, repeat: int = 5) -> tuple[float, int]:
    """Median milliseconds of ``repeat`` calls, and the rows of the last answer."""
    times = []
    rows = 0
    for _ in range(repeat):
        started = time.perf_counter()
        report = call()  # type: ignore[operator]
        times.append((time.perf_counter() - started) * 1000)
        rows = len(report.rows)
    return statistics.median(times), rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=10_000_000)
    parser.add_argument("--vouchers", type=int, default=100_000_000)
    parser.add_argument(
        "--pg-url",
        default=os.environ.get(
            "VOMS_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres"
        ),
    )
    args = parser.parse_args()

    import psycopg
    from sqlalchemy import func, select
    from tests import factories

    from voms.config import Settings
    from voms.crypto import Keyring, write_keyring
    from voms.db import tables as t
    from voms.db.engine import make_engine
    from voms.db.migrate import upgrade
    from voms.runtime import build_runtime
    from voms.services.auth import CONSOLE
    from voms.services.reports import Query, rollups, run_report

    name = "voms_bench_reports"
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
    rt = build_runtime(settings)

    voucher_types: list[tuple[int, int]] = []
    for sp in ("ACME", "BETA"):
        factories.service_provider(rt, sp)
        factories.balance_type(rt, "CASH", sp)
        for n in range(5):
            factories.voucher_type(rt, f"{sp}_{n}", sp)
            voucher_types.append(
                (_id(rt, t.voucher_types, f"{sp}_{n}"), _id(rt, t.service_providers, sp))
            )
    _fill_transactions(url, args.rows, voucher_types)
    _fill_batches(url, args.vouchers, voucher_types)

    started = time.perf_counter()
    folded = rollups.fold(rt, until=datetime.now(UTC))
    seconds = time.perf_counter() - started
    print(
        f"folded {folded['transactions']:,} transactions in {seconds:.0f} s "
        f"({folded['transactions'] / seconds:,.0f}/s, {folded['windows']} windows)"
    )
    with rt.engine.connect() as conn:
        for table in (t.report_hourly, t.report_daily, t.report_totals, t.voucher_state_moves):
            size = conn.execute(select(func.count()).select_from(table)).scalar_one()
            print(f"  {table.name}: {size:,} rows")
        with psycopg.connect(url, autocommit=True) as raw:
            raw.execute("ANALYZE")

    year = {"since": YEAR_START, "until": YEAR_START + timedelta(days=365)}
    cases = [
        ("redemptions, year, per day and channel", "redemptions", Query(**year)),
        (
            "redemptions, year, per month and voucher type",
            "redemptions",
            Query(**year, group_by="month", by="voucher_type"),
        ),
        (
            "redemptions, year, per month and provider, mid-day edges",
            "redemptions",
            Query(
                since=YEAR_START + timedelta(hours=7),
                until=YEAR_START + timedelta(days=365, hours=-5),
                group_by="month",
                by="service_provider",
            ),
        ),
        (
            "redemptions, 31 days, per hour and channel",
            "redemptions",
            Query(
                since=YEAR_START + timedelta(days=200),
                until=YEAR_START + timedelta(days=231),
                group_by="hour",
            ),
        ),
        (
            "redemptions, one day, per hour",
            "redemptions",
            Query(
                since=YEAR_START + timedelta(days=100),
                until=YEAR_START + timedelta(days=101),
                group_by="hour",
            ),
        ),
        ("failures, year", "failures", Query(**year)),
        ("partners, year", "partners", Query(**year)),
        ("inventory (1,000 batches)", "inventory", Query()),
        ("liability", "liability", Query()),
        ("monthly summary", "summary", Query(month="2026-06")),
        ("redemptions, year, one provider", "redemptions", Query(**year, service_provider="ACME")),
    ]
    print(f"\n{'report':58} {'ms (median of 5)':>16} {'rows':>8}")
    for label, report_name, query in cases:
        ms, rows = _time(lambda n=report_name, q=query: run_report(rt, CONSOLE, n, q))
        print(f"{label:58} {ms:16.1f} {rows:8,}")
    rt.engine.dispose()


def _id(rt: object, table: object, code: str) -> int:
    from sqlalchemy import select

    with rt.engine.connect() as conn:  # type: ignore[attr-defined]
        return int(
            conn.execute(select(table.c.id).where(table.c.code == code)).scalar_one()  # type: ignore[attr-defined]
        )


if __name__ == "__main__":
    main()
