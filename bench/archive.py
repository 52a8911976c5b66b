"""The archive job against the size of the table, on PostgreSQL.

    .venv/bin/python bench/archive.py [--tables 1000000,25000000] [--rounds 2]
        [--scattered 100000] [--compare /path/to/other/src]

For each table size it builds a scratch database (``voms_bench_archive``, next to
VOMS_TEST_POSTGRES_URL's) with that many live vouchers written in SQL the way
bench/scale.py writes them (active batches made a day ago, expiring in a year, the
generator's row shape and indexes), then runs the ``voucher_archive`` job over two
kinds of work, each made just before the job runs:

- **expired**: a batch of 1,000,000 vouchers that expired a year ago, 30 % of them
  redeemed then (bench/scale.py's archive step);
- **scattered**: ``--scattered`` vouchers of the live batches, spread evenly over the
  whole table, redeemed just past the retention, each with its successful redemption in
  ``transactions`` as a real redemption leaves it (removed again after the run, see
  ``_forget_redemptions``).

Each job runs in a process of its own on this tree's code, or, with ``--compare``, in
turns with the code under that ``src`` directory (another checkout, e.g. the main
branch), ``--rounds`` times each, back to back, each code first in every other round.
The schema is this tree's. Prints one line per run and the seconds per table size. The
database is dropped afterwards. Figures, not a test.
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import scale  # noqa: E402  (bench/scale.py: the scratch database and the bulk fill)

DB_NAME = "voms_bench_archive"
MILLION = 1_000_000

# Run in a process of its own on the code under test: the job, timed.
_JOB = """
import json, sys, time
from pathlib import Path
from voms.config import Settings
from voms.runtime import build_runtime
from voms.services import housekeeping
from voms.services.auth import CONSOLE
rt = build_runtime(Settings(database_url=sys.argv[1], keys_file=Path(sys.argv[2])))
began = time.perf_counter()
done = housekeeping.run_job(rt, CONSOLE, "voucher_archive")
print(json.dumps({"s": time.perf_counter() - began, "rows": done["rows_affected"],
                  "outcome": done["outcome"], "error": done["error"]}))
"""


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def _scattered(rt: Any, count: int, turn: int) -> int:
    """Redeem ``count`` live vouchers spread over the whole table, just past the
    retention, each with its successful redemption; returns how many."""
    import psycopg

    from voms.db.types import utcnow

    url = rt.settings.database_url.replace("postgresql+psycopg://", "postgresql://")
    at = utcnow() - timedelta(days=rt.settings.archive_retention_days, minutes=1)
    with psycopg.connect(url, autocommit=True) as conn:
        live = conn.execute(
            "SELECT sum(generated_count) FROM batches WHERE expires_at > now()"
        ).fetchone()[0]  # type: ignore[index]
        step = max(1, int(live) // count)
        if turn >= step:
            raise SystemExit(f"--scattered {count} leaves room for {step} runs, not more")
        row = conn.execute(
            """
            WITH picked AS (
              SELECT s AS serial FROM batches b,
                generate_series(b.serial_first + %(turn)s, b.serial_last, %(step)s) AS s
              WHERE b.expires_at > now() AND b.created_by = 'bench'
              LIMIT %(count)s
            ), redeemed AS (
              UPDATE vouchers v SET state = 'redeemed', state_changed_at = %(at)s,
                redeemed_at = %(at)s, redeemed_by = '254700000001'
              FROM picked WHERE v.serial = picked.serial AND v.state = 'available'
              RETURNING v.serial
            ), written AS (
              INSERT INTO transactions (id, at, kind, channel, msisdn, serial, result_code,
                credits, actor)
              SELECT gen_random_uuid()::text, %(at)s, 'redemption', 'api', '254700000001',
                serial, 0, '[]', 'bench' FROM redeemed
              RETURNING 1
            )
            SELECT count(*) FROM written
            """,
            {"turn": turn, "step": step, "count": count, "at": at},
        ).fetchone()
        conn.execute("ANALYZE transactions")
    return int(row[0])  # type: ignore[index]


def _forget_redemptions(rt: Any) -> None:
    """Drop the redemptions the scattered vouchers were given, now they are archived: the
    next run walks from ten minutes before this one's cutoff (``OVERLAP``), which here,
    minutes later, would take them in again, work no run a day apart would meet."""
    import psycopg

    url = rt.settings.database_url.replace("postgresql+psycopg://", "postgresql://")
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("DELETE FROM transactions WHERE actor = 'bench'")


def _job(rt: Any, src: Path | None) -> dict[str, Any]:
    env = dict(os.environ)
    if src is not None:
        env["PYTHONPATH"] = str(src)
    done = subprocess.run(
        [sys.executable, "-c", _JOB, rt.settings.database_url, str(rt.settings.keys_file)],
        env=env,
        capture_output=True,
        text=True,
        check=True,
        cwd=tempfile.gettempdir(),
    )
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    if result["outcome"] != "succeeded":
        raise SystemExit(f"the archive job failed: {result['error']}")
    return result


def measure(rt: Any, codes: dict[str, Path | None], args: argparse.Namespace) -> dict[str, Any]:
    times: dict[str, list[float]] = {}
    turn = 0
    for number in range(args.rounds):
        # Every run leaves the archive (and its UNIQUE lookup-hash index) larger for the
        # next: the codes take turns going first.
        for name, src in list(codes.items())[:: -1 if number % 2 else 1]:
            scale._archivable_batch(rt, MILLION)
            run = _job(rt, src)
            times.setdefault(f"expired {name}", []).append(run["s"])
            log(f"  round {number + 1}, {name}: expired million {run['s']:.1f} s ({run['rows']:,})")
            if args.scattered:
                made = _scattered(rt, args.scattered, turn)
                turn += 1
                run = _job(rt, src)
                times.setdefault(f"scattered {name}", []).append(run["s"])
                log(
                    f"  round {number + 1}, {name}: {made:,} scattered redeemed "
                    f"{run['s']:.1f} s ({run['rows']:,})"
                )
                _forget_redemptions(rt)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tables", default="1000000,25000000", help="live vouchers")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--scattered", type=int, default=100_000)
    parser.add_argument("--compare", type=Path, help="another tree's src directory")
    parser.add_argument("--json", help="write the figures here too")
    args = parser.parse_args()
    admin_url = os.environ.get(
        "VOMS_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres"
    )
    codes: dict[str, Path | None] = {"this tree": None}
    if args.compare:
        codes = {"compared": args.compare.resolve(), **codes}
    scale.DB_NAME = DB_NAME
    results = {}
    try:
        for size in (int(n) for n in args.tables.split(",")):
            log(f"table of {size:,} live vouchers: filling")
            rt, _ = scale._setup(admin_url, Path(tempfile.mkdtemp(prefix="voms-archive-")))
            scale._bulk_fill(rt, size)
            results[size] = measure(rt, codes, args)
            rt.engine.dispose()
            for name, seconds in results[size].items():
                log(f"{size:,} live vouchers, {name}: {', '.join(f'{s:.1f}' for s in seconds)} s")
            if args.json:
                Path(args.json).write_text(json.dumps(results, indent=1))
    finally:
        import psycopg

        with psycopg.connect(admin_url, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{DB_NAME}" WITH (FORCE)')


if __name__ == "__main__":
    main()
