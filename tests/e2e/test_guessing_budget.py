"""PIN guessing against a real `voms serve` with two worker processes (issue 14, hole 3).

One channel key guesses PINs on the USSD channel, where the network gives the MSISDN,
changing MSISDN every 4 guesses so that no number reaches the bad-PIN blacklist. The
failed-lookup budget of the key, counted in the database that both workers share,
stops it; another key's legitimate redemptions (and a few typos) at the same time are
never refused.
"""

import random
import threading
from collections import Counter
from pathlib import Path

import httpx
import pytest
from sqlalchemy import select

from tests import factories
from tests.e2e.processes import start_http_server
from tests.e2e.test_cli_and_serve import VOMS, _env
from voms.db import tables as t
from voms.domain.pins import with_check_digit
from voms.runtime import Runtime

BUDGET = 30
GUESSES = 200
SUBSCRIBERS = [f"2547000{n:05d}" for n in range(40)]
ATTACKED, HONEST = SUBSCRIBERS[:30], SUBSCRIBERS[30:]


def _guesses(count: int) -> list[tuple[str, str]]:
    """(MSISDN, PIN) pairs: well-formed 14-digit PINs, the MSISDN changing every 4."""
    rng = random.Random(14)
    pins = [with_check_digit(f"{rng.randrange(10**13):013d}") for _ in range(count)]
    return [(ATTACKED[n // 4 % len(ATTACKED)], pin) for n, pin in enumerate(pins)]


@pytest.mark.slow
def test_the_budget_stops_a_rotating_msisdn_attack_across_two_workers(
    rt: Runtime, database_url: str, keys_file: Path, tmp_path: Path
) -> None:
    factories.standard_catalog(rt)
    for msisdn in SUBSCRIBERS:
        factories.subscriber(rt, msisdn)
    vouchers = factories.active_batch(rt, count=10)
    attacker = {"Authorization": f"Bearer {factories.api_key(rt, 'channel', name='attacker')}"}
    shop = {"Authorization": f"Bearer {factories.api_key(rt, 'channel', name='shop')}"}
    process, url = start_http_server(
        lambda port: [VOMS, "serve", "--port", str(port), "--workers", "2"],
        cwd=tmp_path,
        env=_env(
            VOMS_DATABASE_URL=database_url,
            VOMS_KEYS_FILE=str(keys_file),
            VOMS_LOOKUP_FAILURES_PER_KEY=str(BUDGET),
            VOMS_SCHEDULER_ENABLED="false",
        ),
        log=lambda port: tmp_path / f"serve-{port}.log",
    )
    answers: Counter[int] = Counter()
    legitimate: list[int] = []
    lock = threading.Lock()

    def attack(part: list[tuple[str, str]]) -> None:
        with httpx.Client(base_url=url, headers=attacker, timeout=30) as client:
            for msisdn, pin in part:
                body = {"msisdn": msisdn, "pin": pin, "channel": "ussd"}
                code = client.post("/api/v1/redemptions", json=body).json()["result_code"]
                with lock:
                    answers[code] += 1

    def redeem_honestly() -> None:
        with httpx.Client(base_url=url, headers=shop, timeout=30) as client:
            for n, (_, pin) in enumerate(vouchers):
                typed = pin if n % 5 else pin[:-1] + str((int(pin[-1]) + 1) % 10)  # a typo
                body = {"msisdn": HONEST[n], "pin": typed, "channel": "ussd"}
                legitimate.append(
                    client.post("/api/v1/redemptions", json=body).json()["result_code"]
                )

    guesses = _guesses(GUESSES)
    threads = [threading.Thread(target=attack, args=(guesses[i::4],)) for i in range(4)]
    threads.append(threading.Thread(target=redeem_honestly))
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(120)
    finally:
        process.terminate()
        process.wait(timeout=20)

    # Each worker lets a guess through until one of its own lookups fails past the
    # budget; guesses already in flight (4 connections) may land meanwhile.
    assert BUDGET <= answers[2004] <= BUDGET + 2 + 4, answers
    assert answers[5007] == GUESSES - answers[2004], answers
    assert 5007 not in legitimate
    assert legitimate.count(0) == 8
    assert legitimate.count(2002) == 2
    with rt.engine.connect() as conn:
        alerts = (
            conn.execute(
                select(t.audit_log.c.object_id).where(t.audit_log.c.action == "guessing.throttled")
            )
            .scalars()
            .all()
        )
        blacklisted = conn.execute(
            select(t.pin_attempts.c.msisdn).where(t.pin_attempts.c.blacklisted_until.is_not(None))
        ).all()
    assert len(alerts) == 1
    assert alerts[0].startswith("key:")
    assert blacklisted == []
