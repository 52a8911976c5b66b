"""Console pages through HTTP: the dashboard's figures from the report tables, the
exports filter, a partner's key replaced, redeem on behalf once per request id, and
the HTML 404 of the console."""

import json
import re

import pytest
from sqlalchemy import Connection, func, insert, select

from tests import factories
from tests.api.test_console import PASSWORD, client, console, csrf_of, signed_in
from tests.pgp import PartnerKeys
from voms.db import tables as t
from voms.db.types import utcnow
from voms.runtime import Runtime
from voms.services import auth, distribution, people, redemption
from voms.services.auth import CONSOLE
from voms.services.reports import rollups
from voms.web import base

__all__ = ["console"]  # the fixture, shared with test_console


def _chart(html: str, name: str) -> dict[str, object]:
    found = re.search(rf'<script type="application/json" id="data-{name}">(.*?)</script>', html)
    assert found is not None
    return json.loads(found.group(1))  # type: ignore[no-any-return]


def _outstanding(html: str) -> list[str]:
    return re.findall(r'<td class="value-outstanding">([^<]*)</td>', html)


def test_the_dashboard_shows_value_outstanding_and_redemptions_from_the_rollups(
    console: Runtime,
) -> None:
    vouchers = factories.active_batch(console, count=3)
    redeemed = redemption.redeem(
        console,
        CONSOLE,
        redemption.RedemptionRequest(msisdn="254700000001", pin=vouchers[0][1], channel="ussd"),
    )
    assert redeemed["result_code"] == 0
    browser = signed_in(console, "root")
    before = browser.get("/ui/").text
    # the rollups have not seen the redemption yet: three vouchers of 10.00 KES out
    assert _outstanding(before) == ["30.00 KES"]
    assert _chart(before, "hours")["series"] == {}

    rollups.fold(console, until=utcnow())
    after = browser.get("/ui/").text
    assert _outstanding(after) == ["20.00 KES"]
    series = _chart(after, "hours")["series"]
    assert isinstance(series, dict)
    assert sum(series["ussd ok"]) == 1
    assert series["ussd ok"][-1] == 1  # this hour, the last of the 24


def test_the_exports_table_is_filtered_by_partner(
    console: Runtime, partner_keys: PartnerKeys
) -> None:
    factories.active_batch(console, count=4)
    for name in ("alpha", "beta"):
        distribution.create_partner(
            console,
            CONSOLE,
            distribution.PartnerIn(
                name=name, public_key=partner_keys.good, service_provider="ACME"
            ),
        )
        distribution.create_export(
            console,
            CONSOLE,
            distribution.ExportIn(partner=name, voucher_type="TOPUP10", reissue=True),
        )
    browser = signed_in(console, "root")
    both = browser.get("/ui/distribution").text
    assert "Exports, newest first" in both
    only = browser.get("/ui/distribution?partner=beta")
    assert only.status_code == 200
    assert "Exports to beta, newest first" in only.text
    exports = only.text.split('id="x-h"', 1)[1]
    rows = re.findall(r"<tr><td>(\d+)</td><td>(\w+)</td>", exports)
    assert [partner for _, partner in rows] == ["beta"]
    csv = browser.get("/ui/distribution?partner=beta&format=csv").text.splitlines()
    assert len(csv) == 2
    assert ",beta," in csv[1]


def test_a_partners_key_is_replaced_in_the_console(
    console: Runtime, partner_keys: PartnerKeys
) -> None:
    distribution.create_partner(
        console,
        CONSOLE,
        distribution.PartnerIn(name="printshop", public_key=partner_keys.good),
    )
    old = distribution.get_partner(console, CONSOLE, "printshop")["key_fingerprint"]
    browser = signed_in(console, "root")
    page = browser.get("/ui/distribution")
    assert 'action="/ui/partners/key"' in page.text
    refused = browser.post(
        "/ui/partners/key",
        data={
            "name": "printshop",
            "public_key": partner_keys.expired,
            "csrf_token": csrf_of(page.text),
        },
    )
    assert refused.status_code == 422
    assert "public key refused" in refused.text
    assert distribution.get_partner(console, CONSOLE, "printshop")["key_fingerprint"] == old
    replaced = browser.post(
        "/ui/partners/key",
        data={
            "name": "printshop",
            "public_key": partner_keys.other,
            "csrf_token": csrf_of(page.text),
        },
    )
    assert replaced.status_code == 303
    assert distribution.get_partner(console, CONSOLE, "printshop")["key_fingerprint"] != old


def test_redeem_on_behalf_sent_twice_redeems_once(console: Runtime) -> None:
    [(serial, pin)] = factories.active_batch(console, count=1)
    browser = signed_in(console, "carol")
    page = browser.get("/ui/care?msisdn=254700000001")
    found = re.search(r'name="request_id" value="([^"]+)"', page.text)
    assert found is not None
    form = {
        "msisdn": "254700000001",
        "pin": pin,
        "reason": "read out on the phone",
        "request_id": found.group(1),
        "csrf_token": csrf_of(page.text),
    }
    first = browser.post("/ui/care/redeem", data=form)
    again = browser.post("/ui/care/redeem", data=form)  # a double click, a retry
    for answer in (first, again):
        assert answer.status_code == 200
        assert f"Voucher {serial} redeemed" in answer.text
        assert pin not in answer.text
    with console.engine.connect() as conn:
        count = conn.execute(
            select(func.count()).where(t.transactions.c.serial == int(serial))
        ).scalar_one()
    assert count == 1
    # a form shown again carries a new id: a new attempt, refused as already redeemed
    fresh = re.search(r'name="request_id" value="([^"]+)"', again.text)
    assert fresh is not None
    assert fresh.group(1) != found.group(1)
    third = browser.post("/ui/care/redeem", data={**form, "request_id": fresh.group(1)})
    assert "2009" in third.text


def test_an_unknown_console_page_is_an_html_404(console: Runtime) -> None:
    anonymous = client(console).get("/ui/no/such/page")
    assert anonymous.status_code == 404
    assert anonymous.headers["content-type"].startswith("text/html")
    assert "Page not found" in anonymous.text
    assert "Content-Security-Policy" in anonymous.headers
    browser = signed_in(console, "root")
    for method in ("GET", "POST"):
        answer = browser.request(method, "/ui/reports/nope/<script>")
        assert answer.status_code == 404
        assert answer.headers["content-type"].startswith("text/html")
        assert "<script>" not in answer.text
        assert 'href="/ui/batches"' in answer.text  # the menu of a signed-in person


def test_the_reports_page_charts_each_report_and_downloads_it_in_every_format(
    console: Runtime,
) -> None:
    vouchers = factories.active_batch(console, count=3)
    for _, pin in vouchers[:2]:
        answer = redemption.redeem(
            console,
            CONSOLE,
            redemption.RedemptionRequest(msisdn="254700000001", pin=pin, channel="ussd"),
        )
        assert answer["result_code"] == 0
    rollups.fold(console, until=utcnow())
    browser = signed_in(console, "root")
    page = browser.get("/ui/reports?name=redemptions&group_by=day&by=channel")
    assert page.status_code == 200
    chart = _chart(page.text, "report")
    assert chart["type"] == "line"
    assert chart["series"] == {"ussd": [2]}
    assert 'href="/ui/reports"' in page.text  # in the menu
    assert "20.00 KES" in page.text  # two vouchers of 10.00 KES, shown as money
    liability = _chart(browser.get("/ui/reports?name=liability").text, "report")
    assert liability["series"] == {"value": [10.0]}  # one voucher of 10.00 KES left
    for name in ("inventory", "failures", "expiries", "partners", "summary"):
        shown = browser.get(f"/ui/reports?name={name}")
        assert shown.status_code == 200, name
        assert 'id="data-report"' in shown.text
    base = "/ui/reports/redemptions/download?group_by=day&by=channel&format="
    as_json = browser.get(base + "json")
    assert as_json.json()["totals"]["count"] == 2
    as_csv = browser.get(base + "csv")
    assert as_csv.headers["content-type"].startswith("text/csv")
    assert as_csv.text.splitlines()[0].startswith("period,channel,count,value")
    assert browser.get(base + "xlsx").content[:2] == b"PK"
    month = utcnow().strftime("%Y-%m")
    pdf = browser.get(f"/ui/reports/summary/download?format=pdf&month={month}")
    assert pdf.content[:5] == b"%PDF-"
    assert pdf.headers["content-disposition"] == 'attachment; filename="summary.pdf"'
    refused = browser.get("/ui/reports?name=redemptions&since=yesterday")
    assert refused.status_code == 422
    assert "since" in refused.text


def test_the_reports_page_keeps_to_the_viewers_role_and_provider(console: Runtime) -> None:
    people.create_user(console, CONSOLE, username="dora", role="distributor", password=PASSWORD)
    assert signed_in(console, "dora").get("/ui/reports").status_code == 403
    carol = signed_in(console, "carol")  # care, scoped to ACME
    assert carol.get("/ui/reports?name=liability").status_code == 200
    other = carol.get("/ui/reports?name=liability&service_provider=OTHER")
    assert other.status_code == 403


def _providers_shown(html: str) -> list[str]:
    section = html.split('id="s-service_providers"', 1)[1].split('id="s-balance_types"', 1)[0]
    return re.findall(r"<tr><td>(\w+)</td>", section)


def test_catalog_tables_page_by_key_each_with_its_own_cursor(console: Runtime) -> None:
    for n in range(55):
        factories.service_provider(console, f"SP{n:02d}")
    browser = signed_in(console, "root")
    first = browser.get("/ui/catalog")
    assert first.status_code == 200
    shown = _providers_shown(first.text)
    assert len(shown) == 50
    found = re.search(
        r'href="(/ui/catalog\?service_providers_cursor=[^"]+)" rel="next"', first.text
    )
    assert found is not None
    rest = browser.get(found.group(1).replace("&amp;", "&")).text
    more = _providers_shown(rest)
    assert sorted(shown + more) == sorted(["ACME", "OTHER", *(f"SP{n:02d}" for n in range(55))])
    assert not set(shown) & set(more)
    csv = browser.get("/ui/catalog?table=service_providers&format=csv").text.splitlines()
    assert len(csv) == 1 + 57
    one = browser.get("/ui/catalog?service_provider=SP07").text
    assert _providers_shown(one) == ["SP07"]


def _cells(html: str, section: str, end: str | None = None) -> list[str]:
    """The first cell of each row of one section of a page."""
    part = html.split(f'id="{section}"', 1)[1]
    if end is not None:
        part = part.split(f'id="{end}"', 1)[0]
    return re.findall(r"<tr>\s*<td>([\w-]+)</td>", part)


def _next(html: str, name: str) -> str:
    found = re.search(rf'href="([^"]*{name}_cursor=[^"]+)" rel="next"', html)
    assert found is not None, f"no next page of {name}"
    return found.group(1).replace("&amp;", "&")


def test_people_and_keys_are_paged_and_filtered(
    console: Runtime, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(base, "PAGE_SIZE", 3)
    for n in range(4):
        people.create_user(
            console,
            CONSOLE,
            username=f"op{n}",
            role="operator",
            password=PASSWORD,
            service_provider="ACME" if n % 2 else "OTHER",
        )
    people.disable_user(console, CONSOLE, "op3")
    for n in range(5):
        auth.create_api_key(
            console,
            CONSOLE,
            name=f"key{n}",
            role="channel" if n < 3 else "care",
            service_provider="ACME" if n % 2 else None,
        )
    auth.revoke_api_key(console, CONSOLE, "key4")
    browser = signed_in(console, "root")

    first = browser.get("/ui/people?role=operator").text
    shown = _cells(first, "u-h", "a-h")
    assert shown == ["op0", "op1", "op2"]
    rest = browser.get(_next(first, "users")).text
    assert "role=operator" in _next(first, "users")  # the next page keeps the filter
    assert _cells(rest, "u-h", "a-h") == ["op3", "otto"]
    assert 'rel="next"' not in rest.split('id="a-h"')[0]
    acme = browser.get("/ui/people?service_provider=ACME&state=active").text
    assert _cells(acme, "u-h", "a-h") == ["carol", "op1"]
    disabled = browser.get("/ui/people?users_cursor=&state=disabled").text
    assert _cells(disabled, "u-h", "a-h") == ["op3"]
    csv = browser.get("/ui/people?role=operator&table=users&format=csv").text.splitlines()
    assert [line.split(",")[0] for line in csv[1:]] == ["op0", "op1", "op2", "op3", "otto"]
    old_csv = browser.get("/ui/people/users.csv?state=disabled").text.splitlines()
    assert [line.split(",")[0] for line in old_csv[1:]] == ["op3"]

    keys = browser.get("/ui/people").text
    assert _cells(keys, "a-h") == ["key0", "key1", "key2"]
    more = browser.get(_next(keys, "keys")).text
    assert _cells(more, "a-h") == ["key3", "key4"]
    assert _cells(browser.get("/ui/people?key_role=care").text, "a-h") == ["key3", "key4"]
    assert _cells(browser.get("/ui/people?key_state=revoked").text, "a-h") == ["key4"]
    assert _cells(
        browser.get("/ui/people?key_state=live&key_service_provider=ACME").text, "a-h"
    ) == ["key1", "key3"]
    key_csv = browser.get("/ui/people?key_role=channel&table=keys&format=csv").text
    assert [line.split(",")[0] for line in key_csv.splitlines()[1:]] == ["key0", "key1", "key2"]
    assert browser.get("/ui/people?key_state=lost").status_code == 422
    assert browser.get("/ui/people?users_cursor=garbage").status_code == 422


def test_the_partners_table_is_filtered_and_paged(
    console: Runtime, partner_keys: PartnerKeys, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(base, "PAGE_SIZE", 3)
    for name in ("alpha", "alpine", "beta", "bravo", "gamma"):
        distribution.create_partner(
            console, CONSOLE, distribution.PartnerIn(name=name, public_key=partner_keys.good)
        )
    distribution.disable_partner(console, CONSOLE, "bravo")
    browser = signed_in(console, "root")

    page = browser.get("/ui/distribution").text
    assert _cells(page, "p-h", "x-h") == ["alpha", "alpine", "beta"]
    rest = browser.get(_next(page, "partners")).text
    assert _cells(rest, "p-h", "x-h") == ["bravo", "gamma"]
    assert _cells(browser.get("/ui/distribution?partner_name=alp").text, "p-h", "x-h") == [
        "alpha",
        "alpine",
    ]
    assert _cells(browser.get("/ui/distribution?partner_state=disabled").text, "p-h", "x-h") == [
        "bravo"
    ]
    active_b = browser.get("/ui/distribution?partner_state=active&partner_name=b").text
    assert _cells(active_b, "p-h", "x-h") == ["beta"]
    # the export form still offers every active partner, whatever the table shows
    assert '<option value="gamma"' in active_b
    csv = browser.get("/ui/distribution?partner_name=a&table=partners&format=csv").text
    assert [line.split(",")[0] for line in csv.splitlines()[1:]] == ["alpha", "alpine"]
    old_csv = browser.get("/ui/distribution/partners.csv?partner_state=active").text
    assert [line.split(",")[0] for line in old_csv.splitlines()[1:]] == [
        "alpha",
        "alpine",
        "beta",
        "gamma",
    ]


def _open_alerts_shown(html: str) -> list[str]:
    """The dashboard's open operator alerts, as text."""
    if 'id="open-alerts-h"' not in html:
        return []
    part = html.split('id="open-alerts-h"', 1)[1].split("</ul>", 1)[0]
    items = re.findall(r"<li[^>]*>(.*?)</li>", part, re.S)
    text = [re.sub(r"\s+", " ", re.sub(r"<[^>]+>", "", item)).strip() for item in items]
    return [item.split(" since ")[0] for item in text]


def _alert(conn: Connection, key: str, kind: str, provider: int | None, **values: object) -> None:
    """An alert as the ``alert_detection`` job records it."""
    conn.execute(
        insert(t.alerts).values(
            occurrence_key=key,
            kind=kind,
            audience="operator",
            service_provider_id=provider,
            created_at=utcnow(),
            state="sent",
            **values,
        )
    )


def test_the_dashboard_lists_open_operator_alerts_of_the_viewers_provider(
    console: Runtime,
) -> None:
    people.create_user(
        console,
        CONSOLE,
        username="amy",
        role="operator",
        password=PASSWORD,
        service_provider="ACME",
    )
    sp, vt = t.service_providers, t.voucher_types
    with console.engine.begin() as conn:
        acme, other = (
            conn.execute(select(sp.c.id).where(sp.c.code == code)).scalar_one()
            for code in ("ACME", "OTHER")
        )
        topup = conn.execute(
            select(vt.c.id).where(vt.c.code == "TOPUP10", vt.c.service_provider_id == acme)
        ).scalar_one()
        run = conn.execute(
            insert(t.job_runs)
            .values(
                job="purge",
                trigger="schedule",
                runner="test",
                started_at=utcnow(),
                finished_at=utcnow(),
                outcome="failed",
                rows_affected=0,
                detail={},
            )
            .returning(t.job_runs.c.id)
        ).scalar_one()
        _alert(
            conn,
            "voucher_stock:1",
            "voucher_stock",
            acme,
            subject_id=topup,
            amount=12,
            threshold=500,
        )
        # over (resolved), and a subscriber's alert: neither is shown
        _alert(conn, "batch_expiry:7:1", "batch_expiry", acme, subject_id=7, resolved_at=utcnow())
        _alert(conn, "low_balance:1:1", "low_balance", acme, amount=5, threshold=10)
        _alert(conn, "blacklist_burst:2", "blacklist_burst", other, amount=30, threshold=20)
        _alert(conn, "job_failed:purge", "job_failed", None, subject_id=run)
    root = signed_in(console, "root").get("/ui/").text
    assert _open_alerts_shown(root) == [
        f"Installation: job purge failed (run {run})",
        "OTHER: 30 subscribers blacklisted for bad PINs (threshold 20)",
        "ACME: stock of TOPUP10 low, 12 vouchers (threshold 500)",
    ]
    # a person of ACME: ACME's alerts only, not the installation's jobs
    scoped = signed_in(console, "amy")
    assert _open_alerts_shown(scoped.get("/ui/").text) == [
        "ACME: stock of TOPUP10 low, 12 vouchers (threshold 500)"
    ]
    with console.engine.begin() as conn:
        for n in range(8):
            _alert(
                conn,
                f"batch_expiry:{100 + n}",
                "batch_expiry",
                acme,
                subject_id=100 + n,
                subject_at=utcnow(),
                amount=n,
            )
    newest = _open_alerts_shown(scoped.get("/ui/").text)
    assert [item.split(" expires")[0] for item in newest] == [
        f"ACME: batch {n}" for n in (107, 106, 105, 104, 103)
    ]
