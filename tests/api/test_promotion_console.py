"""Promotions in the console: operators manage plans, care reads a subscriber's counters."""

import pytest
from fastapi.testclient import TestClient

from tests import factories
from tests.api.test_console import PASSWORD, csrf_of, signed_in
from voms.runtime import Runtime
from voms.services import people, redemption
from voms.services.auth import CONSOLE
from voms.services.redemption import RedemptionRequest

FORM = {
    "code": "FIFTH",
    "name": "Every fifth recharge",
    "service_provider": "ACME",
    "starts_at": "2026-01-01T00:00",
    "window": "calendar_month",
    "counter": "count",
    "target": "1",
    "repeat": "on",
    "product_types": "GOLD",
    "balance_type": "SMS",
    "amount": "25",
}


@pytest.fixture
def console(rt: Runtime) -> Runtime:
    factories.standard_catalog(rt, "ACME")
    factories.standard_catalog(rt, "OTHER")
    factories.subscriber(rt, "254700000001", sp="ACME")
    factories.subscriber(rt, "254700000009", sp="OTHER")
    for name, role, sp in [("carol", "care", "ACME"), ("otto", "operator", None)]:
        people.create_user(
            rt, CONSOLE, username=name, role=role, password=PASSWORD, service_provider=sp
        )
    return rt


def create(browser: TestClient, **changes: str) -> tuple[int, str]:
    page = browser.get("/ui/promotions")
    answer = browser.post(
        "/ui/promotions", data={**FORM, **changes, "csrf_token": csrf_of(page.text)}
    )
    return answer.status_code, answer.text


def test_an_operator_creates_lists_and_ends_a_plan(console: Runtime) -> None:
    otto = signed_in(console, "otto")
    assert create(otto)[0] == 303
    page = otto.get("/ui/promotions")
    assert page.status_code == 200
    assert "25 SMS" in page.text
    assert "product_types: GOLD" in page.text
    ended = otto.post("/ui/promotions/FIFTH/end", data={"csrf_token": csrf_of(page.text)})
    assert ended.status_code == 303
    assert "End FIFTH" not in otto.get("/ui/promotions").text


def test_a_bad_plan_is_shown_again_with_its_problem(console: Runtime) -> None:
    otto = signed_in(console, "otto")
    status, html = create(otto, window="rolling_days")
    assert status == 422
    assert "days is given for a rolling_days window" in html
    assert 'value="FIFTH"' in html  # what was typed comes back
    status, html = create(otto, balance_type="NOPE")
    assert status == 404
    assert "balance type &#39;NOPE&#39; not found" in html


def test_care_reads_counters_but_not_plans(console: Runtime) -> None:
    otto = signed_in(console, "otto")
    assert create(otto)[0] == 303
    pin = factories.active_batch(console, count=1)[0][1]
    redemption.redeem(console, CONSOLE, RedemptionRequest(msisdn="254700000001", pin=pin))
    carol = signed_in(console, "carol")
    assert carol.get("/ui/promotions").status_code == 403
    assert "Promotions</a>" not in carol.get("/ui/").text
    care = carol.get("/ui/care?msisdn=254700000001")
    assert "/ui/care/counters?msisdn=254700000001" in care.text
    page = carol.get("/ui/care/counters?msisdn=254700000001")
    assert page.status_code == 200
    assert "Every fifth recharge" in page.text
    assert carol.get("/ui/care/counters?msisdn=254700000009").status_code == 403  # OTHER's
    missing = carol.get("/ui/care/counters?msisdn=254799999999")
    assert "not found" in missing.text
