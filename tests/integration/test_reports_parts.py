"""Inventory and liability read the maintained per-batch counts: they must equal a recount
from the vouchers table after vouchers move into a part of their batch (a range
activation, a reseller's activation of printed cards, an electronic sale)."""

import io
from collections import Counter
from typing import Any

from sqlalchemy import select

from tests import factories
from tests.integration.test_reports import _recount_moves
from tests.pgp import PartnerKeys
from tests.reseller_support import hand_over, inactive_batch, reseller, serials, stocked_reseller
from voms.db import tables as t
from voms.db.types import utcnow
from voms.domain.states import BatchState, VoucherState, effective_voucher_state, is_expired
from voms.runtime import Runtime
from voms.services import distribution, lifecycle, ranges, redemption
from voms.services.auth import CONSOLE
from voms.services.redemption import RedemptionRequest
from voms.services.reports import Query, rollups, run_report
from voms.services.reports.queries import OUTSTANDING
from voms.services.resellers import sales

NOW = Query()


def _recounted(rt: Runtime) -> tuple[Counter[tuple[int, str]], Counter[str | None]]:
    """Inventory (per batch and shown state) and liability (per service provider)
    counted voucher by voucher."""
    v, b, sp = t.vouchers, t.batches, t.service_providers
    now = utcnow()
    inventory: Counter[tuple[int, str]] = Counter()
    liability: Counter[str | None] = Counter()
    with rt.engine.connect() as conn:
        rows = conn.execute(
            select(v.c.state, b.c.id, b.c.state.label("batch_state"), b.c.expires_at, sp.c.code)
            .join(b, b.c.id == v.c.batch_id)
            .join(sp, sp.c.id == b.c.service_provider_id)
            .where(b.c.state != BatchState.FAILED.value)
        ).all()
    for own, batch_id, batch_state, expires_at, provider in rows:
        expired = is_expired(expires_at, now)
        shown = effective_voucher_state(BatchState(batch_state), VoucherState(own), expired)
        inventory[(batch_id, shown)] += 1
        if batch_state == BatchState.ACTIVE.value and not expired and own in OUTSTANDING:
            liability[provider] += 1
    return inventory, liability


def _reported(rt: Runtime) -> tuple[Counter[tuple[int, str]], Counter[str | None]]:
    inventory = Counter(
        {
            (row["batch_id"], row["state"]): row["count"]
            for row in run_report(rt, CONSOLE, "inventory", NOW).rows
        }
    )
    liability = Counter(
        {
            row["service_provider"]: row["count"]
            for row in run_report(rt, CONSOLE, "liability", NOW).rows
            if row["count"]
        }
    )
    return inventory, liability


def _assert_reports_equal_a_recount(rt: Runtime) -> None:
    rollups.fold(rt, until=utcnow())
    assert not _recount_moves(rt)
    assert _reported(rt) == _recounted(rt)


def test_range_activation_of_part_of_a_batch(rt: Runtime) -> None:
    factories.standard_catalog(rt)
    factories.subscriber(rt, "254700000001")
    found = serials(rt, inactive_batch(rt, 12))
    lifecycle.change_vouchers(rt, CONSOLE, "freeze", found[4])
    ranges.activate_range(rt, CONSOLE, found[2], found[6])
    _assert_reports_equal_a_recount(rt)
    # A second range next to the first joins its part; a redemption in it is counted.
    ranges.activate_range(rt, CONSOLE, found[7], found[8])
    _assert_reports_equal_a_recount(rt)
    inventory, liability = _reported(rt)
    assert liability == Counter({"ACME": 7})  # a frozen voucher is still owed
    assert inventory[(1, "inactive")] == 5


def test_amending_a_range_with_redemptions_not_folded_yet(rt: Runtime) -> None:
    """Vouchers redeemed but not folded yet change batch: the fold counts them in the part."""
    factories.standard_catalog(rt)
    factories.subscriber(rt, "254700000001")
    vouchers = factories.active_batch(rt, count=6)
    request = RedemptionRequest(msisdn="254700000001", pin=vouchers[1][1])
    redemption.redeem(rt, CONSOLE, request)
    later = utcnow().replace(year=utcnow().year + 2)
    ranges.amend_range(rt, CONSOLE, vouchers[0][0], vouchers[2][0], later)
    _assert_reports_equal_a_recount(rt)


def test_a_reseller_activation_of_printed_cards(rt: Runtime, partner_keys: PartnerKeys) -> None:
    factories.standard_catalog(rt)
    reseller(rt, "DIST")
    found = serials(rt, inactive_batch(rt, 10))
    distribution.create_partner(
        rt, CONSOLE, distribution.PartnerIn(name="printshop", public_key=partner_keys.good)
    )
    distribution.create_export(
        rt, CONSOLE, distribution.ExportIn(partner="printshop", batch_id=1), output=io.BytesIO()
    )
    hand_over(rt, "DIST", found[0], found[9])
    lifecycle.change_vouchers(rt, CONSOLE, "freeze", found[4])
    sales.activate(rt, CONSOLE, "DIST", {"serial_from": found[3], "serial_to": found[6]})
    _assert_reports_equal_a_recount(rt)
    assert _reported(rt)[1] == Counter({"ACME": 4})  # the frozen card is a liability too


def test_an_electronic_sale(rt: Runtime) -> None:
    stocked_reseller(rt, count=10)
    answer: dict[str, Any] = sales.sell(
        rt,
        CONSOLE,
        {"voucher_type": "TOPUP10", "count": 3, "request_id": "s-1", "reseller": "DIST"},
    ).answer
    factories.subscriber(rt, "254700000001")
    pin = answer["vouchers"][0]["pin"]
    redemption.redeem(rt, CONSOLE, RedemptionRequest(msisdn="254700000001", pin=pin))
    _assert_reports_equal_a_recount(rt)
    sales.sell(
        rt,
        CONSOLE,
        {"voucher_type": "TOPUP10", "count": 2, "request_id": "s-2", "reseller": "DIST"},
    )
    _assert_reports_equal_a_recount(rt)
    assert _reported(rt)[1] == Counter({"ACME": 4})  # five sold, one redeemed
