"""Promotion plans counted and rewarded in the redemption's own transaction."""

import threading
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import select

from tests import factories
from voms.config import Settings
from voms.db import hot
from voms.db import tables as t
from voms.domain.errors import Conflict, ResultError
from voms.runtime import Runtime, build_runtime
from voms.services import redemption, reports, reversal, verify, wallet
from voms.services.auth import CONSOLE
from voms.services.events.destinations import WebhookIn, add_webhook
from voms.services.promotions import counters, plans
from voms.services.redemption import RechargeRequest, RedemptionRequest

MSISDN = "254700000001"
PAST = datetime(2026, 1, 1, tzinfo=UTC)


def plan(rt: Runtime, code: str = "LOYAL", **fields: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "code": code,
        "name": f"{code} plan",
        "service_provider": "ACME",
        "starts_at": PAST.isoformat(),
        "window": {"kind": "calendar_month"},
        "counter": "count",
        "target": 3,
        "repeat": False,
        "reward": {"credits": [{"balance_type": "SMS", "amount": 50}]},
    }
    body.update(fields)
    return plans.create_or_find(rt, CONSOLE, plans.PromotionIn.model_validate(body))[0]


@pytest.fixture
def shop(rt: Runtime) -> Runtime:
    factories.standard_catalog(rt)
    factories.subscriber(rt, MSISDN)
    return rt


def redeem(rt: Runtime, pin: str, msisdn: str = MSISDN, **fields: Any) -> dict[str, Any]:
    return redemption.redeem(rt, CONSOLE, RedemptionRequest(msisdn=msisdn, pin=pin, **fields))


def pins(rt: Runtime, count: int, voucher_type: str = "TOPUP10") -> list[str]:
    return [pin for _, pin in factories.active_batch(rt, voucher_type, count=count)]


def ledger(rt: Runtime, cause: str) -> list[Any]:
    with rt.engine.connect() as conn:
        return conn.execute(
            select(t.ledger).where(t.ledger.c.cause == cause).order_by(t.ledger.c.id)
        ).all()


class Clock:
    """The unit of work's clock, set by the test (``clock.now = …``)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.now = datetime.now(UTC)
        monkeypatch.setattr("voms.services.uow.utcnow", lambda: self.now)


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    return Clock(monkeypatch)


def test_the_redemption_that_reaches_the_target_is_rewarded_once(shop: Runtime) -> None:
    rt = shop
    plan(rt)
    answers = [redeem(rt, pin) for pin in pins(rt, 4)]
    assert [a["rewards"] for a in answers[:2]] == [[], []]
    (reward,) = answers[2]["rewards"]
    assert reward["promotion"] == "LOYAL"
    assert [(c["balance_type"], c["amount"], c["balance"]) for c in reward["credits"]] == [
        ("SMS", 50, 50)
    ]
    assert answers[3]["rewards"] == []  # a once plan: not again in the same month
    (row,) = ledger(rt, "reward")
    assert (row.amount, row.transaction_id, row.reason) == (
        50,
        answers[2]["transaction_id"],
        "promotion LOYAL",
    )
    (shown,) = counters.counters_of(rt, CONSOLE, MSISDN)["items"]
    assert (shown["promotion"], shown["value"], shown["rewards"]) == ("LOYAL", 4, 1)
    assert verify.verify(rt).problems == []


def test_a_reward_is_an_event_and_an_sms_written_with_the_redemption(shop: Runtime) -> None:
    rt = shop
    plan(rt)
    hook = WebhookIn(
        url="https://listener.invalid/hook", secret="s" * 16, events=["promotion.rewarded"]
    )
    add_webhook(rt, CONSOLE, hook)  # events are written while a destination wants them
    answers = [redeem(rt, pin) for pin in pins(rt, 3)]
    with rt.engine.connect() as conn:
        (event,) = conn.execute(
            select(t.event_outbox).where(t.event_outbox.c.type == "promotion.rewarded")
        ).all()
        (alert,) = conn.execute(select(t.alerts).where(t.alerts.c.kind == "reward")).all()
    assert event.subject == MSISDN
    assert event.data == {
        "transaction_id": answers[2]["transaction_id"],
        "promotion": "LOYAL",
        "msisdn": MSISDN,
        "credits": [{"balance_type": "SMS", "amount": 50}],
    }
    assert (alert.msisdn, alert.audience, alert.state) == (MSISDN, "subscriber", "pending")


def test_a_repeat_plan_rewards_every_multiple_of_the_target(shop: Runtime) -> None:
    rt = shop
    plan(rt, target=2, repeat=True)
    rewarded = [bool(redeem(rt, pin)["rewards"]) for pin in pins(rt, 5)]
    assert rewarded == [False, True, False, True, False]
    assert [row.balance_after for row in ledger(rt, "reward")] == [50, 100]


def test_a_calendar_month_ends_at_midnight_utc(shop: Runtime, clock: Clock) -> None:
    rt = shop
    plan(rt, target=3)
    vouchers = pins(rt, 4)
    clock.now = datetime(2027, 1, 31, 23, 59, 59, 999999, tzinfo=UTC)
    assert redeem(rt, vouchers[0])["rewards"] == []
    assert redeem(rt, vouchers[1])["rewards"] == []
    clock.now = datetime(2027, 2, 1, tzinfo=UTC)  # the third, but in February
    assert redeem(rt, vouchers[2])["rewards"] == []
    (shown,) = counters.counters_of(rt, CONSOLE, MSISDN, at=clock.now)["items"]
    assert shown["value"] == 1
    assert shown["window_start"] == "2027-02-01T00:00:00+00:00"
    assert shown["window_end"] == "2027-03-01T00:00:00+00:00"
    clock.now = datetime(2027, 2, 28, 23, 59, 59, tzinfo=UTC)
    assert redeem(rt, vouchers[3])["rewards"] == []
    (shown,) = counters.counters_of(rt, CONSOLE, MSISDN, at=clock.now)["items"]
    assert shown["value"] == 2
    (shown,) = counters.counters_of(rt, CONSOLE, MSISDN, at=datetime(2027, 3, 1, tzinfo=UTC))[
        "items"
    ]
    assert shown["value"] == 0  # March has begun: nothing counted in it yet


def test_a_rolling_window_starts_at_the_first_redemption(shop: Runtime, clock: Clock) -> None:
    rt = shop
    plan(rt, window={"kind": "rolling_days", "days": 7}, target=2)
    vouchers = pins(rt, 3)
    start = datetime(2027, 3, 10, 15, 30, tzinfo=UTC)
    clock.now = start
    redeem(rt, vouchers[0])
    clock.now = start + timedelta(days=7)  # the window [start, start + 7 days) is over
    assert redeem(rt, vouchers[1])["rewards"] == []
    clock.now = start + timedelta(days=13, hours=23)  # within the second window
    assert redeem(rt, vouchers[2])["rewards"][0]["promotion"] == "LOYAL"


def test_a_campaign_counts_only_between_its_dates(shop: Runtime, clock: Clock) -> None:
    rt = shop
    starts = datetime(2027, 7, 1, tzinfo=UTC)
    plan(
        rt,
        window={"kind": "campaign"},
        starts_at=starts.isoformat(),
        ends_at=(starts + timedelta(days=31)).isoformat(),
        target=2,
    )
    vouchers = pins(rt, 4)
    clock.now = starts - timedelta(microseconds=1)
    redeem(rt, vouchers[0])  # before the campaign: not counted
    clock.now = starts
    assert redeem(rt, vouchers[1])["rewards"] == []
    clock.now = starts + timedelta(days=31)  # the campaign has ended
    assert redeem(rt, vouchers[2])["rewards"] == []
    clock.now = starts + timedelta(days=30)
    assert redeem(rt, vouchers[3])["rewards"] != []


def test_only_eligible_redemptions_count(shop: Runtime) -> None:
    rt = shop
    factories.voucher_type(rt, "TOPUP20")
    factories.subscriber(rt, "254700000002", product_type="SILVER")
    plan(
        rt,
        target=1,
        repeat=True,
        eligible={"voucher_types": ["TOPUP10"], "channels": ["ussd"], "product_types": ["GOLD"]},
    )
    gold = pins(rt, 3)
    assert redeem(rt, gold[0], channel="rest")["rewards"] == []  # another channel
    assert redeem(rt, pins(rt, 1, "TOPUP20")[0], channel="ussd")["rewards"] == []  # type
    assert redeem(rt, gold[1], msisdn="254700000002", channel="ussd")["rewards"] == []
    assert redeem(rt, gold[2], channel="ussd")["rewards"] != []
    assert len(ledger(rt, "reward")) == 1


def test_count_plans_are_counted_by_one_upsert_each_with_its_product_types(
    shop: Runtime, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On PostgreSQL one upsert counts every count plan (SQLite: one per plan); a plan
    for other product types gets no counter from it."""
    rt = shop
    factories.subscriber(rt, "254700000002", product_type="SILVER")
    plan(rt, "GOLDEN", target=2, eligible={"product_types": ["GOLD"]})
    plan(rt, "SILVERY", target=1, eligible={"product_types": ["SILVER"]})
    plan(rt, "WEEKLY", target=2, window={"kind": "rolling_days", "days": 7})
    upserts: list[Any] = []
    ahead = hot.ahead

    def spied(conn: Any, statement: Any, params: Any) -> Any:
        if getattr(statement, "table", None) is t.promotion_counters:
            upserts.append(statement)
        return ahead(conn, statement, params)

    monkeypatch.setattr(hot, "ahead", spied)
    vouchers = pins(rt, 3)
    assert redeem(rt, vouchers[0])["rewards"] == []
    assert len(upserts) == (1 if rt.engine.dialect.name == "postgresql" else 3)
    rewarded = redeem(rt, vouchers[1])["rewards"]
    assert sorted(r["promotion"] for r in rewarded) == ["GOLDEN", "WEEKLY"]
    rewarded = redeem(rt, vouchers[2], msisdn="254700000002")["rewards"]
    assert [r["promotion"] for r in rewarded] == ["SILVERY"]
    gold = {c["promotion"]: c["value"] for c in counters.counters_of(rt, CONSOLE, MSISDN)["items"]}
    assert gold == {"GOLDEN": 2, "SILVERY": 0, "WEEKLY": 2}
    silver = counters.counters_of(rt, CONSOLE, "254700000002")["items"]
    assert {c["promotion"]: c["value"] for c in silver} == {"GOLDEN": 0, "SILVERY": 1, "WEEKLY": 1}


def test_a_value_counter_and_a_percentage_of_the_value(shop: Runtime) -> None:
    rt = shop
    plan(
        rt,
        counter="value",
        target=2000,
        repeat=True,
        reward={"percent_of_value": 10, "account_expiry_extension_days": 30},
    )
    vouchers = pins(rt, 2)
    first = redeem(rt, vouchers[0])
    second = redeem(rt, vouchers[1])
    assert first["rewards"] == []
    (reward,) = second["rewards"]
    assert [(c["balance_type"], c["amount"], c["balance"]) for c in reward["credits"]] == [
        ("CASH", 100, 2100)
    ]
    assert reward["account_expiry_extension_days"] == 30
    extended = datetime.fromisoformat(second["account_expires_at"])
    assert extended - datetime.fromisoformat(first["account_expires_at"]) >= timedelta(days=29)
    with rt.engine.connect() as conn:
        row = conn.execute(select(t.promotion_rewards)).one()
    assert (row.value, row.currency, row.times) == (100, "KES", 1)


def test_a_reward_may_change_the_product_type(shop: Runtime) -> None:
    rt = shop
    plan(rt, target=1, reward={"new_product_type": "SILVER"})
    answer = redeem(rt, pins(rt, 1)[0])
    assert answer["product_type"] == "SILVER"
    assert answer["rewards"][0]["new_product_type"] == "SILVER"


def test_a_reward_is_cut_to_the_balance_limit(rt: Runtime) -> None:
    factories.standard_catalog(rt)
    factories.balance_type(rt, "BONUS", max_balance=70)
    factories.subscriber(rt, MSISDN)
    plan(rt, target=1, repeat=True, reward={"credits": [{"balance_type": "BONUS", "amount": 50}]})
    amounts = [
        [c["amount"] for r in redeem(rt, pin)["rewards"] for c in r["credits"]]
        for pin in pins(rt, 3)
    ]
    assert amounts == [[50], [20], []]  # never a 5004 for the redemption itself


def test_voucher_type_recharges_count_too(shop: Runtime) -> None:
    rt = shop
    plan(rt, target=1)
    answer = redemption.recharge(
        rt, CONSOLE, RechargeRequest(msisdn=MSISDN, voucher_type="TOPUP10")
    )
    assert answer["rewards"][0]["promotion"] == "LOYAL"


def test_a_refused_redemption_counts_nothing(shop: Runtime) -> None:
    rt = shop
    plan(rt, target=1)
    pin = pins(rt, 1)[0]
    redeem(rt, pin)
    with pytest.raises(ResultError):
        redeem(rt, pin)  # 2009
    (shown,) = counters.counters_of(rt, CONSOLE, MSISDN)["items"]
    assert shown["value"] == 1


# --- reversal -----------------------------------------------------------------------


def balance(rt: Runtime, balance_type: str, msisdn: str = MSISDN) -> int:
    found = wallet.get_subscriber(rt, CONSOLE, msisdn)["balances"]
    return sum(b["amount"] for b in found if b["balance_type"] == balance_type)


def counter(rt: Runtime, promotion: str = "LOYAL") -> int:
    items = counters.counters_of(rt, CONSOLE, MSISDN)["items"]
    return next(int(item["value"]) for item in items if item["promotion"] == promotion)


def reverse(rt: Runtime, transaction_id: str, **fields: Any) -> dict[str, Any]:
    body = {"reason": "wrong number", "reactivate_voucher": False, **fields}
    return reversal.reverse(rt, CONSOLE, transaction_id, body)


def test_a_reversal_takes_back_the_reward_and_the_count(shop: Runtime) -> None:
    rt = shop
    plan(rt)  # the third redemption of the month: 50 SMS
    plan(rt, "EVERY", target=1, repeat=True, reward={"account_expiry_extension_days": 1})
    answers = [redeem(rt, pin) for pin in pins(rt, 3)]
    assert [r["promotion"] for r in answers[2]["rewards"]] == ["LOYAL", "EVERY"]
    assert (balance(rt, "SMS"), balance(rt, "CASH"), counter(rt)) == (50, 3000, 3)

    first = reverse(rt, answers[2]["transaction_id"])
    assert first["credits"] == [
        {"balance_type": "CASH", "credited": 1000, "amount": -1000, "shortfall": 0, "balance": 2000}
    ]
    assert first["rewards"] == [
        {
            "promotion": "LOYAL",
            "credits": [
                {"balance_type": "SMS", "credited": 50, "amount": -50, "shortfall": 0, "balance": 0}
            ],
        }
    ]
    assert first["counters"] == [
        {"promotion": "LOYAL", "amount": -1, "value": 2},
        {"promotion": "EVERY", "amount": -1, "value": 2},
    ]
    assert (balance(rt, "SMS"), balance(rt, "CASH")) == (0, 2000)
    assert (counter(rt), counter(rt, "EVERY")) == (2, 2)
    assert sorted((row.amount, row.transaction_id) for row in ledger(rt, "reversal")) == [
        (-1000, first["reversal_id"]),
        (-50, first["reversal_id"]),
    ]
    (rewarded,) = ledger(rt, "reward")
    assert rewarded.reversed_by == first["reversal_id"]

    # A second reversal answers the first and changes nothing.
    assert reverse(rt, answers[2]["transaction_id"], reason="again") == first
    assert (balance(rt, "SMS"), balance(rt, "CASH"), counter(rt)) == (0, 2000, 2)
    assert verify.verify(rt).problems == []

    # The counter is back at 2: the next redemption reaches the target again.
    again = redeem(rt, pins(rt, 1)[0])
    assert [r["promotion"] for r in again["rewards"]] == ["LOYAL", "EVERY"]
    assert (balance(rt, "SMS"), counter(rt)) == (50, 3)


def test_a_reversal_takes_a_percentage_reward_and_the_value_back(shop: Runtime) -> None:
    rt = shop
    plan(rt, counter="value", target=2000, repeat=True, reward={"percent_of_value": 10})
    answers = [redeem(rt, pin) for pin in pins(rt, 2)]
    assert (balance(rt, "CASH"), counter(rt)) == (2100, 2000)
    answer = reverse(rt, answers[1]["transaction_id"])
    assert answer["credits"][0]["amount"] == -1000
    assert answer["rewards"][0]["credits"][0] == {
        "balance_type": "CASH",
        "credited": 100,
        "amount": -100,
        "shortfall": 0,
        "balance": 1000,
    }
    assert answer["counters"] == [{"promotion": "LOYAL", "amount": -1000, "value": 1000}]
    assert (balance(rt, "CASH"), counter(rt)) == (1000, 1000)
    with rt.engine.connect() as conn:
        (row,) = conn.execute(
            select(t.transactions.c.credits).where(t.transactions.c.kind == "reversal")
        ).all()
    assert row.credits == [{"balance_type": "CASH", "amount": -1100, "balance": 1000}]
    assert verify.verify(rt).problems == []


def test_a_spent_reward_is_taken_back_only_when_forced(shop: Runtime) -> None:
    rt = shop
    plan(rt, target=1)
    answer = redeem(rt, pins(rt, 1)[0])
    spend = wallet.AdjustmentIn(balance_type="SMS", amount=-30, reason="texts")
    wallet.adjust_balance(rt, CONSOLE, MSISDN, spend)
    with pytest.raises(Conflict, match="SMS balance is 20, below the 50 credited"):
        reverse(rt, answer["transaction_id"])
    assert (balance(rt, "SMS"), balance(rt, "CASH"), counter(rt)) == (20, 1000, 1)  # untouched
    forced = reverse(rt, answer["transaction_id"], force=True)
    assert forced["rewards"][0]["credits"][0] == {
        "balance_type": "SMS",
        "credited": 50,
        "amount": -20,
        "shortfall": 30,
        "balance": 0,
    }
    assert forced["shortfall"] == [{"balance_type": "SMS", "amount": 30}]
    assert (balance(rt, "SMS"), balance(rt, "CASH"), counter(rt)) == (0, 0, 0)
    assert verify.verify(rt).problems == []


def test_a_reversal_leaves_a_counter_whose_window_has_ended(shop: Runtime, clock: Clock) -> None:
    rt = shop
    plan(rt)
    clock.now = datetime(2027, 1, 31, 23, 59, tzinfo=UTC)
    answer = redeem(rt, pins(rt, 1)[0])
    clock.now = datetime(2027, 2, 1, 0, 1, tzinfo=UTC)
    redeem(rt, pins(rt, 1)[0])  # the February counter starts again at 1
    assert reverse(rt, answer["transaction_id"])["counters"] == []
    assert counter(rt) == 1


# --- exactly once under concurrency -------------------------------------------------


THREADS = 32


@pytest.fixture
def busy_rt(settings: Settings) -> Iterator[Runtime]:
    runtime = build_runtime(settings.model_copy(update={"db_pool_size": THREADS + 2}))
    yield runtime
    runtime.engine.dispose()


def at_once(count: int, attempt: Callable[[int], tuple[int, int]]) -> list[tuple[int, int]]:
    """Run ``attempt(i)`` in ``count`` threads released together."""
    barrier = threading.Barrier(count)

    def run(index: int) -> tuple[int, int]:
        barrier.wait()
        return attempt(index)

    with ThreadPoolExecutor(count) as pool:
        return list(pool.map(run, range(count)))


def redeem_code(rt: Runtime, pin: str) -> tuple[int, int]:
    try:
        answer = redeem(rt, pin)
    except ResultError as error:
        return error.result.code, 0
    return 0, len(answer["rewards"])


@pytest.mark.parametrize(("target", "repeat", "rewards"), [(10, False, 1), (8, True, 4)])
def test_32_parallel_redemptions_crossing_a_target_reward_exactly_as_often_as_reached(
    busy_rt: Runtime, target: int, repeat: bool, rewards: int
) -> None:
    rt = busy_rt
    factories.standard_catalog(rt)
    factories.subscriber(rt, MSISDN)
    plan(rt, target=target, repeat=repeat)
    vouchers = pins(rt, THREADS)
    outcomes = at_once(THREADS, lambda i: redeem_code(rt, vouchers[i]))
    assert Counter(code for code, _ in outcomes) == {0: THREADS}
    assert sum(n for _, n in outcomes) == rewards
    assert len(ledger(rt, "reward")) == rewards
    (shown,) = counters.counters_of(rt, CONSOLE, MSISDN)["items"]
    assert shown["value"] == THREADS
    assert verify.verify(rt).problems == []


def test_reversals_and_redemptions_of_one_subscriber_at_once_never_deadlock(
    busy_rt: Runtime,
) -> None:
    """A reversal takes the counters and the wallet in the order a redemption does."""
    rt = busy_rt
    factories.standard_catalog(rt)
    factories.subscriber(rt, MSISDN)
    plan(rt, target=1_000, repeat=True)
    plan(rt, "VALUE", counter="value", target=1_000_000, repeat=True)
    half = THREADS // 2
    done = [redeem(rt, pin)["transaction_id"] for pin in pins(rt, half)]
    vouchers = pins(rt, half)

    def attempt(index: int) -> tuple[int, int]:
        if index < half:
            reverse(rt, done[index])
            return 0, 0
        return redeem_code(rt, vouchers[index - half])

    outcomes = at_once(THREADS, attempt)
    assert Counter(code for code, _ in outcomes) == {0: THREADS}
    assert (counter(rt), counter(rt, "VALUE")) == (half, half * 1000)
    assert balance(rt, "CASH") == half * 1000
    assert verify.verify(rt).problems == []


def test_32_parallel_redemptions_counted_in_several_plans_reward_each_exactly(
    busy_rt: Runtime,
) -> None:
    """Count plans (one upsert) and value plans (one upsert after the credit) together:
    the counters are locked in plan order, so no two redemptions deadlock."""
    rt = busy_rt
    factories.standard_catalog(rt)
    factories.subscriber(rt, MSISDN)
    plan(rt, "ONCE10", target=10)
    plan(rt, "EVERY8", target=8, repeat=True, window={"kind": "campaign"})
    plan(rt, "VALUE8K", counter="value", target=8000, repeat=True)  # a voucher: 1,000
    plan(rt, "VALUE10K", counter="value", target=10000, window={"kind": "rolling_days", "days": 3})
    vouchers = pins(rt, THREADS)
    outcomes = at_once(THREADS, lambda i: redeem_code(rt, vouchers[i]))
    assert Counter(code for code, _ in outcomes) == {0: THREADS}
    assert sum(n for _, n in outcomes) == 1 + 4 + 4 + 1
    assert len(ledger(rt, "reward")) == 10
    shown = {c["promotion"]: c["value"] for c in counters.counters_of(rt, CONSOLE, MSISDN)["items"]}
    assert shown == {"ONCE10": 32, "EVERY8": 32, "VALUE8K": 32000, "VALUE10K": 32000}
    assert verify.verify(rt).problems == []


# --- the rewards report ---------------------------------------------------------------


def test_the_rewards_report_counts_rewards_and_their_money_per_plan(
    shop: Runtime, clock: Clock
) -> None:
    rt = shop
    plan(rt, "BONUS", target=1, repeat=True, reward={"percent_of_value": 10})
    plan(rt, "SMSFEST", target=2, repeat=True)
    vouchers = pins(rt, 3)
    for moment, pin in zip(
        (datetime(2027, 1, 31, 23, 0, tzinfo=UTC), datetime(2027, 2, 1, 1, 0, tzinfo=UTC)),
        vouchers,
        strict=False,
    ):
        clock.now = moment
        redeem(rt, pin)
    clock.now = datetime(2027, 2, 1, 2, 0, tzinfo=UTC)
    redeem(rt, vouchers[2])  # BONUS again, and SMSFEST's second in February
    query = reports.Query(since="2027-01-01T00:00:00+00:00", until="2027-03-01T00:00:00+00:00")
    report = reports.run_report(rt, CONSOLE, "rewards", query)
    assert report.as_json()["rows"] == [
        {
            "period": "2027-01-31",
            "service_provider": "ACME",
            "promotion": "BONUS",
            "count": 1,
            "value": 100,
            "currency": "KES",
        },
        {
            "period": "2027-02-01",
            "service_provider": "ACME",
            "promotion": "BONUS",
            "count": 2,
            "value": 200,
            "currency": "KES",
        },
        {
            "period": "2027-02-01",
            "service_provider": "ACME",
            "promotion": "SMSFEST",
            "count": 1,
            "value": 0,
            "currency": None,
        },
    ]
    assert report.totals == {"count": 4, "value": {"KES": 300}}
    monthly = reports.run_report(
        rt, CONSOLE, "rewards", reports.Query(query.since, query.until, group_by="month")
    )
    assert [(r["period"], r["promotion"], r["count"]) for r in monthly.rows] == [
        ("2027-01", "BONUS", 1),
        ("2027-02", "BONUS", 2),
        ("2027-02", "SMSFEST", 1),
    ]
    csv_lines = reports.render(report, "csv").decode().splitlines()
    assert csv_lines[0] == "period,service_provider,promotion,count,value,currency"
    assert csv_lines[-1] == "total,,,4,300,"
    assert reports.render(report, "xlsx").startswith(b"PK")


# --- what counting costs on PostgreSQL ------------------------------------------------


@pytest.mark.parametrize(("counter", "round_trips"), [("count", 3), ("value", 4)])
def test_a_count_plan_costs_the_redemption_no_round_trip(
    rt: Runtime, monkeypatch: pytest.MonkeyPatch, counter: str, round_trips: int
) -> None:
    """A count plan's upsert goes out with the round trip that locks the account, so a
    redemption that counts and is rewarded still costs three round trips; a value plan
    needs the scenario first and costs one more."""
    if rt.engine.dialect.name != "postgresql":
        pytest.skip("PostgreSQL only: SQLite has no round trips")
    from sqlalchemy import event

    from voms.db import hot
    from voms.db.engine import make_engine

    one = make_engine(rt.settings.model_copy(update={"db_pool_size": 1, "db_max_overflow": 0}))
    monkeypatch.setattr(rt, "engine", one)
    factories.standard_catalog(rt)
    factories.subscriber(rt, MSISDN)
    plan(rt, counter=counter, target=1 if counter == "count" else 1000, repeat=True)
    first, second = pins(rt, 2)
    assert redeem(rt, first)["rewards"] != []  # caches filled
    sent: list[str] = []
    send = hot._send
    monkeypatch.setattr(hot, "_send", lambda *args, **kw: sent.append("hot") or send(*args, **kw))
    event.listen(one, "before_cursor_execute", lambda *_: sent.append("sql"))
    assert redeem(rt, second)["rewards"] != []
    assert sent == ["hot"] * round_trips
    one.dispose()
