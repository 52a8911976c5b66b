"""Electronic PIN sales against stock of a large batch: the cost of a sale follows its
count, not the size of the batch or of the range it is taken from.

    .venv/bin/python bench/sales.py [--vouchers 1000000] [--sales 200] [--count 10]
                                    [--threads 8] [--sqlite]

Creates a scratch database (PostgreSQL ``voms_bench_sales`` next to
VOMS_TEST_POSTGRES_URL's, or a SQLite file with --sqlite), a batch of ``--vouchers``
made by the real generator and a small one (``--sales`` x ``--count`` vouchers, at
least 1,000), hands each whole to a
distributor, moves part of the large one to a shop, then times sales of ``--count``
PINs one after the other: by the shop from its own stock, by a second shop from its
parent's stock (the large range), and by a third from the small batch's stock; then
``--threads`` sellers at once. Figures, not a test.
"""

import argparse
import os
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

DB_NAME = "voms_bench_sales"


def _runtime(workdir: Path, sqlite: bool) -> Any:
    import psycopg

    from voms.config import Settings
    from voms.crypto import Keyring, write_keyring
    from voms.db.engine import make_engine
    from voms.db.migrate import upgrade
    from voms.runtime import build_runtime

    if sqlite:
        url = f"sqlite:///{workdir / 'bench.db'}"
    else:
        admin_url = os.environ.get(
            "VOMS_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres"
        )
        with psycopg.connect(admin_url, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{DB_NAME}" WITH (FORCE)')
            conn.execute(f'CREATE DATABASE "{DB_NAME}"')
        url = admin_url.rsplit("/", 1)[0] + f"/{DB_NAME}"
    keys = workdir / "keys.json"
    write_keyring(keys, Keyring.new())
    settings = Settings(database_url=url, keys_file=keys, db_pool_size=20)
    engine = make_engine(settings)
    upgrade(engine)
    engine.dispose()
    return build_runtime(settings)


def _timed(label: str, work: Callable[[], Any]) -> Any:
    started = time.perf_counter()
    result = work()
    print(f"{label}: {time.perf_counter() - started:.3f} s")
    return result


def _report(label: str, seconds: list[float]) -> None:
    ordered = sorted(seconds)
    p99 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]
    print(
        f"{label}: {len(seconds)} sales, median {statistics.median(seconds) * 1000:.1f} ms, "
        f"p99 {p99 * 1000:.1f} ms"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--vouchers", type=int, default=1_000_000)
    parser.add_argument("--sales", type=int, default=200)
    parser.add_argument("--count", type=int, default=10)
    parser.add_argument("--threads", type=int, default=8)
    parser.add_argument("--sqlite", action="store_true")
    args = parser.parse_args()

    from tests import factories
    from tests.reseller_support import hand_over, reseller

    from voms.domain.serials import format_serial
    from voms.services import generation
    from voms.services.auth import CONSOLE
    from voms.services.resellers import sales

    with tempfile.TemporaryDirectory() as folder:
        rt = _runtime(Path(folder), args.sqlite)
        factories.standard_catalog(rt)
        big = _timed(
            f"generate {args.vouchers:,} vouchers",
            lambda: generation.generate_batch(
                rt, CONSOLE, voucher_type="TOPUP10", count=args.vouchers
            ),
        )
        small_count = max(1000, args.sales * args.count)
        small = generation.generate_batch(rt, CONSOLE, voucher_type="TOPUP10", count=small_count)
        credit = 10**14
        reseller(rt, "DIST", credit_limit=credit, commission_percent=8)
        reseller(rt, "SMALL", credit_limit=credit, commission_percent=8)
        for shop in ("SHOP", "SHOP2"):
            reseller(rt, shop, credit_limit=credit, commission_percent=5, parent="DIST")
        _timed(
            f"hand {args.vouchers:,} vouchers to DIST",
            lambda: hand_over(rt, "DIST", big["serial_first"], big["serial_last"]),
        )
        width = rt.settings.serial_width
        first = int(big["serial_first"])
        _timed(
            "move 100,000 of them down to SHOP",
            lambda: hand_over(
                rt, "SHOP", format_serial(first, width), format_serial(first + 99_999, width)
            ),
        )
        hand_over(rt, "SMALL", small["serial_first"], small["serial_last"])

        def sell(seller: str, request_id: str) -> float:
            body = {
                "voucher_type": "TOPUP10",
                "count": args.count,
                "request_id": request_id,
                "reseller": seller,
            }
            started = time.perf_counter()
            sales.sell(rt, CONSOLE, body)
            return time.perf_counter() - started

        for seller, label in (
            ("SHOP", "shop, own stock (100,000-voucher range)"),
            ("SHOP2", f"shop, its parent's stock ({args.vouchers:,}-voucher range)"),
            ("SMALL", f"distributor, {small_count:,}-voucher batch"),
        ):
            runs = [sell(seller, f"{seller}-{n}") for n in range(args.sales)]
            _report(f"{label}, {args.count} PINs each", runs)

        done: list[float] = []
        lock = threading.Lock()

        def worker(index: int) -> None:
            for n in range(args.sales // args.threads):
                took = sell("SHOP" if index % 2 else "SHOP2", f"t{index}-{n}")
                with lock:
                    done.append(took)

        started = time.perf_counter()
        threads = [threading.Thread(target=worker, args=(i,)) for i in range(args.threads)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        elapsed = time.perf_counter() - started
        _report(f"{args.threads} threads, two shops of one distributor", done)
        print(f"  {len(done) / elapsed:.0f} sales/s, {len(done) * args.count / elapsed:.0f} PINs/s")
        rt.engine.dispose()


if __name__ == "__main__":
    main()
