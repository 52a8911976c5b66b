"""The mobile recharge page /m, as a feature-phone browser uses it: forms in, HTML out."""

import json
import logging
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from tests.channel_support import (
    MSISDN,
    OTHER,
    Shop,
    app_client,
    assert_never_logged,
    bad_check_digit,
    balance,
    configure,
    sendsms_inbox,
    shop_fixture,  # noqa: F401 (the shop fixture)
    transactions,
)
from voms.api.app import create_app
from voms.domain.errors import ResultError
from voms.runtime import Runtime
from voms.services import redemption
from voms.services.auth import CONSOLE
from voms.services.redemption import RedemptionRequest


@pytest.fixture
def web(rt: Runtime, shop: Shop) -> Iterator[TestClient]:
    with app_client(rt) as client:
        yield client


def _rid(page: str) -> str:
    found = re.search(r'name="rid" value="([^"]+)"', page)
    assert found is not None
    return found.group(1)


def test_the_form_is_plain_html_without_javascript(web: TestClient) -> None:
    page = web.get("/m")
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    html = page.text
    assert "<script" not in html.lower()
    assert 'method="post" action="/m"' in html
    for field in ("msisdn", "recipient", "pin", "rid"):
        assert f'name="{field}"' in html
    assert len(html.encode()) < 2000  # small enough for a WAP-era browser


def test_a_recharge_credits_the_number_and_is_recorded_as_web(
    rt: Runtime, web: TestClient, shop: Shop, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    pin = shop.pins[0]
    page = web.post("/m", data={"msisdn": MSISDN, "pin": pin, "rid": _rid(web.get("/m").text)})
    assert page.status_code == 200
    assert f"Recharge of {MSISDN} successful: +10.00 KES, balance 10.00 KES." in page.text
    assert pin not in page.text
    assert page.headers["cache-control"] == "no-store"
    assert balance(rt) == 1000
    [row] = transactions(rt)
    assert (row.channel, row.actor, row.result_code, row.msisdn) == ("web", "web", 0, MSISDN)
    assert_never_logged(caplog, pin)


def test_another_number_can_be_recharged(rt: Runtime, web: TestClient, shop: Shop) -> None:
    page = web.post("/m", data={"msisdn": MSISDN, "recipient": OTHER, "pin": shop.pins[0]})
    assert f"Recharge of {OTHER} successful" in page.text
    assert (balance(rt, MSISDN), balance(rt, OTHER)) == (0, 1000)


def test_a_wrong_pin_shows_why_and_keeps_the_number_but_not_the_pin(
    rt: Runtime, web: TestClient, shop: Shop
) -> None:
    wrong = bad_check_digit(shop.pins[0])
    page = web.post("/m", data={"msisdn": MSISDN, "pin": wrong})
    assert "Wrong PIN" in page.text
    assert f'value="{MSISDN}"' in page.text
    assert wrong not in page.text
    assert transactions(rt)[0].result_code == 2002


def test_a_voucher_with_offers_asks_for_one_and_for_the_pin_again(
    rt: Runtime, web: TestClient, shop: Shop
) -> None:
    pin = shop.bundle_pins[0]
    choice = web.post("/m", data={"msisdn": MSISDN, "pin": pin})
    assert "Choose an offer and enter the PIN again" in choice.text
    assert 'type="radio" name="scenario" value="1"' in choice.text
    assert "2 50 SMS" in choice.text
    assert pin not in choice.text
    done = web.post(
        "/m",
        data={
            "msisdn": MSISDN,
            "recipient": "",
            "pin": pin,
            "scenario": "2",
            "rid": _rid(choice.text),
        },
    )
    assert "successful: +50 SMS" in done.text
    assert balance(rt, balance_type="SMS") == 50


def test_a_resubmitted_form_gets_the_first_answer_not_already_used(
    rt: Runtime, web: TestClient, shop: Shop
) -> None:
    form = {"msisdn": MSISDN, "pin": shop.pins[0], "rid": _rid(web.get("/m").text)}
    first = web.post("/m", data=form)
    again = web.post("/m", data=form)
    assert "successful" in first.text
    assert "successful" in again.text
    assert balance(rt) == 1000


def test_attempts_are_limited_per_client_address(rt: Runtime, shop: Shop) -> None:
    with app_client(rt, mobile_rate_limit_per_minute=3) as web:
        answers = [
            web.post("/m", data={"msisdn": MSISDN, "pin": bad_check_digit(shop.pins[0])})
            for _ in range(4)
        ]
    assert [a.status_code for a in answers] == [200, 200, 200, 429]
    assert "Too many attempts" in answers[3].text
    assert 1 <= int(answers[3].headers["Retry-After"]) <= 20
    assert f"Please try again in {answers[3].headers['Retry-After']} seconds." in answers[3].text
    assert len(transactions(rt)) == 3  # the refused attempt never reached the service


def test_a_429_is_in_the_browsers_language_with_its_labels(rt: Runtime, shop: Shop) -> None:
    with app_client(rt, mobile_rate_limit_per_minute=1) as web:
        swahili = {"Accept-Language": "sw"}
        web.post("/m", data={"msisdn": MSISDN, "pin": "1"}, headers=swahili)
        refused = web.post("/m", data={"msisdn": MSISDN, "pin": "1"}, headers=swahili)
    assert refused.status_code == 429
    wait = int(refused.headers["Retry-After"])
    assert 30 <= wait <= 60
    assert "Majaribio mengi mno." in refused.text
    assert f"baada ya sekunde {wait}." in refused.text
    assert "<title>Ongeza salio</title>" in refused.text
    assert "PIN ya vocha" in refused.text
    assert 'lang="sw"' in refused.text


@pytest.mark.parametrize(
    ("accept", "labels"),
    [
        ("en", ["Recharge", "Your phone number", "Number to recharge (if another)", "Voucher PIN"]),
        (
            "sw-KE,sw;q=0.9",
            ["Ongeza salio", "Namba yako ya simu", "Namba ya kuongezea salio", "PIN ya vocha"],
        ),
    ],
)
def test_every_shipped_language_labels_the_form_and_says_the_result(
    rt: Runtime, shop: Shop, accept: str, labels: list[str]
) -> None:
    with app_client(rt) as web:
        page = web.get("/m", headers={"Accept-Language": accept})
        done = web.post(
            "/m", data={"msisdn": MSISDN, "pin": shop.pins[0]}, headers={"Accept-Language": accept}
        )
    assert all(label in page.text for label in labels)
    assert "+10.00 KES" in done.text
    assert ("salio 10.00 KES" if accept.startswith("sw") else "balance 10.00 KES") in done.text


def test_the_most_preferred_known_language_is_chosen(rt: Runtime, shop: Shop) -> None:
    with app_client(rt) as web:
        page = web.get("/m", headers={"Accept-Language": "en;q=0.4, fr, sw;q=0.8"})
    assert 'lang="sw"' in page.text


def test_the_bad_pin_blacklist_of_the_service_applies(rt: Runtime, shop: Shop) -> None:
    """The number blacklisted by bad PINs where the network gives it (USSD) is refused
    on /m too (bad PINs typed on /m count against the client, not the number)."""
    configure(rt, max_bad_pin_attempts=2)
    for _ in range(2):
        with pytest.raises(ResultError):
            redemption.redeem(
                rt,
                CONSOLE,
                RedemptionRequest(msisdn=MSISDN, pin=bad_check_digit(shop.pins[0]), channel="ussd"),
            )
    with app_client(rt) as web:
        page = web.post("/m", data={"msisdn": MSISDN, "pin": shop.pins[0]})
    assert "Too many wrong PINs" in page.text
    assert balance(rt) == 0


def test_bad_pins_typed_for_someone_elses_number_count_against_the_client_not_the_number(
    rt: Runtime, shop: Shop
) -> None:
    """Issue 14, hole 2: five wrong PINs on /m with someone else's number blacklisted
    that subscriber everywhere. The typed number proves nothing: the attacker's address
    is throttled (5007), the subscriber redeems from anywhere else."""
    configure(rt, max_bad_pin_attempts=2, lookup_failures_per_client=3)
    attacker = app_client(rt)
    with attacker:
        for _ in range(3):
            attacker.post("/m", data={"msisdn": MSISDN, "pin": bad_check_digit(shop.pins[0])})
        refused = attacker.post("/m", data={"msisdn": OTHER, "pin": shop.pins[1]})
    assert "Too many attempts" in refused.text
    assert balance(rt, OTHER) == 0
    victim = TestClient(create_app(rt), client=("198.51.100.7", 40000))
    with victim:
        page = victim.post("/m", data={"msisdn": MSISDN, "pin": shop.pins[0]})
    assert "successful" in page.text
    assert balance(rt) == 1000


def test_x_forwarded_for_is_believed_only_from_a_trusted_proxy(rt: Runtime, shop: Shop) -> None:
    """A loopback caller (or anyone) naming another client in X-Forwarded-For does not
    escape its own budget; a proxy listed in VOMS_TRUSTED_PROXIES is believed."""
    configure(rt, lookup_failures_per_client=2)
    bad = {"msisdn": MSISDN, "pin": bad_check_digit(shop.pins[0])}
    local = TestClient(create_app(rt), client=("127.0.0.1", 40000))
    with local:
        for n in range(3):
            forged = {"X-Forwarded-For": f"192.0.2.{n}"}
            local.post("/m", data=bad, headers=forged)
        page = local.post("/m", data={"msisdn": MSISDN, "pin": shop.pins[0]}, headers=forged)
    assert "Too many attempts" in page.text
    configure(rt, trusted_proxies="127.0.0.0/8")
    proxied = TestClient(create_app(rt), client=("127.0.0.1", 40000))
    with proxied:
        page = proxied.post(
            "/m",
            data={"msisdn": MSISDN, "pin": shop.pins[0]},
            headers={"X-Forwarded-For": "203.0.113.50, 127.0.0.2"},
        )
    assert "successful" in page.text
    assert transactions(rt)[-1].channel == "web"


def test_the_page_speaks_the_browsers_language_when_texts_exist(
    rt: Runtime, shop: Shop, tmp_path: Path
) -> None:
    path = tmp_path / "texts.json"
    path.write_text(
        json.dumps({"default": {"texts": {"sw": {"web.title": "Ongeza salio"}}}}),
        encoding="utf-8",
    )
    with app_client(rt, texts_file=path) as web:
        swahili = web.get("/m", headers={"Accept-Language": "sw-KE,sw;q=0.9,en;q=0.5"})
        french = web.get("/m", headers={"Accept-Language": "fr"})
    assert "<title>Ongeza salio</title>" in swahili.text
    assert 'lang="sw"' in swahili.text
    assert "<title>Recharge</title>" in french.text


def test_a_broken_texts_file_stops_the_app_at_start(rt: Runtime, tmp_path: Path) -> None:
    path = tmp_path / "texts.json"
    path.write_text('{"default": {"texts": {"en": {"result.0": "{pin}"}}}}', encoding="utf-8")
    client = app_client(rt, texts_file=path)
    with pytest.raises(Exception, match="unknown placeholder"), client:
        pass


def test_the_page_can_be_switched_off(rt: Runtime, shop: Shop) -> None:
    with app_client(rt, mobile_enabled=False) as web:
        assert web.get("/m").status_code == 404
        assert web.post("/m", data={"msisdn": MSISDN, "pin": shop.pins[0]}).status_code == 404
    assert balance(rt) == 0


def test_a_confirmation_sms_follows_a_recharge_when_configured(rt: Runtime, shop: Shop) -> None:
    with sendsms_inbox() as (url, inbox):
        with app_client(rt, kannel_sendsms_url=url, confirmation_sms=True) as web:
            web.post("/m", data={"msisdn": MSISDN, "pin": shop.pins[0]})
            sent = inbox.next()
            assert (sent["to"], sent["text"]) == (
                MSISDN,
                f"Recharge of {MSISDN} confirmed: +10.00 KES, balance 10.00 KES. "
                f"Serial {shop.serials[0]}.",
            )
            assert shop.pins[0] not in str(sent)
            web.post("/m", data={"msisdn": MSISDN, "pin": bad_check_digit(shop.pins[1])})
            assert inbox.empty_after(0.5), "a refused recharge confirms nothing"
        with app_client(rt, kannel_sendsms_url=url, confirmation_sms=False) as web:
            web.post("/m", data={"msisdn": MSISDN, "pin": shop.pins[1]})
            assert inbox.empty_after(0.5)
