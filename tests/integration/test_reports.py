"""Reports against a known fixture, on both databases: redemptions at known times and
channels, failures, range operations; rollups equal a full recount."""

import contextlib
from collections import Counter
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import func, insert, select, update

from tests import factories
from voms.db import tables as t
from voms.db.types import utcnow
from voms.domain.errors import Conflict, Forbidden, Invalid, NotFound, ResultError
from voms.domain.roles import Role
from voms.runtime import Runtime
from voms.services import lifecycle, ranges, redemption
from voms.services.auth import CONSOLE, Principal
from voms.services.redemption import RedemptionRequest
from voms.services.reports import Query, render, rollups, run_report

MSISDN = "254700000001"
T0 = datetime(2026, 3, 10, 9, 15, tzinfo=UTC)
FOLD_ALL = datetime(2100, 1, 1, tzinfo=UTC)
MARCH = Query(since="2026-03-01T00:00:00+00:00", until="2026-04-01T00:00:00+00:00")


def _redeem(rt: Runtime, pin: str, channel: str = "rest") -> int:
    """The result code of a redemption (a refused one is recorded, then raised)."""
    try:
        redemption.redeem(rt, CONSOLE, RedemptionRequest(msisdn=MSISDN, pin=pin, channel=channel))
    except ResultError as refused:
        return refused.result.code
    return 0


def _at(rt: Runtime, moments: list[datetime]) -> None:
    """Give the transactions made so far, oldest first, these times (known times)."""
    tx = t.transactions
    with rt.engine.begin() as conn:
        ids = conn.execute(select(tx.c.id).order_by(tx.c.at, tx.c.id)).scalars().all()
        assert len(ids) == len(moments)
        for each, moment in zip(ids, moments, strict=True):
            conn.execute(update(tx).where(tx.c.id == each).values(at=moment))


def _export_to_partner(rt: Runtime, serials: list[str]) -> None:
    """An export of three ACME vouchers to a print shop, recorded as distribution does."""
    with rt.engine.begin() as conn:
        sp_id = conn.execute(
            select(t.service_providers.c.id).where(t.service_providers.c.code == "ACME")
        ).scalar_one()
        partner_id = conn.execute(
            insert(t.partners)
            .values(
                name="printshop",
                public_key="-",
                key_fingerprint="F" * 40,
                key_user_ids=[],
                state="active",
                created_by="test",
                created_at=T0,
            )
            .returning(t.partners.c.id)
        ).scalar_one()
        export_id = conn.execute(
            insert(t.exports)
            .values(
                service_provider_id=sp_id,
                partner_id=partner_id,
                format="csv",
                filters={},
                reissue=False,
                voucher_count=len(serials),
                reissued_count=0,
                key_fingerprint="F" * 40,
                file_name="x.csv.gpg",
                sha256="0" * 64,
                size_bytes=1,
                created_by="test",
                created_at=T0 - timedelta(days=1),
                state="exported",
                exported_count=len(serials),
                updated_at=T0 - timedelta(days=1),
            )
            .returning(t.exports.c.id)
        ).scalar_one()
        conn.execute(
            insert(t.voucher_exports),
            [
                {"serial": int(serial), "export_id": export_id, "partner_id": partner_id}
                for serial in serials
            ],
        )


@pytest.fixture
def known(rt: Runtime) -> dict[str, Any]:
    """ACME with 10 vouchers of 1000 KES cents: three redeemed (USSD, USSD, SMS), one
    reserved and committed (REST), one reserved and revoked, one redeemed twice (2009),
    a PIN with a bad check digit (2002); two frozen, one deleted; the first three
    exported to a partner. A second provider with 4 vouchers."""
    factories.standard_catalog(rt)
    factories.standard_catalog(rt, "BETA")
    factories.subscriber(rt, MSISDN)
    vouchers = factories.active_batch(rt, count=10)
    factories.active_batch(rt, "TOPUP10_BETA", count=4)
    pins = [pin for _, pin in vouchers]
    assert _redeem(rt, pins[0], "ussd") == 0
    assert _redeem(rt, pins[1], "ussd") == 0
    assert _redeem(rt, pins[2], "sms") == 0
    held = redemption.reserve(rt, CONSOLE, RedemptionRequest(msisdn=MSISDN, pin=pins[3]))
    redemption.commit(rt, CONSOLE, held["reservation_id"])
    held = redemption.reserve(rt, CONSOLE, RedemptionRequest(msisdn=MSISDN, pin=pins[4]))
    redemption.revoke(rt, CONSOLE, held["reservation_id"])
    assert _redeem(rt, pins[0], "ussd") == 2009
    bad = pins[5][:-1] + str((int(pins[5][-1]) + 1) % 10)
    assert _redeem(rt, bad, "sms") == 2002
    # 10 transactions: 3 redemptions, reserve+commit, reserve+revoke, 2009, 2002.
    _at(
        rt,
        [
            T0,  # ussd redemption, 10 March 09:xx
            T0 + timedelta(minutes=30),  # ussd redemption, 10 March 09:xx
            T0 + timedelta(days=1),  # sms redemption, 11 March
            T0 + timedelta(days=1, hours=2),  # reservation
            T0 + timedelta(days=1, hours=3),  # commit (rest), 11 March
            T0 + timedelta(days=2),  # reservation
            T0 + timedelta(days=2, minutes=1),  # revoke
            T0 + timedelta(days=25),  # 2009 (ussd), 4 April
            T0 + timedelta(days=2, minutes=2),  # 2002 (sms)
        ],
    )
    lifecycle.change_vouchers(rt, CONSOLE, "freeze", vouchers[6][0], vouchers[7][0])
    lifecycle.change_vouchers(rt, CONSOLE, "delete", vouchers[8][0])
    _export_to_partner(rt, [serial for serial, _ in vouchers[:3]])
    rollups.fold(rt, until=FOLD_ALL)
    return {"vouchers": vouchers}


def _rows(report: Any, *columns: str) -> list[tuple[Any, ...]]:
    return [tuple(row[c] for c in columns) for row in report.rows]


def test_redemptions_per_day_and_channel(rt: Runtime, known: dict[str, Any]) -> None:
    report = run_report(rt, CONSOLE, "redemptions", MARCH)
    assert _rows(report, "period", "channel", "count", "value", "currency") == [
        ("2026-03-10", "ussd", 2, 2000, "KES"),
        ("2026-03-11", "rest", 1, 1000, "KES"),
        ("2026-03-11", "sms", 1, 1000, "KES"),
    ]
    assert report.totals == {"count": 4, "value": {"KES": 4000}}
    body = report.as_json()
    assert body["since"] == "2026-03-01T00:00:00+00:00"
    assert body["until"] == "2026-04-01T00:00:00+00:00"


def test_redemptions_per_hour_and_month_and_by_voucher_type(
    rt: Runtime, known: dict[str, Any]
) -> None:
    by_hour = run_report(
        rt,
        CONSOLE,
        "redemptions",
        Query(since="2026-03-10T09:00:00+00:00", until="2026-03-11T12:30:00Z", group_by="hour"),
    )
    assert _rows(by_hour, "period", "channel", "count") == [
        ("2026-03-10T09:00:00+00:00", "ussd", 2),
        ("2026-03-11T09:00:00+00:00", "sms", 1),
        ("2026-03-11T12:00:00+00:00", "rest", 1),  # 12:15, in the hour 12:30 rounds up to
    ]
    assert by_hour.until == datetime(2026, 3, 11, 13, tzinfo=UTC)  # rounded up to the hour
    # A period that starts and ends inside days reads hourly edges and daily middles.
    edges = run_report(
        rt,
        CONSOLE,
        "redemptions",
        Query(since="2026-03-10T09:30:00+00:00", until="2026-03-12T01:00:00+00:00"),
    )
    assert edges.totals["count"] == 4
    monthly = run_report(
        rt, CONSOLE, "redemptions", Query(since=MARCH.since, group_by="month", by="voucher_type")
    )
    assert _rows(monthly, "period", "voucher_type", "count", "value") == [
        ("2026-03", "TOPUP10", 4, 4000)
    ]


def test_failures_by_result_code_and_channel(rt: Runtime, known: dict[str, Any]) -> None:
    march = run_report(rt, CONSOLE, "failures", MARCH)
    assert _rows(march, "result_code", "channel", "count") == [(2002, "sms", 1)]
    both = run_report(
        rt, CONSOLE, "failures", Query(since=MARCH.since, until="2026-05-01T00:00:00Z")
    )
    assert _rows(both, "result_code", "result_text", "channel", "count") == [
        (2002, "Invalid voucher number", "sms", 1),
        (2009, "Voucher already redeemed", "ussd", 1),
    ]
    assert both.totals == {"count": 2}


def test_inventory_and_liability_come_from_the_maintained_counts(
    rt: Runtime, known: dict[str, Any]
) -> None:
    inventory = run_report(rt, CONSOLE, "inventory", Query(service_provider="ACME"))
    # 10 vouchers: 4 redeemed (one by commit), 2 frozen, 1 deleted, 3 active (one revoked).
    assert sorted(_rows(inventory, "voucher_type", "state", "count", "value")) == [
        ("TOPUP10", "active", 3, 3000),
        ("TOPUP10", "deleted", 1, 1000),
        ("TOPUP10", "frozen", 2, 2000),
        ("TOPUP10", "redeemed", 4, 4000),
    ]
    assert inventory.totals == {"count": 10, "value": {"KES": 10000}}
    liability = run_report(rt, CONSOLE, "liability", Query())
    assert _rows(liability, "service_provider", "currency", "count", "value") == [
        ("ACME", "KES", 5, 5000),  # 3 active + 2 frozen (sold, not redeemed, not expired)
        ("BETA", "KES", 4, 4000),
    ]


def test_partners_exported_and_redeemed(rt: Runtime, known: dict[str, Any]) -> None:
    report = run_report(rt, CONSOLE, "partners", MARCH)
    assert _rows(report, "partner", "service_provider", "exported", "redeemed", "value") == [
        ("printshop", "ACME", 3, 3, 3000)
    ]
    by_partner = run_report(
        rt, CONSOLE, "redemptions", Query(since=MARCH.since, by="partner", group_by="month")
    )
    assert _rows(by_partner, "period", "partner", "count") == [
        ("2026-03", None, 1),  # the committed voucher went to no partner
        ("2026-03", "printshop", 3),
    ]


def test_expiries_read_the_counted_batches(rt: Runtime, known: dict[str, Any]) -> None:
    with rt.engine.begin() as conn:
        batch = conn.execute(select(t.batches).order_by(t.batches.c.id)).first()
        assert batch is not None
        conn.execute(
            insert(t.batch_expiries).values(
                batch_id=batch.id,
                service_provider_id=batch.service_provider_id,
                voucher_type_id=batch.voucher_type_id,
                expires_at=T0,
                expired_count=3,
                counted_at=T0,
            )
        )
    report = run_report(rt, CONSOLE, "expiries", MARCH)
    assert _rows(report, "batch_id", "count", "value", "currency") == [(batch.id, 3, 3000, "KES")]


def test_monthly_summary_in_every_format(rt: Runtime, known: dict[str, Any]) -> None:
    summary = run_report(rt, CONSOLE, "summary", Query(month="2026-03"))
    assert _rows(summary, "period", "count", "value") == [
        ("2026-03-10", 2, 2000),
        ("2026-03-11", 2, 2000),
    ]
    body = summary.as_json()
    assert body["liability"]["totals"]["count"] == 9
    assert {r["channel"]: r["count"] for r in body["by_channel"]["rows"]} == {
        "ussd": 2,
        "sms": 1,
        "rest": 1,
    }
    pdf = render(summary, "pdf")
    assert pdf.startswith(b"%PDF-")
    csv_text = render(summary, "csv").decode()
    assert csv_text.splitlines()[0] == "period,count,value,currency"
    assert csv_text.splitlines()[-1] == "total,4,4000,"


def test_scope_and_role_come_before_validation(rt: Runtime, known: dict[str, Any]) -> None:
    with rt.engine.connect() as conn:
        beta = conn.execute(
            select(t.service_providers.c.id).where(t.service_providers.c.code == "BETA")
        ).scalar_one()
    scoped = Principal(name="beta-auditor", role=Role.AUDITOR, service_provider_id=beta)
    with pytest.raises(Forbidden):
        run_report(rt, scoped, "liability", Query(service_provider="ACME"))
    with pytest.raises(Forbidden):
        run_report(rt, scoped, "nonsense", Query(service_provider="NOPE", group_by="x"))
    with pytest.raises(Forbidden):
        run_report(rt, Principal(name="ch", role=Role.CHANNEL), "nonsense", Query(since="x"))
    own = run_report(rt, scoped, "liability", Query())
    assert _rows(own, "service_provider", "count") == [("BETA", 4)]
    for role in (Role.OPERATOR, Role.CARE, Role.AUDITOR, Role.ADMIN):
        run_report(rt, Principal(name="p", role=role), "failures", MARCH)
    with pytest.raises(NotFound):
        run_report(rt, CONSOLE, "loyalty", Query())
    with pytest.raises(Invalid):
        run_report(rt, CONSOLE, "redemptions", Query(since="yesterday"))
    with pytest.raises(Invalid):
        run_report(rt, CONSOLE, "redemptions", Query(by="moon"))


def test_folding_again_adds_nothing_and_skips_unsettled_transactions(
    rt: Runtime, known: dict[str, Any]
) -> None:
    before = run_report(rt, CONSOLE, "redemptions", MARCH).rows
    rollups.fold(rt, until=FOLD_ALL)
    assert run_report(rt, CONSOLE, "redemptions", MARCH).rows == before
    assert rollups.watermark(rt) <= utcnow()  # never past the present


def _recount_moves(rt: Runtime) -> Counter[tuple[int, str]]:
    """The full recount the maintained counts must equal: vouchers per batch and state."""
    v, b = t.vouchers, t.batches
    with rt.engine.connect() as conn:
        counted: Counter[tuple[int, str]] = Counter()
        for batch_id, state, n in conn.execute(
            select(v.c.batch_id, v.c.state, func.count()).group_by(v.c.batch_id, v.c.state)
        ):
            counted[(batch_id, state)] += n
        for batch_id, generated in conn.execute(select(b.c.id, b.c.generated_count)):
            counted[(batch_id, "available")] -= generated
        maintained: Counter[tuple[int, str]] = Counter()
        for batch_id, state, net in conn.execute(select(t.voucher_state_moves)):
            maintained[(batch_id, state)] += net
    return Counter({k: n for k, n in (counted - maintained + (maintained - counted)).items()})


def recount_rollups(rt: Runtime) -> tuple[Counter[Any], Counter[Any]]:
    tx, h = t.transactions, t.report_hourly
    with rt.engine.connect() as conn:
        direct = Counter(
            {
                (k, c, r): n
                for k, c, r, n in conn.execute(
                    select(tx.c.kind, tx.c.channel, tx.c.result_code, func.count()).group_by(
                        tx.c.kind, tx.c.channel, tx.c.result_code
                    )
                )
            }
        )
        rolled = Counter(
            {
                (k, c, r): int(n)
                for k, c, r, n in conn.execute(
                    select(h.c.kind, h.c.channel, h.c.result_code, func.sum(h.c.count)).group_by(
                        h.c.kind, h.c.channel, h.c.result_code
                    )
                )
            }
        )
    return direct, rolled


def test_known_fixture_counts_equal_a_recount(rt: Runtime, known: dict[str, Any]) -> None:
    assert not _recount_moves(rt)
    direct, rolled = recount_rollups(rt)
    assert direct == rolled


# --- property: the maintained figures equal a recount after any operations ----------------

_OPERATION = st.one_of(
    st.tuples(st.just("redeem"), st.integers(0, 5), st.sampled_from(["ussd", "sms", "ivr"])),
    st.tuples(st.just("reserve"), st.integers(0, 5), st.just("rest")),
    st.tuples(st.sampled_from(["commit", "revoke"]), st.integers(0, 5), st.just("rest")),
    st.tuples(
        st.sampled_from(["freeze", "unfreeze", "delete"]), st.integers(0, 5), st.integers(0, 2)
    ),
    st.tuples(st.just("bad_pin"), st.integers(0, 5), st.just("sms")),
    st.tuples(st.just("fold"), st.just(0), st.just("")),
    # Range operations that move vouchers into a part of their batch (voms.services.ranges):
    # another expiry for a range of the active batch, a range of an inactive one activated.
    st.tuples(st.sampled_from(["amend", "activate"]), st.integers(0, 5), st.integers(0, 2)),
)


@settings(
    max_examples=8,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(operations=st.lists(_OPERATION, min_size=1, max_size=14))
def test_rollups_equal_a_full_recount_after_random_operations(
    rt: Runtime, operations: list[tuple[str, int, Any]]
) -> None:
    """Each example works on a batch of its own; the invariants hold over the database."""
    with rt.engine.connect() as conn:
        first_example = conn.execute(select(t.service_providers)).first() is None
    if first_example:
        factories.standard_catalog(rt)
        factories.subscriber(rt, MSISDN)
    vouchers = factories.active_batch(rt, count=6)
    inactive = factories.active_batch(rt, count=6, activate=False)
    reservations: dict[int, str] = {}
    for action, index, extra in operations:
        serial, pin = vouchers[index]
        if action == "redeem":
            _redeem(rt, pin, extra)
        elif action == "reserve":
            with contextlib.suppress(ResultError):  # refused: recorded, nothing moved
                held = redemption.reserve(rt, CONSOLE, RedemptionRequest(msisdn=MSISDN, pin=pin))
                reservations[index] = held["reservation_id"]
        elif action in ("commit", "revoke") and index in reservations:
            with contextlib.suppress(ResultError):
                getattr(redemption, action)(rt, CONSOLE, reservations.pop(index))
        elif action in ("freeze", "unfreeze", "delete"):
            last = vouchers[min(index + extra, len(vouchers) - 1)][0]
            with contextlib.suppress(Conflict):  # none of the range could move
                lifecycle.change_vouchers(rt, CONSOLE, action, serial, last)
        elif action == "amend":
            last = vouchers[min(index + extra, len(vouchers) - 1)][0]
            expires_at = utcnow() + timedelta(days=400 + index)
            with contextlib.suppress(Conflict):  # already this expiry
                ranges.amend_range(rt, CONSOLE, serial, last, expires_at)
        elif action == "activate":
            last = inactive[min(index + extra, len(inactive) - 1)][0]
            with contextlib.suppress(Conflict):  # active already
                ranges.activate_range(rt, CONSOLE, inactive[index][0], last)
        elif action == "bad_pin":
            _redeem(rt, pin[:-1] + str((int(pin[-1]) + 1) % 10), extra)
        elif action == "fold":
            rollups.fold(rt, until=utcnow())
    rollups.fold(rt, until=utcnow())
    assert not _recount_moves(rt)
    direct, rolled = recount_rollups(rt)
    assert direct == rolled
