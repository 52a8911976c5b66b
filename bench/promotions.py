"""Redemptions per second with promotion plans counting, with and without a million
counters in the table, against no plans at all, on PostgreSQL.

    .venv/bin/python bench/promotions.py [--counters 1000000] [--redemptions 3000]
                                         [--rounds 3] [--threads 8]

Creates a scratch database (``voms_bench_promotions`` next to VOMS_TEST_POSTGRES_URL's),
the standard catalog, 1,000 subscribers who redeem, and two running plans (a calendar
month count with a repeat target of 5, a campaign on value with a target of 50 KES).
Redemptions go through the service (``redemption.redeem``) from ``--threads`` threads
that keep their connections, as the server's redemption threads do.

Phase 1, the counters table holding only the redeeming subscribers' rows: each round
times ``--redemptions`` redemptions with the plans ended (no plan: the redemption as
before promotions) and then as many with the plans running. Phase 2 adds ``--counters``
counters (of as many other subscribers) and runs the same rounds again. Run back to
back, each pair is measured under the same conditions; the machine's speed drifts
between runs far more than the figures compared. Prints each round, the medians and
the ratios. Figures, not a test.
"""

import argparse
import os
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

DB_NAME = "voms_bench_promotions"
SUBSCRIBERS = 1000
PLANS: list[dict[str, Any]] = [
    {
        "code": "MONTHLY5",
        "name": "Every fifth recharge of the month",
        "window": {"kind": "calendar_month"},
        "counter": "count",
        "target": 5,
        "repeat": True,
        "reward": {"credits": [{"balance_type": "SMS", "amount": 10}]},
    },
    {
        "code": "FEST50",
        "name": "50 KES in the campaign",
        "window": {"kind": "campaign"},
        "counter": "value",
        "target": 5000,
        "repeat": False,
        "reward": {"percent_of_value": 10, "account_expiry_extension_days": 7},
    },
]


def msisdn(index: int) -> str:
    return f"2547{index:08d}"


def _prepare(workdir: Path, vouchers: int) -> tuple[Any, list[str]]:
    import psycopg
    from sqlalchemy import select
    from tests import factories

    from voms.db import tables as t
    from voms.db.types import utcnow
    from voms.services.auth import CONSOLE
    from voms.services.promotions import plans

    admin_url = os.environ.get(
        "VOMS_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres"
    )
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{DB_NAME}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{DB_NAME}"')
    url = admin_url.rsplit("/", 1)[0] + f"/{DB_NAME}"
    rt = factories.new_installation(url, workdir / "keys.json")
    factories.standard_catalog(rt)
    with rt.engine.begin() as conn:
        gold = conn.execute(
            select(t.product_types.c.id).where(t.product_types.c.code == "GOLD")
        ).scalar_one()
        conn.execute(
            t.subscribers.insert(),
            [
                {
                    "msisdn": msisdn(i),
                    "service_provider_id": 1,
                    "product_type_id": gold,
                    "state": "active",
                    "created_at": utcnow(),
                }
                for i in range(SUBSCRIBERS)
            ],
        )
    start = (utcnow() - timedelta(days=1)).isoformat()
    for plan in PLANS:
        body = {**plan, "service_provider": "ACME", "starts_at": start}
        plans.create_or_find(rt, CONSOLE, plans.PromotionIn.model_validate(body))
    print(f"generating {vouchers} vouchers…", file=sys.stderr)
    pins = [pin for _, pin in factories.active_batch(rt, count=vouchers)]
    return rt, pins


def _add_counters(rt: Any, count: int) -> float:
    """``count`` counters (and their subscribers) of the plans, set-based; seconds taken."""
    from sqlalchemy import text

    started = time.perf_counter()
    per_plan = count // len(PLANS)
    with rt.engine.begin() as conn:
        first = conn.execute(text("SELECT max(id) FROM subscribers")).scalar_one() + 1
        conn.execute(
            text(
                "INSERT INTO subscribers (msisdn, service_provider_id, product_type_id, state,"
                " created_at) SELECT '2548' || lpad(n::text, 8, '0'), 1, 1, 'active', now()"
                " FROM generate_series(1, :n) AS n"
            ),
            {"n": per_plan},
        )
        conn.execute(
            text(
                "INSERT INTO promotion_counters (promotion_id, subscriber_id, window_start,"
                " window_end, value, updated_at)"
                " SELECT p.id, s.id, date_trunc('month', now()),"
                " date_trunc('month', now()) + interval '1 month', (s.id % 4) + 1, now()"
                " FROM promotions p, subscribers s WHERE s.id >= :first"
            ),
            {"first": first},
        )
        conn.execute(text("ANALYZE promotion_counters"))
        conn.execute(text("ANALYZE subscribers"))
    return time.perf_counter() - started


def _set_plans_running(rt: Any, running: bool) -> None:
    from sqlalchemy import update

    from voms.db import tables as t
    from voms.services.promotions import cache

    ends_at = None if running else datetime.now(UTC) - timedelta(seconds=1)
    with rt.engine.begin() as conn:
        conn.execute(update(t.promotions).values(ends_at=ends_at))
    cache.clear(rt)


def _redeem_all(rt: Any, pins: list[str], threads: int) -> float:
    """Redemptions per second of ``pins``, each by one of the subscribers in turn."""
    from voms.services import redemption
    from voms.services.auth import CONSOLE
    from voms.services.redemption import RedemptionRequest
    from voms.services.uow import KeptConnections

    kept = KeptConnections()

    def one(index: int) -> int:
        answer = redemption.redeem(
            rt,
            CONSOLE,
            RedemptionRequest(msisdn=msisdn(index % SUBSCRIBERS), pin=pins[index]),
        )
        return len(answer["rewards"])

    with ThreadPoolExecutor(threads, initializer=kept.keep_on_this_thread) as pool:
        list(pool.map(one, range(min(50, len(pins)))))  # connections opened, caches warm
        started = time.perf_counter()
        list(pool.map(one, range(50, len(pins))))
        elapsed = time.perf_counter() - started
    kept.release()
    return (len(pins) - 50) / elapsed


def _phase(
    rt: Any, pins: list[str], rounds: int, per_round: int, threads: int, label: str
) -> tuple[list[float], list[float]]:
    without, with_plans = [], []
    for index in range(rounds):
        offset = 2 * index * per_round
        _set_plans_running(rt, False)
        without.append(_redeem_all(rt, pins[offset : offset + per_round], threads))
        _set_plans_running(rt, True)
        with_plans.append(
            _redeem_all(rt, pins[offset + per_round : offset + 2 * per_round], threads)
        )
        print(
            f"{label} round {index + 1}: no plans {without[-1]:8.1f}/s   "
            f"plans {with_plans[-1]:8.1f}/s   ratio {with_plans[-1] / without[-1]:.3f}",
            flush=True,
        )
    return without, with_plans


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--counters", type=int, default=1_000_000)
    parser.add_argument("--redemptions", type=int, default=3000, help="per timed run")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=8)
    args = parser.parse_args()
    per_round = args.redemptions + 50
    workdir = Path(tempfile.mkdtemp(prefix="voms-bench-promotions-"))
    rt, pins = _prepare(workdir, 4 * args.rounds * per_round)
    half = 2 * args.rounds * per_round
    small_none, small_plans = _phase(
        rt, pins[:half], args.rounds, per_round, args.threads, "few counters "
    )
    seconds = _add_counters(rt, args.counters)
    print(f"added {args.counters:,} counters in {seconds:.1f} s", flush=True)
    big_none, big_plans = _phase(
        rt, pins[half:], args.rounds, per_round, args.threads, f"{args.counters:,} counters"
    )
    med = statistics.median
    print()
    print(f"medians (redemptions/s, {args.threads} threads, {args.redemptions} per run):")
    print(f"  without the counters: no plans {med(small_none):.1f}, plans {med(small_plans):.1f}")
    print(
        f"  with {args.counters:,} counters: no plans {med(big_none):.1f}, "
        f"plans {med(big_plans):.1f}"
    )
    print(
        f"  plans with / without the counters: {med(big_plans) / med(small_plans):.3f}\n"
        f"  plans with the counters / no plans (same phase): "
        f"{med([p / n for p, n in zip(big_plans, big_none, strict=True)]):.3f}\n"
        f"  plans / no plans with few counters (same phase): "
        f"{med([p / n for p, n in zip(small_plans, small_none, strict=True)]):.3f}"
    )
    rt.engine.dispose()


if __name__ == "__main__":
    main()
