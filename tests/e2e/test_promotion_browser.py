"""Promotions in the console in a real browser (chromium driven by Playwright): an
operator creates a plan, a redemption earns its reward, care reads the counter.

Every page visited is checked by axe-core and photographed, as in
test_console_browser.py.
"""

import re
from collections.abc import Iterator

import pytest
from playwright.sync_api import Browser, sync_playwright

from tests import factories
from tests.e2e.test_console_browser import CHROMIUM, PASSWORD, REQUIRE_CHROMIUM, Visitor
from tests.e2e.test_soap import serving
from voms.api.app import create_app
from voms.runtime import Runtime
from voms.services import people, redemption
from voms.services.auth import CONSOLE
from voms.services.redemption import RedemptionRequest

MSISDN = "254700000001"


@pytest.fixture(scope="module")
def chromium() -> Iterator[Browser]:
    if not CHROMIUM.exists():
        if REQUIRE_CHROMIUM:
            pytest.fail(f"{CHROMIUM} required (VOMS_TEST_REQUIRE_CHROMIUM=1) but missing")
        pytest.skip(f"{CHROMIUM} not installed (./scripts/bootstrap dev installs it)")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM))
        yield browser
        browser.close()


def test_an_operator_runs_a_plan_and_care_sees_the_counter(
    rt: Runtime, chromium: Browser, database_url: str
) -> None:
    label = "postgresql" if database_url.startswith("postgresql") else "sqlite"
    factories.standard_catalog(rt)
    factories.subscriber(rt, MSISDN)
    for name, role in (("otto", "operator"), ("carol", "care")):
        people.create_user(
            rt, CONSOLE, username=name, role=role, password=PASSWORD, service_provider="ACME"
        )
    pins = [pin for _, pin in factories.active_batch(rt, count=2)]
    with serving(create_app(rt)) as base:
        otto = Visitor(chromium.new_context(bypass_csp=True), base, f"promo-{label}")
        otto.sign_in("otto")
        otto.page.get_by_role("link", name="Promotions").click()
        otto.page.wait_for_url(re.compile(r".*/ui/promotions$"))
        otto.check("promotions")
        form = otto.page.locator("form.card")
        form.locator("#f-code").fill("SECOND")
        form.locator("#f-name").fill("Every second recharge")
        form.locator("#f-window").select_option("calendar_month")
        form.locator("#f-target").fill("2")
        form.get_by_label("Reward every time").check()
        form.get_by_label("Reward: balance type").fill("SMS")
        form.get_by_label("Reward: amount").fill("40")
        form.get_by_role("button", name="Create plan").click()
        otto.page.wait_for_url(re.compile(r".*/ui/promotions$"))
        row = otto.page.get_by_role("row").filter(has_text="SECOND")
        assert "40 SMS" in row.inner_text()
        assert "every time" in row.inner_text()
        otto.check("promotions-created")

        answers = [
            redemption.redeem(rt, CONSOLE, RedemptionRequest(msisdn=MSISDN, pin=pin))
            for pin in pins
        ]
        assert answers[1]["rewards"][0]["promotion"] == "SECOND"

        carol = Visitor(chromium.new_context(bypass_csp=True), base, f"promo-{label}")
        carol.sign_in("carol")
        carol.go(f"/ui/care?msisdn={MSISDN}")
        carol.page.get_by_role("link", name="Promotion counters").click()
        carol.page.wait_for_url(re.compile(r".*/ui/care/counters\?msisdn=\d+$"))
        counter = carol.page.get_by_role("row").filter(has_text="SECOND")
        cells = counter.get_by_role("cell").all_inner_texts()
        assert cells[:3] == ["SECOND", "Every second recharge", "count"]
        assert cells[5:8] == ["2", "2", "1"]  # value, target, rewards in the window
        carol.check("counters")
        assert "Promotions" not in carol.page.get_by_role("navigation").inner_text()
