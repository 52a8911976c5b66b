"""The web console in a real browser (Debian's chromium driven by Playwright).

One browser for the module. Every page visited is checked by axe-core (no serious
or critical violation) and saved as a screenshot under artifacts/screenshots/.
Skips when /usr/bin/chromium is missing, unless VOMS_TEST_REQUIRE_CHROMIUM=1 (CI).
"""

import os
import re
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import axe_playwright_python
import pytest
from playwright.sync_api import Browser, BrowserContext, Page, sync_playwright
from sqlalchemy import insert, update

from tests import factories
from tests.channel_support import configure
from tests.e2e.test_soap import serving
from tests.pgp import PartnerKeys
from voms.api.app import create_app
from voms.db import tables as t
from voms.db.types import utcnow
from voms.runtime import Runtime
from voms.services import distribution, people
from voms.services.auth import CONSOLE

CHROMIUM = Path("/usr/bin/chromium")
REQUIRE_CHROMIUM = os.environ.get("VOMS_TEST_REQUIRE_CHROMIUM") == "1"
SCREENSHOTS = Path(__file__).resolve().parents[2] / "artifacts" / "screenshots"
AXE = Path(axe_playwright_python.__file__).with_name("axe.min.js")
PASSWORD = "correct horse battery"
MSISDN, OTHER_MSISDN, BLOCKED = "254700000001", "254700000009", "254700000005"


# One browser for the module, stopped at its end: while Playwright's sync API runs, the
# main thread counts as running an event loop, which later tests that run their own
# (the AGI server's) could not.
@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    if not CHROMIUM.exists():
        if REQUIRE_CHROMIUM:
            pytest.fail(f"{CHROMIUM} required (VOMS_TEST_REQUIRE_CHROMIUM=1) but missing")
        pytest.skip(f"{CHROMIUM} not installed (./scripts/bootstrap dev installs it)")
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=str(CHROMIUM))
        yield chromium
        chromium.close()


class Visitor:
    """One person's browser tab: signs in, visits pages, checks and photographs each."""

    def __init__(self, context: BrowserContext, base: str, label: str) -> None:
        self.context = context
        self.page: Page = context.new_page()
        self.base = base
        self.label = label

    def go(self, path: str) -> Any:
        return self.page.goto(self.base + path)

    def sign_in(self, username: str) -> None:
        self.go("/ui/login")
        self.page.get_by_label("Username").fill(username)
        self.page.get_by_label("Password").fill(PASSWORD)
        self.page.get_by_role("button", name="Sign in").click()
        self.page.wait_for_url(re.compile(r".*/ui/$"))

    def check(self, name: str) -> None:
        """No serious or critical accessibility violation; a screenshot for reviewers."""
        self.page.add_script_tag(path=str(AXE))
        found = self.page.evaluate(
            "async () => (await axe.run(document, {resultTypes: ['violations']})).violations"
        )
        bad = [
            f"{v['id']} ({v['impact']}): {v['help']} at {[n['target'] for n in v['nodes']][:3]}"
            for v in found
            if v["impact"] in ("serious", "critical")
        ]
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        self.page.screenshot(path=str(SCREENSHOTS / f"{self.label}-{name}.png"), full_page=True)
        assert not bad, f"{name}: " + "; ".join(bad)


@pytest.fixture
def shop(rt: Runtime, partner_keys: PartnerKeys) -> Runtime:
    factories.standard_catalog(rt, "ACME")
    factories.standard_catalog(rt, "OTHER")
    factories.subscriber(rt, MSISDN, sp="ACME")
    factories.subscriber(rt, BLOCKED, sp="ACME")
    factories.subscriber(rt, OTHER_MSISDN, sp="OTHER")
    for name, role, sp in [
        ("ada", "admin", None),
        ("bea", "admin", None),
        ("carol", "care", "ACME"),
    ]:
        people.create_user(
            rt, CONSOLE, username=name, role=role, password=PASSWORD, service_provider=sp
        )
    distribution.create_partner(
        rt, CONSOLE, distribution.PartnerIn(name="printshop", public_key=partner_keys.good)
    )
    with rt.engine.begin() as conn:
        conn.execute(
            insert(t.pin_attempts).values(
                msisdn=BLOCKED,
                failures=5,
                blacklisted_until=utcnow() + timedelta(hours=1),
                updated_at=utcnow(),
            )
        )
    return rt


def test_operations_and_care_work_their_day_in_the_console(
    shop: Runtime, browser: Browser, partner_keys: PartnerKeys, database_url: str
) -> None:
    label = "postgresql" if database_url.startswith("postgresql") else "sqlite"
    [(serial, pin)] = factories.active_batch(shop, count=1)
    configure(shop, require_approval=True)
    with serving(create_app(shop)) as base:
        # Injecting axe's script needs the page's Content-Security-Policy set aside.
        ada = Visitor(browser.new_context(bypass_csp=True, accept_downloads=True), base, label)
        ada.go("/ui/")
        assert "/ui/login" in ada.page.url
        ada.check("login")
        ada.sign_in("ada")
        ada.check("dashboard")

        # Generate a batch: the page follows its progress until it is generated.
        ada.go("/ui/batches")
        ada.page.get_by_text("Generate a batch").click()
        ada.page.locator("#f-voucher_type").select_option("TOPUP10")
        ada.page.get_by_label("Number of vouchers").fill("25")
        ada.page.get_by_role("button", name="Generate").click()
        ada.page.wait_for_url(re.compile(r".*/ui/batches/\d+$"))
        batch_url = ada.page.url.removeprefix(base)
        batch_id = int(batch_url.rsplit("/", 1)[1])
        for _ in range(30):
            if ada.page.locator("#progress").get_by_text("generated", exact=True).count():
                break
            ada.page.wait_for_timeout(300)
            ada.go(batch_url)
        ada.check("batch")
        ada.go("/ui/batches")
        ada.check("batches")

        # Four eyes: who generated it cannot activate it; another admin can.
        ada.go(batch_url)
        ada.page.get_by_role("button", name="Activate").click()
        assert "four-eyes" in ada.page.content()
        ada.check("four-eyes-refused")
        bea = Visitor(browser.new_context(bypass_csp=True, accept_downloads=True), base, label)
        bea.sign_in("bea")
        bea.go(batch_url)
        bea.page.get_by_role("button", name="Activate").click()
        bea.page.wait_for_url(re.compile(r".*/ui/batches/\d+$"))
        assert bea.page.locator("#progress").get_by_text("active", exact=True).count() == 1

        # Export the batch to a partner and download the encrypted file.
        bea.go(f"/ui/distribution?batch_id={batch_id}")
        bea.check("distribution")
        bea.page.get_by_role("button", name="Export").click()
        with bea.page.expect_download() as download:
            bea.page.get_by_role("link", name="Download the encrypted file").click()
        plain = partner_keys.decrypt(Path(download.value.path()).read_bytes()).decode()
        assert plain.startswith("serial,pin,voucher_type,expires_at")
        assert len(plain.strip().splitlines()) == 26
        bea.check("export-done")

        # Find a voucher by serial, then by PIN (typed into a form, never in the URL).
        ada.go(f"/ui/vouchers?serial={serial}")
        assert f"Voucher {serial}" in ada.page.content()
        ada.check("voucher")
        ada.go("/ui/vouchers")
        ada.page.get_by_label("PIN").fill(pin)
        ada.page.get_by_role("button", name="Find").nth(1).click()
        ada.page.wait_for_url(re.compile(r".*/ui/vouchers/by-pin$"))
        assert f"Voucher {serial}" in ada.page.content()
        assert pin not in ada.page.url
        assert pin not in ada.page.content()

        # Care redeems on behalf of a subscriber, with a reason.
        carol = Visitor(browser.new_context(bypass_csp=True), base, label)
        carol.sign_in("carol")
        carol.check("dashboard-care")
        carol.go(f"/ui/care?msisdn={MSISDN}")
        carol.page.get_by_label("PIN read out by the subscriber").fill(pin)
        carol.page.locator("#f-redeem-reason").fill("subscriber called, scratch card unreadable")
        carol.page.get_by_role("button", name="Redeem").click()
        assert "Redeemed" in carol.page.content()
        assert pin not in carol.page.content()
        carol.check("care")

        # Care releases a blacklisted subscriber.
        carol.go("/ui/care/blacklist")
        carol.check("blacklist")
        carol.page.get_by_role("button", name=f"Release {BLOCKED}").click()
        carol.page.wait_for_url(re.compile(r".*/ui/care/blacklist\?released=1$"))
        assert "Nobody is blacklisted." in carol.page.content()

        # Care sees neither administration pages nor another provider's subscribers.
        for path in ("/ui/people", "/ui/batches", "/ui/audit", "/ui/housekeeping"):
            assert carol.go(path).status == 403, path
        carol.check("forbidden")
        assert carol.go(f"/ui/care?msisdn={OTHER_MSISDN}").status == 403

        # A form posted without the session's CSRF token is refused.
        forged = carol.page.request.post(
            base + "/ui/care/blacklist/release",
            form={"msisdn": MSISDN, "reason": "forged"},
            max_redirects=0,
        )
        assert forged.status == 403

        # Run a housekeeping job now and watch it finish.
        ada.go("/ui/housekeeping")
        ada.check("housekeeping")
        ada.page.get_by_role("button", name="Run blacklist_release now").click()
        ada.page.wait_for_url(re.compile(r".*/ui/housekeeping/runs/\d+$"))
        ada.page.locator("#run").get_by_text("succeeded", exact=True).wait_for(timeout=15000)
        ada.check("run")

        # The audit log shows who did what, filtered.
        ada.go("/ui/audit")
        ada.page.get_by_label("Action").fill("care.redeem_on_behalf")
        ada.page.get_by_role("button", name="Filter").click()
        assert "user:carol" in ada.page.content()
        assert "scratch card unreadable" in ada.page.content()
        ada.check("audit")

        for path, name in [
            ("/ui/catalog", "catalog"),
            ("/ui/people", "people"),
            ("/ui/care?serial=" + serial, "care-by-serial"),
            ("/ui/reports?name=inventory", "reports-inventory"),
            ("/ui/reports?name=summary", "reports-summary"),
        ]:
            ada.go(path)
            ada.check(name)

        # Reports: a chart drawn by the shipped Chart.js, and the files to download.
        ada.go("/ui/reports?name=liability")
        drawn = ada.page.evaluate("() => Chart.getChart('chart-report').data.datasets.length")
        assert drawn == 1
        ada.check("reports-liability")
        with ada.page.expect_download() as download:
            ada.page.get_by_role("link", name="XLSX").click()
        assert Path(download.value.path()).read_bytes()[:2] == b"PK"

        # An unknown console page is the console's own 404 page.
        assert ada.go("/ui/no-such-page").status == 404
        assert "Page not found" in ada.page.content()
        ada.check("not-found")

        # A session idle past its timeout sends the browser back to sign in.
        with shop.engine.begin() as conn:
            conn.execute(update(t.ui_sessions).values(last_seen_at=utcnow() - timedelta(hours=2)))
        ada.go("/ui/batches")
        assert "/ui/login" in ada.page.url
        for visitor in (ada, bea, carol):
            visitor.context.close()
