"""The phone-browser channel /m in a real browser: Debian's chromium driven by Playwright
with a phone's screen (a 360 by 740 viewport, touch, a phone's user agent).

The subscriber types the number and the PIN into the form, taps the button, and reads
the answer with the money as money ("+10.00 KES, balance 10.00 KES"); a voucher with
offers asks for a choice and the PIN again; the page speaks the phone's language. Each
page is saved as a screenshot under artifacts/screenshots/.
"""

from collections.abc import Iterator

import pytest
from playwright.sync_api import Browser, BrowserContext, Page, sync_playwright

from tests.channel_support import (
    MSISDN,
    OTHER,
    Shop,
    balance,
    shop_fixture,  # noqa: F401 (the shop fixture)
    transactions,
)
from tests.e2e.test_console_browser import CHROMIUM, REQUIRE_CHROMIUM, SCREENSHOTS
from tests.e2e.test_soap import serving
from voms.api.app import create_app
from voms.runtime import Runtime

PHONE = {
    "viewport": {"width": 360, "height": 740},
    "device_scale_factor": 3,
    "is_mobile": True,
    "has_touch": True,
    "user_agent": (
        "Mozilla/5.0 (Linux; Android 13; Pixel 7) AppleWebKit/537.36 (KHTML, like Gecko) "
        "Chrome/120.0.0.0 Mobile Safari/537.36"
    ),
}


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


def _phone(browser: Browser, locale: str = "en-KE") -> BrowserContext:
    return browser.new_context(locale=locale, **PHONE)  # type: ignore[arg-type]


def _snap(page: Page, label: str, name: str) -> None:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOTS / f"{label}-mobile-{name}.png"), full_page=True)


def _submit(page: Page, button: str) -> None:
    """Tap the form's button, as a thumb does, and wait for the answer page."""
    with page.expect_navigation():
        page.get_by_role("button", name=button).tap()


def _fits_the_screen(page: Page) -> None:
    """Nothing wider than the phone: no sideways scrolling."""
    width = page.evaluate("() => document.documentElement.scrollWidth")
    assert width <= 360, width


def test_a_subscriber_recharges_on_a_phone_and_reads_money_as_money(
    rt: Runtime, shop: Shop, browser: Browser, database_url: str
) -> None:
    label = "postgresql" if database_url.startswith("postgresql") else "sqlite"
    with serving(create_app(rt)) as base:
        context = _phone(browser)
        page = context.new_page()
        assert page.goto(base + "/m").status == 200  # type: ignore[union-attr]
        assert page.evaluate("() => navigator.maxTouchPoints") > 0
        _fits_the_screen(page)
        _snap(page, label, "form")

        page.get_by_label("Your phone number").fill(MSISDN)
        page.get_by_label("Voucher PIN").fill(shop.pins[0])
        _submit(page, "Recharge")
        answer = page.locator("strong").inner_text()
        assert answer == f"Recharge of {MSISDN} successful: +10.00 KES, balance 10.00 KES."
        assert shop.pins[0] not in page.content()
        _fits_the_screen(page)
        _snap(page, label, "done")
        assert balance(rt) == 1000

        # Another number, and a voucher with offers: choose one, type the PIN again.
        with page.expect_navigation():
            page.get_by_role("link").first.tap()
        page.get_by_label("Your phone number").fill(MSISDN)
        page.get_by_label("Number to recharge (if another)").fill(OTHER)
        page.get_by_label("Voucher PIN").fill(shop.bundle_pins[0])
        _submit(page, "Recharge")
        assert "Choose an offer" in page.locator("strong").inner_text()
        assert shop.bundle_pins[0] not in page.content()
        _snap(page, label, "offers")
        page.get_by_role("radio").nth(1).check()
        page.get_by_label("Voucher PIN").fill(shop.bundle_pins[0])
        _submit(page, "Recharge")
        assert page.locator("strong").inner_text().startswith(f"Recharge of {OTHER} successful:")
        assert "+50 SMS" in page.locator("strong").inner_text()
        assert balance(rt, OTHER, "SMS") == 50
        assert {row.channel for row in transactions(rt)} == {"web"}
        context.close()


def test_the_page_speaks_the_phones_language(
    rt: Runtime, shop: Shop, browser: Browser, database_url: str
) -> None:
    label = "postgresql" if database_url.startswith("postgresql") else "sqlite"
    with serving(create_app(rt)) as base:
        context = _phone(browser, locale="sw-KE")
        page = context.new_page()
        page.goto(base + "/m")
        page.get_by_label("Namba yako ya simu").fill(MSISDN)
        page.get_by_label("PIN ya vocha").fill(shop.pins[1])
        _submit(page, "Ongeza salio")
        answer = page.locator("strong").inner_text()
        assert "+10.00 KES" in answer
        assert "salio 10.00 KES" in answer
        _fits_the_screen(page)
        _snap(page, label, "sw")
        context.close()
