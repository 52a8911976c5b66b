"""Scale on PostgreSQL: the same measurements at 1M, 10M and N vouchers in one database.

    .venv/bin/python bench/scale.py [--vouchers 10000000] [--checkpoints 1000000,10000000]
        [--probe 200000] [--requests 10000] [--rounds 2] [--keep] [--compare-rounds 0]

Builds a scratch database (``voms_scale`` next to VOMS_TEST_POSTGRES_URL's): the catalog,
1,000 subscribers, then the first 1,000,000 vouchers with the real generator
(``generation.generate_batch``, timed). Beyond that the table is filled in SQL
(``INSERT … SELECT generate_series``, one million rows a statement, ten million a
batch): rows of the generator's very shape (serial, batch, a 32-byte random lookup hash,
a 42-byte ciphertext, key ids, state ``available``) in active batches, inserted in
random hash order into the same live indexes, so the index load is the generator's
(the PINs themselves are never needed: nobody redeems those). At each checkpoint (1M,
10M, … and N) it measures, in this order:

1. generation: a batch of ``--probe`` vouchers by the real generator (rate; the WAL it
   wrote, with its full-page images, and the lookup-hash index blocks it read);
2. redemption over HTTP: ``voms serve`` (2 workers) redeems PINs of that batch, driven
   closed loop over 32 kept-alive connections by bench/redeem.py's driver (rate, p50,
   p99; median of ``--rounds`` runs);
3. a range freeze of 1,000,000 vouchers (``lifecycle.change_vouchers``), then the
   unfreeze of the same range;
4. every report through the real service (the slowest one is printed);
5. the archive job (``voucher_archive``) over an expired batch of 1,000,000 vouchers
   (30 % redeemed) written in SQL just before;
6. database size (``pg_database_size``) and the ``vouchers`` table with its indexes,
   per voucher.

Prints one line per measurement as it goes and a table at the end. The database is
dropped at the end unless ``--keep``. Figures, not a test.
"""

import argparse
import contextlib
import json
import os
import signal
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import redeem  # noqa: E402  (bench/redeem.py: the server and the HTTP load driver)

DB_NAME = "voms_scale"
SMALL_DB = "voms_scale_1m"  # --compare-rounds: the 1M database beside it
MILLION = 1_000_000
FILL_STATEMENT = MILLION  # rows per INSERT … SELECT (one transaction)
FILL_BATCH = 10 * MILLION  # vouchers per bulk batch (the generator's largest batch)
ARCHIVE_BATCH = MILLION
WARMUP = 500  # redemptions sent to a new server before any measured run


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


# --- building ------------------------------------------------------------------------


def _setup(admin_url: str, workdir: Path, name: str = DB_NAME) -> tuple[Any, str]:
    import psycopg
    from sqlalchemy import select
    from tests import factories

    from voms.db import tables as t
    from voms.db.types import utcnow

    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{name}"')
    url = admin_url.rsplit("/", 1)[0] + f"/{name}"
    rt = factories.new_installation(url, workdir / f"{name}-keys.json")
    factories.standard_catalog(rt)
    with rt.engine.begin() as conn:
        gold = conn.execute(
            select(t.product_types.c.id).where(t.product_types.c.code == "GOLD")
        ).scalar_one()
        conn.execute(
            t.subscribers.insert(),
            [
                {
                    "msisdn": redeem.msisdn(i),
                    "service_provider_id": 1,
                    "product_type_id": gold,
                    "state": "active",
                    "created_at": utcnow(),
                }
                for i in range(redeem.SUBSCRIBERS)
            ],
        )
    key = factories.api_key(rt, "channel", name="scale")
    return rt, key


def _sql_batch(rt: Any, count: int, *, state: str, expires_in: timedelta) -> tuple[int, int]:
    """A batch row of ``count`` vouchers with its serial range; (batch id, first serial)."""
    from bench.sql_batches import sql_batch

    from voms.db.types import utcnow

    now = utcnow()
    made = now + min(expires_in, timedelta(0)) - timedelta(days=1)
    with rt.engine.begin() as conn:
        return sql_batch(
            conn,
            count,
            state=state,
            expires_at=now + expires_in,
            created_at=made,
            voucher_type="TOPUP10",
        )


# Rows of the generator's shape: a 32-byte lookup hash (random: the index takes them in
# random order, as it takes HMACs) and a 42-byte ciphertext (nonce, PIN, tag).
_ROWS = """
INSERT INTO vouchers (serial, batch_id, pin_hash, lookup_key_id, pin_ciphertext,
  encryption_key_id, state{extra_columns})
SELECT s, %(batch)s, sha256(int8send(s) || int8send((random() * 9e18)::int8)), 1,
  sha256(int8send(-s)) || substr(sha256(int8send(s + 1)), 1, 10), 1, {state}{extra_values}
FROM generate_series(%(first)s::bigint, %(last)s::bigint) AS s
"""


def _bulk_fill(rt: Any, count: int) -> float:
    """``count`` vouchers of active batches in SQL; returns the seconds taken.

    The rows go in with the lookup hash's UNIQUE index set aside (random keys into an
    index far larger than shared_buffers cost a full-page WAL image each) and no
    foreign-key trigger (the batches exist); the index is then built again at 70 % leaf
    density, the density a B-tree grown by random inserts settles at, so the table and
    its indexes have the size and shape the generator's inserts give them. Then VACUUM
    ANALYZE, as after any bulk load.
    """
    import psycopg

    url = rt.settings.database_url.replace("postgresql+psycopg://", "postgresql://")
    statement = _ROWS.format(extra_columns="", state="'available'", extra_values="")
    began = time.perf_counter()
    left = count
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("SET session_replication_role = replica")  # no per-row FK check
        conn.execute("SET maintenance_work_mem = '1GB'")
        conn.execute("VACUUM vouchers")  # the space of earlier checkpoints' churn, for reuse
        conn.execute("ALTER TABLE vouchers DROP CONSTRAINT uq_vouchers_pin_hash")
        while left:
            size = min(FILL_BATCH, left)
            batch_id, first = _sql_batch(rt, size, state="active", expires_in=timedelta(days=365))
            for start in range(first, first + size, FILL_STATEMENT):
                last = min(first + size, start + FILL_STATEMENT) - 1
                conn.execute(statement, {"batch": batch_id, "first": start, "last": last})
            left -= size
            done = count - left
            took = time.perf_counter() - began
            log(f"  bulk fill: {done:,} of {count:,} ({done / took:,.0f}/s)")
        started = time.perf_counter()
        conn.execute(
            "CREATE UNIQUE INDEX uq_vouchers_pin_hash ON vouchers (pin_hash) WITH (fillfactor = 70)"
        )
        conn.execute("ALTER INDEX uq_vouchers_pin_hash RESET (fillfactor)")
        conn.execute(
            "ALTER TABLE vouchers ADD CONSTRAINT uq_vouchers_pin_hash"
            " UNIQUE USING INDEX uq_vouchers_pin_hash"
        )
        log(f"  lookup hash index built in {time.perf_counter() - started:.0f} s")
        started = time.perf_counter()
        conn.execute("VACUUM ANALYZE vouchers")
        log(f"  VACUUM ANALYZE in {time.perf_counter() - started:.0f} s")
        _prewarm(conn)
    return time.perf_counter() - began


def _prewarm(conn: Any) -> None:
    """Read the lookup-hash index into ``shared_buffers``, where a running server keeps it.

    Every redemption and every generated voucher visits a random page of it. Grown by the
    generator's inserts it would be there already; built by ``CREATE INDEX`` (through a
    small ring of buffers) it is not, and each of those visits would first read its page
    from the operating system. ``pg_prewarm`` (PostgreSQL's contrib, in Debian's server
    package) does the same for a restarted production server (``autoprewarm``). Skipped
    with a note when the extension is missing.
    """
    import psycopg

    started = time.perf_counter()
    try:
        conn.execute("CREATE EXTENSION IF NOT EXISTS pg_prewarm")
    except psycopg.Error as exc:
        log(f"  pg_prewarm unavailable ({exc.diag.message_primary}): index left cold")
        return
    blocks, room = conn.execute(
        "SELECT pg_prewarm('uq_vouchers_pin_hash'),"
        " (SELECT setting::bigint FROM pg_settings WHERE name = 'shared_buffers')"
    ).fetchone()
    fits = "" if blocks <= room else f" (more than shared_buffers' {room:,}: only part stays)"
    log(
        f"  lookup hash index read into shared_buffers: {blocks:,} blocks{fits}"
        f" in {time.perf_counter() - started:.0f} s"
    )


def _archivable_batch(rt: Any, count: int) -> None:
    """An active batch that expired a year ago, 30 % of it redeemed a year ago."""
    import psycopg

    from voms.db.types import utcnow

    batch_id, first = _sql_batch(rt, count, state="active", expires_in=timedelta(days=-365))
    statement = _ROWS.format(
        extra_columns=", redeemed_at, redeemed_by",
        state="CASE WHEN s %% 10 < 3 THEN 'redeemed' ELSE 'available' END",
        extra_values=", CASE WHEN s %% 10 < 3 THEN %(at)s END,"
        " CASE WHEN s %% 10 < 3 THEN '254700000001' END",
    )
    url = rt.settings.database_url.replace("postgresql+psycopg://", "postgresql://")
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(
            statement,
            {
                "batch": batch_id,
                "first": first,
                "last": first + count - 1,
                "at": utcnow() - timedelta(days=365),
            },
        )


# --- measuring ------------------------------------------------------------------------


def _generate(
    rt: Any, count: int, *, pins: bool = True
) -> tuple[float, list[tuple[str, str]], int]:
    """A batch by the real generator, activated: (seconds, its (serial, PIN) pairs, id)."""
    from sqlalchemy import select

    from voms.db import tables as t
    from voms.domain.serials import format_serial
    from voms.services import generation, lifecycle
    from voms.services.auth import CONSOLE

    began = time.perf_counter()
    batch = generation.generate_batch(rt, CONSOLE, voucher_type="TOPUP10", count=count)
    seconds = time.perf_counter() - began
    lifecycle.change_batch(rt, CONSOLE, batch["batch_id"], "activate")
    if not pins:
        return seconds, [], int(batch["batch_id"])
    v = t.vouchers
    with rt.engine.connect() as conn:
        rows = conn.execute(
            select(v.c.serial, v.c.encryption_key_id, v.c.pin_ciphertext)
            .where(v.c.batch_id == batch["batch_id"])
            .order_by(v.c.serial)
        ).all()
    width = rt.settings.serial_width
    return (
        seconds,
        [
            (
                format_serial(r.serial, width),
                rt.keyring.decrypt(r.encryption_key_id, r.pin_ciphertext),
            )
            for r in rows
        ],
        int(batch["batch_id"]),
    )


def _bodies(pins: list[tuple[str, str]]) -> list[dict[str, Any]]:
    return [
        {
            "msisdn": redeem.msisdn(i % redeem.SUBSCRIBERS),
            "pin": pin,
            "request_id": f"scale-{serial}",
        }
        for i, (serial, pin) in enumerate(pins)
    ]


@contextlib.contextmanager
def _server(rt: Any, args: argparse.Namespace) -> Iterator[str]:
    """``voms serve`` (2 workers of 4 redemption threads) on the database of ``rt``; yields
    its URL."""
    server, url = redeem.serve(
        rt.settings.database_url, str(rt.settings.keys_file), 2, 4, args.concurrency
    )
    try:
        yield url
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=30)


def _refused(runs: list[dict[str, Any]]) -> int:
    return sum(n for run in runs for code, n in run["codes"].items() if code != "0")


def _redeem_http(
    rt: Any, key: str, pins: list[tuple[str, str]], args: argparse.Namespace, work: Path
) -> dict[str, Any]:
    """voms serve, a warm-up, then ``--rounds`` closed-loop runs: median rate and p99."""
    bodies = _bodies(pins)
    runs = []
    with _server(rt, args) as url:
        redeem._run_driver(url, key, bodies[:WARMUP], args.concurrency, None, work)
        for number in range(args.rounds):
            first = WARMUP + number * args.requests
            runs.append(
                redeem._run_driver(
                    url, key, bodies[first : first + args.requests], args.concurrency, None, work
                )
            )
    return {
        "rps": statistics.median(r["rps"] for r in runs),
        "p50_ms": statistics.median(r["p50_ms"] for r in runs),
        "p99_ms": statistics.median(r["p99_ms"] for r in runs),
        "runs": [(round(r["rps"]), round(r["p99_ms"], 2)) for r in runs],
        "refused": _refused(runs),
    }


def compare_small(
    rt: Any, key: str, admin_url: str, args: argparse.Namespace, work: Path
) -> dict[str, Any]:
    """Redemption in turns against a database of 1,000,000 vouchers built beside this one.

    Both servers run throughout; each round drives one, then the other (the order
    alternating), ``--requests`` redemptions each, so the host's changing load falls on
    both alike. Returns the per-round ratios (this database against the small one).
    """
    import psycopg

    need = WARMUP + args.compare_rounds * args.requests
    small, small_key = _setup(admin_url, work, SMALL_DB)
    try:
        _generate(small, MILLION, pins=False)
        _, small_pins, _ = _generate(small, need)
        _, big_pins, _ = _generate(rt, need)
        sides = {"big": (key, _bodies(big_pins)), "small": (small_key, _bodies(small_pins))}
        results: dict[str, list[dict[str, Any]]] = {"big": [], "small": []}
        with _server(rt, args) as big_url, _server(small, args) as small_url:
            urls = {"big": big_url, "small": small_url}
            for side, (side_key, bodies) in sides.items():
                redeem._run_driver(
                    urls[side], side_key, bodies[:WARMUP], args.concurrency, None, work
                )
            for number in range(args.compare_rounds):
                first = WARMUP + number * args.requests
                order = ("big", "small") if number % 2 == 0 else ("small", "big")
                for side in order:
                    side_key, bodies = sides[side]
                    run = redeem._run_driver(
                        urls[side],
                        side_key,
                        bodies[first : first + args.requests],
                        args.concurrency,
                        None,
                        work,
                    )
                    results[side].append(run)
                big, little = results["big"][-1], results["small"][-1]
                log(
                    f"  round {number + 1}: {big['rps']:,.0f} against {little['rps']:,.0f}/s "
                    f"({big['rps'] / little['rps']:.3f}), p99 {big['p99_ms']:.1f} against "
                    f"{little['p99_ms']:.1f} ms ({big['p99_ms'] / little['p99_ms']:.3f})"
                )
    finally:
        small.engine.dispose()
        with psycopg.connect(admin_url, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{SMALL_DB}" WITH (FORCE)')
    pairs = list(zip(results["big"], results["small"], strict=True))
    rate = [b["rps"] / s["rps"] for b, s in pairs]
    p99 = [b["p99_ms"] / s["p99_ms"] for b, s in pairs]
    summed = sum(b["rps"] for b, _ in pairs) / sum(s["rps"] for _, s in pairs)
    log(
        f"redemption at {args.vouchers:,} against 1,000,000, in turns ({len(pairs)} rounds):"
        f" rate {statistics.median(rate):.3f} (median of rounds; {min(rate):.3f}-"
        f"{max(rate):.3f}; all rounds summed {summed:.3f}), p99 {statistics.median(p99):.3f}"
        f" ({min(p99):.3f}-{max(p99):.3f}); refused {_refused(results['big'])}"
        f" and {_refused(results['small'])}"
    )
    return {
        "rate_ratio_median": statistics.median(rate),
        "rate_ratio_summed": summed,
        "p99_ratio_median": statistics.median(p99),
        "rounds": [
            (round(b["rps"]), round(b["p99_ms"], 2), round(s["rps"]), round(s["p99_ms"], 2))
            for b, s in pairs
        ],
    }


def _freeze(rt: Any, low: int) -> tuple[float, float]:
    from voms.services import lifecycle
    from voms.services.auth import CONSOLE

    high = low + MILLION - 1
    began = time.perf_counter()
    frozen = lifecycle.change_vouchers(rt, CONSOLE, "freeze", low, high)
    freeze_s = time.perf_counter() - began
    assert frozen["affected"] == MILLION, frozen
    began = time.perf_counter()
    lifecycle.change_vouchers(rt, CONSOLE, "unfreeze", low, high)
    return freeze_s, time.perf_counter() - began


def _archive(rt: Any) -> tuple[float, int]:
    from voms.services import housekeeping
    from voms.services.auth import CONSOLE

    _archivable_batch(rt, ARCHIVE_BATCH)
    began = time.perf_counter()
    done = housekeeping.run_job(rt, CONSOLE, "voucher_archive")
    return time.perf_counter() - began, int(done["rows_affected"])


def _reports(rt: Any) -> tuple[str, float]:
    from voms.services.auth import CONSOLE
    from voms.services.reports.queries import NAMES, Query, run_report

    times = {}
    for name in NAMES:
        began = time.perf_counter()
        run_report(rt, CONSOLE, name, Query())
        times[name] = time.perf_counter() - began
    slowest = max(times, key=lambda n: times[n])
    return slowest, times[slowest]


def _sizes(rt: Any) -> tuple[int, int, int]:
    """(vouchers, database bytes, vouchers table + indexes bytes).

    Vouchers are counted from the batches (minus the archived ones): no count(*) over
    a hundred million rows.
    """
    import psycopg

    url = rt.settings.database_url.replace("postgresql+psycopg://", "postgresql://")
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("CHECKPOINT")
        vouchers = conn.execute(
            "SELECT (SELECT sum(generated_count) FROM batches WHERE parent_batch_id IS NULL)"
            " - (SELECT count(*) FROM voucher_archive)"
        ).fetchone()[0]  # type: ignore[index]
        database = conn.execute("SELECT pg_database_size(current_database())").fetchone()[0]  # type: ignore[index]
        table = conn.execute("SELECT pg_total_relation_size('vouchers')").fetchone()[0]  # type: ignore[index]
    return int(vouchers), int(database), int(table)


def _io_counters(rt: Any) -> dict[str, float]:
    """Cluster-wide WAL (records, full-page images, bytes) and the lookup-hash index's
    block reads and hits: their difference around a step says where its time went."""
    import psycopg

    url = rt.settings.database_url.replace("postgresql+psycopg://", "postgresql://")
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("SELECT pg_stat_clear_snapshot()")
        wal = conn.execute("SELECT wal_records, wal_fpi, wal_bytes FROM pg_stat_wal").fetchone()
        index = conn.execute(
            "SELECT idx_blks_read, idx_blks_hit, pg_relation_size(indexrelid)"
            " FROM pg_statio_user_indexes WHERE indexrelname = 'uq_vouchers_pin_hash'"
        ).fetchone()
    assert wal is not None
    assert index is not None
    return {
        "wal_records": float(wal[0]),
        "wal_fpi": float(wal[1]),
        "wal_bytes": float(wal[2]),
        "index_read": float(index[0]),
        "index_hit": float(index[1]),
        "index_bytes": float(index[2]),
    }


def checkpoint(
    rt: Any, key: str, args: argparse.Namespace, work: Path, freeze_from: int
) -> dict[str, Any]:
    vouchers, database, table = _sizes(rt)
    log(
        f"checkpoint at {vouchers:,} vouchers: database {database / 2**30:.2f} GiB "
        f"({database / vouchers:.0f} B/voucher), vouchers+indexes {table / vouchers:.0f} B/voucher"
    )
    before = _io_counters(rt)
    gen_s, pins, _ = _generate(rt, args.probe)
    rt.engine.dispose()  # a backend's statistics reach the views at its exit at the latest
    time.sleep(1)
    after_gen = _io_counters(rt)
    io = {k: after_gen[k] - before[k] for k in before if k != "index_bytes"}
    log(f"  generation: {args.probe:,} in {gen_s:.1f} s ({args.probe / gen_s:,.0f}/s)")
    log(
        f"  generation's I/O: WAL {io['wal_bytes'] / args.probe:,.0f} B/voucher, "
        f"{io['wal_fpi'] / args.probe:.2f} full-page images/voucher; lookup-hash index "
        f"({after_gen['index_bytes'] / 2**20:,.0f} MiB): {io['index_read'] / args.probe:.2f}"
        f" blocks read, {io['index_hit'] / args.probe:.2f} hit a voucher"
    )
    http = _redeem_http(rt, key, pins, args, work)
    log(
        f"  redemption over HTTP: {http['rps']:,.0f}/s, p50 {http['p50_ms']:.2f} ms, "
        f"p99 {http['p99_ms']:.2f} ms (runs {http['runs']}, refused {http['refused']})"
    )
    freeze_s, unfreeze_s = _freeze(rt, freeze_from)
    log(f"  freeze 1M: {freeze_s:.1f} s (unfreeze {unfreeze_s:.1f} s)")
    report, report_s = _reports(rt)
    log(f"  slowest report: {report} in {report_s:.2f} s")
    archive_s, archived = _archive(rt)
    log(f"  archive job: {archived:,} vouchers in {archive_s:.1f} s")
    after = _sizes(rt)
    log(f"  after: {after[0]:,} vouchers, database {after[1] / 2**30:.2f} GiB")
    return {
        "vouchers": vouchers,
        "generation_per_s": args.probe / gen_s,
        "generation_wal_bytes_per_voucher": io["wal_bytes"] / args.probe,
        "generation_fpi_per_voucher": io["wal_fpi"] / args.probe,
        "generation_index_reads_per_voucher": io["index_read"] / args.probe,
        "index_bytes": after_gen["index_bytes"],
        "redeem_rps": http["rps"],
        "redeem_p50_ms": http["p50_ms"],
        "redeem_p99_ms": http["p99_ms"],
        "redeem_runs": http["runs"],
        "freeze_1m_s": freeze_s,
        "archive_s": archive_s,
        "archived": archived,
        "report": report,
        "report_s": report_s,
        "db_bytes_per_voucher": database / vouchers,
        "table_bytes_per_voucher": table / vouchers,
        "vouchers_after": after[0],
    }


def _table(rows: list[dict[str, Any]], first_fill_rate: float) -> None:
    print(f"\nfirst 1,000,000 by the real generator: {first_fill_rate:,.0f} vouchers/s")
    heads = [
        ("vouchers", lambda r: f"{r['vouchers']:,}"),
        ("generate/s", lambda r: f"{r['generation_per_s']:,.0f}"),
        ("redeem/s", lambda r: f"{r['redeem_rps']:,.0f}"),
        ("p99 ms", lambda r: f"{r['redeem_p99_ms']:.1f}"),
        ("freeze 1M s", lambda r: f"{r['freeze_1m_s']:.1f}"),
        ("archive 1M s", lambda r: f"{r['archive_s']:.1f}"),
        ("slowest report s", lambda r: f"{r['report']} {r['report_s']:.2f}"),
        ("B/voucher db", lambda r: f"{r['db_bytes_per_voucher']:.0f}"),
        ("B/voucher table", lambda r: f"{r['table_bytes_per_voucher']:.0f}"),
    ]
    print("| " + " | ".join(h for h, _ in heads) + " |")
    print("|" + "---|" * len(heads))
    for row in rows:
        print("| " + " | ".join(f(row) for _, f in heads) + " |")
    base = rows[0]
    for row in rows[1:]:
        print(
            f"at {row['vouchers']:,} against {base['vouchers']:,}: redemption rate "
            f"{row['redeem_rps'] / base['redeem_rps']:.0%}, p99 "
            f"{row['redeem_p99_ms'] / base['redeem_p99_ms']:.0%}"
        )


def _stop(signum: int, frame: Any) -> None:
    raise SystemExit(f"stopped by signal {signum}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--vouchers", type=int, default=10 * MILLION)
    parser.add_argument(
        "--checkpoints", default="1000000,10000000", help="table sizes measured besides N"
    )
    parser.add_argument("--probe", type=int, default=200_000, help="vouchers generated")
    parser.add_argument("--requests", type=int, default=10_000, help="of each HTTP run")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--json", help="write the figures here too")
    parser.add_argument("--keep", action="store_true", help="keep the database")
    parser.add_argument(
        "--compare-rounds",
        type=int,
        default=0,
        help="after N, redemption in turns against a new database of 1M vouchers, this many"
        " rounds of --requests each (0: not)",
    )
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, _stop)  # a kill still stops the server, drops the database
    if args.probe < WARMUP + args.rounds * args.requests:
        parser.error("--probe must cover the warm-up and every HTTP run")
    admin_url = os.environ.get(
        "VOMS_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres"
    )
    marks = sorted({int(c) for c in args.checkpoints.split(",") if int(c) < args.vouchers})
    marks.append(args.vouchers)
    log(f"{os.cpu_count()} CPUs, load {os.getloadavg()[0]:.1f}; checkpoints {marks}")
    work = Path(tempfile.mkdtemp(prefix="voms-scale-"))
    rt, key = _setup(admin_url, work)
    rows: list[dict[str, Any]] = []
    try:
        first_s, _, first_batch = _generate(rt, MILLION, pins=False)
        first_fill_rate = MILLION / first_s
        log(f"first 1,000,000 by the real generator: {first_fill_rate:,.0f}/s")
        from sqlalchemy import select

        from voms.db import tables as t

        with rt.engine.connect() as conn:
            freeze_from = conn.execute(
                select(t.batches.c.serial_first).where(t.batches.c.id == first_batch)
            ).scalar_one()
        have = MILLION
        for mark in marks:
            if mark > have:
                log(f"bulk fill to {mark:,}")
                _bulk_fill(rt, mark - have)
            rows.append(checkpoint(rt, key, args, work, freeze_from))
            have = rows[-1]["vouchers_after"]
            if args.json:
                Path(args.json).write_text(json.dumps(rows, indent=1))
        _table(rows, first_fill_rate)
        if args.compare_rounds:
            log(f"redemption in turns: {args.vouchers:,} against a new database of 1,000,000")
            rows[-1]["compare_small"] = compare_small(rt, key, admin_url, args, work)
            if args.json:
                Path(args.json).write_text(json.dumps(rows, indent=1))
    finally:
        rt.engine.dispose()
        if not args.keep:
            import psycopg

            with psycopg.connect(admin_url, autocommit=True) as conn:
                conn.execute(f'DROP DATABASE IF EXISTS "{DB_NAME}" WITH (FORCE)')


if __name__ == "__main__":
    main()
