"""Redemptions per second with promotion plans counting, with and without a million
counters in the table, against no plans at all, on PostgreSQL.

    .venv/bin/python bench/promotions.py [--counters 1000000] [--redemptions 3000]
                                         [--rounds 3] [--threads 8] [--unreached]

Creates two scratch databases (``voms_bench_promotions_a`` and ``_b`` next to
VOMS_TEST_POSTGRES_URL's), each with the standard catalog, 1,000 subscribers who redeem,
and two running plans (a calendar month count with a repeat target of 5, a campaign
count with a once target of 10; a value plan would cost one round trip more); ``_b``
also gets ``--counters`` counters (of as many other subscribers, set-based).
Redemptions go through the service (``redemption.redeem``) from ``--threads`` threads
that keep their connections, as the server's redemption threads do.

Each round times ``--redemptions`` redemptions four ways, back to back, in a rotating
order: plans running on ``_a`` (few counters) and on ``_b`` (a million), and plans ended
on each (no plan: the redemption as before promotions). On a shared machine the speed
drifts between runs far more than the figures compared; within a round the four run
under the same conditions. Prints each round, the medians and the ratios. Figures, not
a test.

With ``--unreached`` the plans' targets are out of reach: every redemption updates its
counters and none is rewarded, so the figures are the counting's cost alone (a reward's
own writes, a ledger row, a balance, the reward row, its SMS, cost in proportion to how
often a plan grants one).
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

DB_NAME = "voms_bench_promotions"  # _a, _b
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
        "code": "FEST10",
        "name": "The tenth recharge of the campaign",
        "window": {"kind": "campaign"},
        "counter": "count",
        "target": 10,
        "repeat": False,
        "reward": {"percent_of_value": 10, "account_expiry_extension_days": 7},
    },
]


def msisdn(index: int) -> str:
    return f"2547{index:08d}"


def _prepare(workdir: Path, name: str, vouchers: int) -> tuple[Any, list[str]]:
    import psycopg
    from sqlalchemy import select
    from tests import factories

    from voms.db import tables as t
    from voms.db.types import utcnow

    admin_url = os.environ.get(
        "VOMS_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres"
    )
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{name}"')
    url = admin_url.rsplit("/", 1)[0] + f"/{name}"
    rt = factories.new_installation(url, workdir / f"{name}.keys.json")
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
    create_plans(rt)
    print(f"{name}: generating {vouchers} vouchers…", file=sys.stderr)
    pins = [pin for _, pin in factories.active_batch(rt, count=vouchers)]
    return rt, pins


def create_plans(rt: Any) -> None:
    """The plans of :data:`PLANS`, running since yesterday, for the provider ACME."""
    from voms.db.types import utcnow
    from voms.services.auth import CONSOLE
    from voms.services.promotions import plans

    start = (utcnow() - timedelta(days=1)).isoformat()
    for plan in PLANS:
        body = {**plan, "service_provider": "ACME", "starts_at": start}
        plans.create_or_find(rt, CONSOLE, plans.PromotionIn.model_validate(body))


def add_counters(rt: Any, count: int) -> float:
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


def unreachable(rt: Any) -> None:
    """Every plan's target out of reach: redemptions count, none is rewarded."""
    from sqlalchemy import update

    from voms.db import tables as t

    with rt.engine.begin() as conn:
        conn.execute(update(t.promotions).values(target=1_000_000_000))


def set_plans_running(rt: Any, running: bool) -> None:
    """Every plan running (no end), or ended a second ago; this process's cache of the
    plans is cleared (another process sees the change within the cache's TTL)."""
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--counters", type=int, default=1_000_000)
    parser.add_argument("--redemptions", type=int, default=2000, help="per timed run")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=8)
    parser.add_argument(
        "--unreached",
        action="store_true",
        help="targets out of reach: counters updated, no reward granted",
    )
    args = parser.parse_args()
    per_run = args.redemptions + 50
    workdir = Path(tempfile.mkdtemp(prefix="voms-bench-promotions-"))
    few, few_pins = _prepare(workdir, f"{DB_NAME}_a", 2 * args.rounds * per_run)
    many, many_pins = _prepare(workdir, f"{DB_NAME}_b", 2 * args.rounds * per_run)
    if args.unreached:
        for rt in (few, many):
            unreachable(rt)
    seconds = add_counters(many, args.counters)
    print(f"added {args.counters:,} counters to _b in {seconds:.1f} s", flush=True)
    runs = {
        ("few", True): (few, few_pins[: args.rounds * per_run]),
        ("few", False): (few, few_pins[args.rounds * per_run :]),
        ("many", True): (many, many_pins[: args.rounds * per_run]),
        ("many", False): (many, many_pins[args.rounds * per_run :]),
    }
    order = list(runs)
    rates: dict[tuple[str, bool], list[float]] = {key: [] for key in runs}
    for index in range(args.rounds):
        shown = []
        for key in order[index % 4 :] + order[: index % 4]:
            rt, pins = runs[key]
            set_plans_running(rt, key[1])
            rate = _redeem_all(rt, pins[index * per_run : (index + 1) * per_run], args.threads)
            rates[key].append(rate)
            shown.append(f"{key[0]} counters, {'plans' if key[1] else 'no plans'}: {rate:6.1f}/s")
        print(f"round {index + 1}: " + "; ".join(shown), flush=True)
    med = statistics.median
    figures = {key: med(values) for key, values in rates.items()}
    print()
    print(f"medians (redemptions/s, {args.threads} threads, {args.redemptions} per run):")
    print(
        f"  plans running: without the counters {figures[('few', True)]:.1f}, "
        f"with {args.counters:,} counters {figures[('many', True)]:.1f}"
    )
    print(
        f"  no plans:      without the counters {figures[('few', False)]:.1f}, "
        f"with {args.counters:,} counters {figures[('many', False)]:.1f}"
    )

    def ratio(top: tuple[str, bool], bottom: tuple[str, bool]) -> float:
        """The median of the rounds' ratios (each round's runs share their conditions)."""
        return med([a / b for a, b in zip(rates[top], rates[bottom], strict=True)])

    print(
        f"  with / without the counters, plans running: {ratio(('many', True), ('few', True)):.3f}"
    )
    print(f"  plans running / no plans, few counters: {ratio(('few', True), ('few', False)):.3f}")
    print(
        f"  plans running / no plans, many counters: {ratio(('many', True), ('many', False)):.3f}"
    )
    few.engine.dispose()
    many.engine.dispose()


if __name__ == "__main__":
    main()
