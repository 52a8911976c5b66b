"""Resellers, stock and electronic PIN sales against SQLite and PostgreSQL."""

import io
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from typing import Any

import pytest
from pypdf import PdfReader
from sqlalchemy import func, select

from tests import factories
from tests.pgp import PartnerKeys
from tests.reseller_support import (
    PRICE,
    hand_over,
    inactive_batch,
    reseller,
    serials,
    stocked_reseller,
)
from voms.config import Settings
from voms.db import tables as t
from voms.db.types import utcnow
from voms.domain.errors import Conflict, Forbidden, VomsError
from voms.runtime import Runtime, build_runtime
from voms.services import auth, care, distribution, lifecycle, redemption
from voms.services.auth import CONSOLE, Principal
from voms.services.redemption import RedemptionRequest
from voms.services.resellers import accounts, sales, statements, stock

THREADS = 32
NET = PRICE * 95 // 100  # what a 5 % reseller pays for one TOPUP10


@pytest.fixture
def busy_rt(settings: Settings) -> Iterator[Runtime]:
    """A runtime with a connection for every thread, so that all really run at once."""
    runtime = build_runtime(settings.model_copy(update={"db_pool_size": THREADS + 2}))
    yield runtime
    runtime.engine.dispose()


def at_once(count: int, attempt: Callable[[int], Any]) -> list[Any]:
    barrier = threading.Barrier(count)

    def run(index: int) -> Any:
        barrier.wait()
        return attempt(index)

    with ThreadPoolExecutor(count) as pool:
        return list(pool.map(run, range(count)))


def sell(
    rt: Runtime, request_id: str, count: int = 1, who: Principal = CONSOLE, **fields: Any
) -> dict[str, Any]:
    body = {"voucher_type": "TOPUP10", "count": count, "request_id": request_id, **fields}
    body.setdefault("reseller", "DIST")
    return sales.sell(rt, who, body).answer


def reseller_key(rt: Runtime, code: str) -> Principal:
    _, secret = auth.create_api_key(
        rt, CONSOLE, name=f"key-{code}", role="distributor", reseller=code
    )
    principal = auth.authenticate(rt, secret)
    assert principal is not None
    return principal


def test_a_sale_answers_active_vouchers_and_charges_face_value_minus_commission(
    rt: Runtime,
) -> None:
    stocked_reseller(rt, count=10)
    factories.subscriber(rt)
    sold = sell(rt, "s-1", count=3)

    assert sold["count"] == 3
    assert (sold["value"], sold["commission"], sold["charged"]) == (3000, 150, 2850)
    assert sold["balance_due"] == 2850
    pins = [voucher["pin"] for voucher in sold["vouchers"]]
    assert len(set(pins)) == 3
    for voucher in sold["vouchers"]:
        assert care.voucher_by_serial(rt, CONSOLE, voucher["serial"])["state"] == "active"
    answer = redemption.redeem(rt, CONSOLE, RedemptionRequest(msisdn="254700000001", pin=pins[0]))
    assert answer["result_code"] == 0
    # The rest of the batch stays inactive.
    unsold = serials(rt, {"batch_id": 1})[5]
    assert care.voucher_by_serial(rt, CONSOLE, unsold)["state"] == "inactive"


def test_32_parallel_sales_at_the_credit_limit_sell_exactly_what_is_affordable(
    busy_rt: Runtime,
) -> None:
    rt = busy_rt
    affordable = 10
    stocked_reseller(rt, count=40, credit_limit=affordable * NET + NET - 1)

    def attempt(index: int) -> Any:
        try:
            return sell(rt, f"race-{index}")
        except Conflict as refused:
            return refused.detail

    outcomes = at_once(THREADS, attempt)
    sold = [each for each in outcomes if isinstance(each, dict)]
    refused = [each for each in outcomes if isinstance(each, str)]
    assert len(sold) == affordable
    assert all("credit limit" in reason for reason in refused)
    pins = [voucher["pin"] for each in sold for voucher in each["vouchers"]]
    assert len(pins) == len(set(pins)) == affordable
    with rt.engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(t.sale_vouchers)).scalar() == 10
    found = accounts.get_reseller(rt, CONSOLE, "DIST")
    assert found["balance_due"] == affordable * NET
    report = statements.statement(rt, CONSOLE, "DIST", since=utcnow() - timedelta(hours=1))
    assert report["closing_balance"] == found["balance_due"]
    assert report["sales"] == affordable * PRICE


def test_parallel_sales_never_hand_the_same_pin_to_two_sales(busy_rt: Runtime) -> None:
    rt = busy_rt
    stocked_reseller(rt, count=THREADS * 3)
    answers = at_once(THREADS, lambda index: sell(rt, f"pins-{index}", count=3))
    pins = [voucher["pin"] for each in answers for voucher in each["vouchers"]]
    assert len(pins) == len(set(pins)) == THREADS * 3
    assert stock.list_stock(rt, CONSOLE, "DIST")["items"][0]["on_hand"] == 0


def test_a_retried_sale_answers_the_same_pins_and_charges_once(rt: Runtime) -> None:
    stocked_reseller(rt)
    first = sell(rt, "again", count=2)
    second = sell(rt, "again", count=2)
    assert second == first
    assert accounts.get_reseller(rt, CONSOLE, "DIST")["balance_due"] == 2 * NET
    with pytest.raises(Conflict, match="different parameters"):
        sell(rt, "again", count=3)


def test_a_sale_beyond_the_stock_changes_nothing(rt: Runtime) -> None:
    stocked_reseller(rt, count=2)
    with pytest.raises(Conflict, match="not enough electronic stock"):
        sell(rt, "too-many", count=3)
    assert accounts.get_reseller(rt, CONSOLE, "DIST")["balance_due"] == 0
    assert stock.list_stock(rt, CONSOLE, "DIST")["items"][0]["on_hand"] == 2


def test_a_sub_reseller_sells_from_the_stock_above_it_and_each_level_earns_its_commission(
    rt: Runtime,
) -> None:
    stocked_reseller(rt, commission_percent=8)
    reseller(rt, "SHOP", commission_percent=5, parent="DIST")
    sold = sell(rt, "shop-1", reseller="SHOP", count=2)
    assert (sold["commission"], sold["charged"]) == (100, 1900)
    assert accounts.get_reseller(rt, CONSOLE, "SHOP")["balance_due"] == 1900
    # DIST earns the 3 % between its commission and SHOP's.
    assert accounts.get_reseller(rt, CONSOLE, "DIST")["balance_due"] == -60
    report = statements.statement(rt, CONSOLE, "DIST")
    assert (report["sales"], report["commission"], report["closing_balance"]) == (0, 60, -60)
    rows = statements.sell_through(rt, CONSOLE, "DIST")["rows"]
    assert {(row["reseller"], row["on_hand"], row["sold"]) for row in rows} == {
        ("DIST", 18, 0),
        ("SHOP", 0, 2),
    }


def test_a_sub_reseller_cannot_earn_more_commission_than_its_parent(rt: Runtime) -> None:
    stocked_reseller(rt, commission_percent=5)
    with pytest.raises(Conflict, match="commission"):
        reseller(rt, "SHOP", commission_percent=6, parent="DIST")


def test_stock_moves_down_the_tree_without_overlap(rt: Runtime) -> None:
    found = stocked_reseller(rt)
    reseller(rt, "SHOP", parent="DIST")
    moved = hand_over(rt, "SHOP", found[5], found[9])
    assert (moved["reseller"], moved["on_hand"], moved["kind"]) == ("SHOP", 5, "electronic")
    held = {
        (row["serial_from"], row["on_hand"])
        for row in stock.list_stock(rt, CONSOLE, "DIST")["items"]
    }
    assert held == {(found[0], 5), (found[10], 10)}
    with pytest.raises(Conflict, match="down the tree"):
        hand_over(rt, "DIST", found[5], found[6])
    with pytest.raises(Conflict, match="overlaps"):
        hand_over(rt, "SHOP", found[3], found[12])
    reseller(rt, "OTHER")
    with pytest.raises(Conflict, match="down the tree"):
        hand_over(rt, "OTHER", found[0], found[1])


def test_sold_stock_cannot_be_moved(rt: Runtime) -> None:
    found = stocked_reseller(rt)
    reseller(rt, "SHOP", parent="DIST")
    sell(rt, "first-two", count=2)
    with pytest.raises(Conflict, match="already sold"):
        hand_over(rt, "SHOP", found[1], found[4])


def test_stock_is_inactive_vouchers_only(rt: Runtime) -> None:
    factories.standard_catalog(rt)
    reseller(rt, "DIST")
    active = factories.active_batch(rt, count=3)
    with pytest.raises(Conflict, match="inactive"):
        hand_over(rt, "DIST", active[0][0], active[-1][0])


def test_a_resellers_key_sees_and_sells_only_within_its_subtree(rt: Runtime) -> None:
    found = stocked_reseller(rt)
    reseller(rt, "SHOP", parent="DIST")
    reseller(rt, "RIVAL")
    shop = reseller_key(rt, "SHOP")
    dist = reseller_key(rt, "DIST")
    for denied in (
        lambda: stock.list_stock(rt, shop, "DIST"),
        lambda: sales.list_sales(rt, shop, "DIST"),
        lambda: accounts.get_reseller(rt, dist, "RIVAL"),
        lambda: accounts.get_reseller(rt, dist, "NO-SUCH"),
        lambda: sell(rt, "x", who=shop, reseller="DIST"),
        lambda: hand_over(rt, "SHOP", found[0], found[1], who=shop),
    ):
        with pytest.raises(Forbidden):
            denied()
    assert [row["code"] for row in accounts.list_resellers(rt, dist)["items"]] == ["DIST", "SHOP"]
    # DIST's key passes stock down to its shop, which sells it with its own key.
    hand_over(rt, "SHOP", found[0], found[1], who=dist)
    sold = sales.sell(rt, shop, {"voucher_type": "TOPUP10", "count": 2, "request_id": "k"})
    assert sold.answer["reseller"] == "SHOP"
    assert [s["sale_id"] for s in sales.list_sales(rt, dist, "SHOP")["items"]] == [
        sold.answer["sale_id"]
    ]


def test_statements_balance_over_periods(rt: Runtime) -> None:
    stocked_reseller(rt, credit_limit=10_000)
    sell(rt, "a", count=2)
    accounts.record_payment(rt, CONSOLE, "DIST", {"amount": 1500, "reference": "bank 1"})
    middle = utcnow()
    sell(rt, "b", count=3)
    accounts.record_payment(rt, CONSOLE, "DIST", {"amount": 2000, "reference": "bank 2"})
    due = accounts.get_reseller(rt, CONSOLE, "DIST")["balance_due"]
    start = middle - timedelta(days=1)
    whole = statements.statement(rt, CONSOLE, "DIST", since=start)
    before = statements.statement(rt, CONSOLE, "DIST", since=start, until=middle)
    after = statements.statement(rt, CONSOLE, "DIST", since=middle)
    for report in (whole, before, after):
        assert report["closing_balance"] == (
            report["opening_balance"] + report["sales"] - report["commission"] - report["payments"]
        )
    assert whole["opening_balance"] == 0
    assert whole["closing_balance"] == after["closing_balance"] == due == 5 * NET - 3500
    assert after["opening_balance"] == before["closing_balance"] == 2 * NET - 1500
    assert (after["sales"], after["payments"]) == (3 * PRICE, 2000)
    printed = PdfReader(io.BytesIO(statements.statement_pdf(after)), strict=True)
    text = "\n".join(page.extract_text() for page in printed.pages).splitlines()
    start = text.index(f"opening balance {after['opening_balance']}")
    assert text[start : start + 5] == [
        f"opening balance {2 * NET - 1500}",
        f"sales {3 * PRICE}",
        f"commission {after['commission']}",
        "payments 2000",
        f"closing balance {due}",
    ]
    entries = [line.split()[2:] for line in text if line.startswith("20")]
    assert [entry[0] for entry in entries] == [line["kind"] for line in after["lines"]]
    assert entries[-1] == ["payment", "2000", str(due), "bank", "2"]
    assert "closing_balance," in statements.statement_csv(whole)


def test_a_payment_with_a_request_id_is_recorded_once(rt: Runtime) -> None:
    stocked_reseller(rt)
    body = {"amount": 500, "reference": "cash", "request_id": "p-1"}
    first, new = accounts.record_payment(rt, CONSOLE, "DIST", body)
    again, repeated = accounts.record_payment(rt, CONSOLE, "DIST", body)
    assert (new, repeated, again) == (True, False, first)
    assert accounts.get_reseller(rt, CONSOLE, "DIST")["balance_due"] == -500


def test_a_resellers_key_cannot_record_payments(rt: Runtime) -> None:
    stocked_reseller(rt)
    with pytest.raises(Forbidden):
        accounts.record_payment(
            rt, reseller_key(rt, "DIST"), "DIST", {"amount": 1, "reference": "x"}
        )


def test_sell_through_counts_redeemed_vouchers(rt: Runtime) -> None:
    stocked_reseller(rt)
    factories.subscriber(rt)
    sold = sell(rt, "st", count=2)
    redemption.redeem(
        rt, CONSOLE, RedemptionRequest(msisdn="254700000001", pin=sold["vouchers"][0]["pin"])
    )
    report = statements.sell_through(rt, CONSOLE, "DIST")
    assert report["rows"] == [
        {"reseller": "DIST", "voucher_type": "TOPUP10", "on_hand": 18, "sold": 2, "redeemed": 1}
    ]


def test_a_sale_takes_vouchers_in_proportion_to_its_count_not_the_batch(rt: Runtime) -> None:
    stocked_reseller(rt, count=2000)
    sell(rt, "one", count=1)
    with rt.engine.connect() as conn:
        parts = conn.execute(
            select(t.batches.c.id, t.batches.c.count).order_by(t.batches.c.id)
        ).all()
    # The sold voucher moved to an active part of the batch; the batch kept the others.
    assert [tuple(row) for row in parts] == [(1, 1999), (2, 1)]
    assert stock.list_stock(rt, CONSOLE, "DIST")["items"][0]["on_hand"] == 1999


def test_bad_bodies_are_refused_as_invalid(rt: Runtime) -> None:
    stocked_reseller(rt)
    for body in (
        b"not json",
        {"voucher_type": "TOPUP10", "count": 0, "request_id": "x", "reseller": "DIST"},
        {"voucher_type": "TOPUP10", "count": 101, "request_id": "x", "reseller": "DIST"},
        {"voucher_type": "TOPUP10", "count": 1, "request_id": "", "reseller": "DIST"},
        {"voucher_type": "TOPUP10", "count": 1, "request_id": "x", "deliver_to_msisdn": "abc"},
        [],
    ):
        with pytest.raises(VomsError) as refused:
            sales.sell(rt, CONSOLE, body)
        assert refused.value.http_status == 422


def test_printed_cards_are_activated_by_range_and_paid_for_never_sold_as_pins(
    rt: Runtime, partner_keys: PartnerKeys
) -> None:
    factories.standard_catalog(rt)
    reseller(rt, "DIST")
    found = serials(rt, inactive_batch(rt, 10))
    distribution.create_partner(
        rt, CONSOLE, distribution.PartnerIn(name="printshop", public_key=partner_keys.good)
    )
    distribution.create_export(
        rt, CONSOLE, distribution.ExportIn(partner="printshop", batch_id=1), output=io.BytesIO()
    )
    held = hand_over(rt, "DIST", found[0], found[9])
    assert held["kind"] == "printed"
    with pytest.raises(Conflict, match="not enough electronic stock"):
        sell(rt, "no-pins")
    lifecycle.change_vouchers(rt, CONSOLE, "freeze", found[4], reason="stolen")

    activated = sales.activate(
        rt, CONSOLE, "DIST", {"serial_from": found[3], "serial_to": found[6]}
    )
    assert (activated["count"], activated["charged"]) == (3, 3 * NET)  # not the frozen one
    states = [care.voucher_by_serial(rt, CONSOLE, serial)["state"] for serial in found[2:8]]
    assert states == ["inactive", "active", "frozen", "active", "active", "inactive"]
    with pytest.raises(Conflict, match="already activated"):
        sales.activate(rt, CONSOLE, "DIST", {"serial_from": found[5], "serial_to": found[7]})
    left = {
        row["serial_from"]: row["on_hand"] for row in stock.list_stock(rt, CONSOLE, "DIST")["items"]
    }
    assert left == {found[0]: 3, found[3]: 0, found[7]: 3}
    assert statements.sell_through(rt, CONSOLE, "DIST")["totals"] == {
        "on_hand": 6,
        "sold": 3,
        "redeemed": 0,
    }


def test_electronic_stock_is_not_activated_by_range(rt: Runtime) -> None:
    found = stocked_reseller(rt)
    with pytest.raises(Conflict, match="selling it"):
        sales.activate(rt, CONSOLE, "DIST", {"serial_from": found[0], "serial_to": found[1]})


def test_vouchers_sold_as_electronic_pins_are_never_exported(
    rt: Runtime, partner_keys: PartnerKeys
) -> None:
    found = stocked_reseller(rt, count=5)
    sell(rt, "sold", count=2)
    distribution.create_partner(
        rt, CONSOLE, distribution.PartnerIn(name="printshop", public_key=partner_keys.good)
    )
    exported = distribution.create_export(
        rt,
        CONSOLE,
        distribution.ExportIn(partner="printshop", serial_from=found[0], serial_to=found[4]),
        output=io.BytesIO(),
    )
    assert exported["voucher_count"] == 3
    with pytest.raises(VomsError):
        distribution.create_export(
            rt,
            CONSOLE,
            distribution.ExportIn(partner="printshop", batch_id=2),
            output=io.BytesIO(),
        )
