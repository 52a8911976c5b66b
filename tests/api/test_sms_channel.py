"""SMS commands as Kannel's get-url delivers them: query parameters in, reply as the body."""

import logging
import socket
import time
from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient
from httpx2 import Response

from tests.channel_support import (
    MSISDN,
    OTHER,
    Shop,
    app_client,
    assert_never_logged,
    balance,
    configure,
    sendsms_inbox,
    shop_fixture,  # noqa: F401 (the shop fixture)
    transactions,
)
from voms.channels.sms import _pin_words, install_notices
from voms.domain.errors import ResultError
from voms.domain.pins import luhn_valid, with_check_digit
from voms.runtime import Runtime
from voms.services import redemption
from voms.services.auth import CONSOLE
from voms.services.redemption import RedemptionRequest

SECRET = "kannel-shared-secret"


def _client(rt: Runtime, **settings: Any) -> TestClient:
    return app_client(rt, **{"sms_secret": SECRET, **settings})


@pytest.fixture
def kannel(rt: Runtime, shop: Shop) -> Iterator[TestClient]:
    with _client(rt) as client:
        yield client


def sms(
    client: TestClient,
    text: str,
    sender: str = MSISDN,
    secret: str = SECRET,
    message_id: str | None = None,
) -> Response:
    params = {"secret": secret, "from": sender, "to": "100", "text": text}
    if message_id is not None:
        params["id"] = message_id
    return client.get("/sms/kannel", params=params)


def test_rch_pin_recharges_the_sender_and_replies_in_the_body(
    rt: Runtime, kannel: TestClient, shop: Shop, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    pin = shop.pins[0]
    answer = sms(kannel, f"RCH {pin}")
    assert answer.status_code == 200
    assert answer.headers["content-type"].startswith("text/plain")
    assert answer.text == f"Recharge of {MSISDN} successful: +10.00 KES, balance 10.00 KES."
    [row] = transactions(rt)
    assert (row.channel, row.actor, row.msisdn) == ("sms", "sms", MSISDN)
    assert_never_logged(caplog, pin)


def test_rch_pin_number_recharges_another_number(
    rt: Runtime, kannel: TestClient, shop: Shop
) -> None:
    answer = sms(kannel, f"rch {shop.pins[0]} +{OTHER}")
    assert answer.text.startswith(f"Recharge of {OTHER} successful")
    assert (balance(rt, MSISDN), balance(rt, OTHER)) == (0, 1000)


def test_a_voucher_with_offers_lists_them_and_a_number_chooses(
    rt: Runtime, kannel: TestClient, shop: Shop
) -> None:
    pin = shop.bundle_pins[0]
    offers = sms(kannel, f"RCH {pin}")
    assert offers.text == "Offers: 1 10 KES, 2 50 SMS. Send RCH PIN and the offer number."
    assert pin not in offers.text
    to_other = sms(kannel, f"RCH {pin} {OTHER}")
    assert f"Send RCH PIN {OTHER} and the offer number" in to_other.text
    chosen = sms(kannel, f"RCH {pin} {OTHER} 2")
    assert "successful: +50 SMS" in chosen.text
    assert balance(rt, OTHER, "SMS") == 50


def test_kannels_message_id_makes_a_redelivery_harmless(
    rt: Runtime, kannel: TestClient, shop: Shop
) -> None:
    first = sms(kannel, f"RCH {shop.pins[0]}", message_id="4b5c0b52-6d0c-4ba4-9a7a-1c3b1f2f0c6e")
    again = sms(kannel, f"RCH {shop.pins[0]}", message_id="4b5c0b52-6d0c-4ba4-9a7a-1c3b1f2f0c6e")
    assert first.text == again.text
    assert "successful" in again.text
    assert balance(rt) == 1000


def test_bal_answers_the_senders_balances(rt: Runtime, kannel: TestClient, shop: Shop) -> None:
    assert sms(kannel, "BAL").text == "You have no balance yet."
    sms(kannel, f"RCH {shop.pins[0]}")
    assert sms(kannel, "bal").text == "Your balance: 10.00 KES."
    assert sms(kannel, "BAL", sender="254799999999").text == "This number has no account."


def test_failures_answer_with_the_text_of_their_result_code(
    rt: Runtime, kannel: TestClient, shop: Shop
) -> None:
    sms(kannel, f"RCH {shop.pins[0]}")
    assert sms(kannel, f"RCH {shop.pins[0]}").text == "This voucher has already been used."
    assert sms(kannel, "RCH").text == "Please enter the PIN of your voucher."
    assert sms(kannel, "RCH 12").text == "Wrong PIN length. Please check your voucher."
    assert sms(kannel, f"RCH {shop.pins[1]}", sender="abc").text == "Invalid phone number."
    assert [row.result_code for row in transactions(rt)] == [0, 2009, 4007, 4001]


def test_anything_else_gets_the_help_text(kannel: TestClient, shop: Shop) -> None:
    help_text = (
        "To recharge send RCH PIN. Another number: RCH PIN NUMBER. Balance: BAL. "
        "Language: LANG en/sw."
    )
    assert sms(kannel, "hello").text == help_text
    assert sms(kannel, "").text == help_text
    assert sms(kannel, f"RCH {shop.pins[0]} {OTHER} 1 2 3").text == help_text


def test_keywords_are_configurable(rt: Runtime, shop: Shop) -> None:
    with _client(rt, sms_recharge_keywords="TOPUP, RCH", sms_balance_keywords="SALIO") as client:
        assert "successful" in sms(client, f"topup {shop.pins[0]}").text
        assert sms(client, "salio").text == "Your balance: 10.00 KES."
        assert sms(client, "BAL").text.startswith("To recharge send TOPUP PIN")


def test_without_the_shared_secret_nothing_is_done(rt: Runtime, shop: Shop) -> None:
    with _client(rt) as client:
        assert sms(client, f"RCH {shop.pins[0]}", secret="guess").status_code == 403
        assert client.get("/sms/kannel", params={"from": MSISDN, "text": "BAL"}).status_code == 403
    with _client(rt, sms_secret=None) as client:
        assert sms(client, f"RCH {shop.pins[0]}").status_code == 403
    assert transactions(rt) == []


def test_a_notice_kannel_does_not_take_leaves_the_recharge_and_reply_intact(
    rt: Runtime, shop: Shop, caplog: pytest.LogCaptureFixture
) -> None:
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    url = f"http://127.0.0.1:{port}/cgi-bin/sendsms"
    caplog.set_level(logging.INFO, logger="voms.channels.sms")
    with _client(rt, kannel_sendsms_url=url, kannel_sendsms_password="pw") as client:
        answer = sms(client, f"RCH {shop.pins[0]} {OTHER}")
    assert answer.text.startswith(f"Recharge of {OTHER} successful")
    deadline = time.monotonic() + 10
    while "sendsms notice failed" not in caplog.text and time.monotonic() < deadline:
        time.sleep(0.05)
    assert "sendsms notice failed: URLError" in caplog.text
    assert balance(rt, OTHER) == 1000


def _groups(pin: str, size: int) -> str:
    return " ".join(pin[i : i + size] for i in range(0, len(pin), size))


def test_a_pin_typed_in_its_printed_groups_is_accepted(
    rt: Runtime, kannel: TestClient, shop: Shop
) -> None:
    assert sms(kannel, f"RCH {_groups(shop.pins[0], 5)}").text.startswith(
        f"Recharge of {MSISDN} successful"
    )
    assert sms(kannel, f"RCH {_groups(shop.pins[1], 4)} {OTHER}").text.startswith(
        f"Recharge of {OTHER} successful"
    )
    chosen = sms(kannel, f"RCH {_groups(shop.bundle_pins[0], 4)} 2")
    assert "successful: +50 SMS" in chosen.text
    wrong = shop.pins[2][:-1] + str((int(shop.pins[2][-1]) + 1) % 10)
    assert sms(kannel, f"RCH {_groups(wrong, 5)}").text == (
        "Wrong PIN. Please check the number on your voucher."
    )
    assert (balance(rt, MSISDN), balance(rt, OTHER)) == (1000, 1000)


def test_an_over_long_message_gets_the_help_text_not_a_422(
    rt: Runtime, kannel: TestClient, shop: Shop
) -> None:
    for text in (f"RCH {shop.pins[0]} " + "x" * 2000, "y" * 5000):
        answer = sms(kannel, text, message_id="m" * 200)
        assert answer.status_code == 200
        assert answer.text.startswith("To recharge send RCH PIN.")
    too_long_sender = sms(kannel, "BAL", sender="2" * 100)
    assert (too_long_sender.status_code, too_long_sender.text) == (200, "Invalid phone number.")
    assert transactions(rt) == []


def test_lang_chooses_the_language_of_every_later_reply(
    rt: Runtime, kannel: TestClient, shop: Shop
) -> None:
    assert sms(kannel, "LANG sw").text == "Ujumbe utakuwa kwa Kiswahili."
    assert sms(kannel, f"RCH {shop.pins[0]}").text == (
        f"Umefanikiwa kuongeza salio la {MSISDN}: +10.00 KES, salio 10.00 KES."
    )
    assert sms(kannel, "BAL").text == "Salio lako: 10.00 KES."
    assert sms(kannel, f"RCH {shop.pins[0]}").text == "Vocha hii imeshatumika."
    assert sms(kannel, "hello").text.startswith("Kuongeza salio tuma RCH PIN.")
    assert sms(kannel, "LANG xx").text.startswith("Kuongeza salio tuma RCH PIN.")
    assert sms(kannel, "lang EN").text == "Messages will be in English."
    assert sms(kannel, "BAL").text == "Your balance: 10.00 KES."
    assert sms(kannel, "LANG sw", sender="254799999999").text == "This number has no account."


def test_a_recharge_of_a_number_without_an_account_says_so(
    rt: Runtime, kannel: TestClient, shop: Shop
) -> None:
    answer = sms(kannel, f"RCH {shop.pins[0]} 254799999999")
    assert answer.text == "This number has no account."


def test_printed_groups_are_told_from_an_offer_by_check_digit_and_pin_length() -> None:
    pin = with_check_digit("1234567890123")  # 14 digits
    lengths = frozenset({14})
    assert _pin_words(_groups(pin, 5).split(), lambda: lengths) == 3
    assert _pin_words([*_groups(pin, 4).split(), "2"], lambda: lengths) == 4
    assert _pin_words([*_groups(pin, 4).split(), OTHER], lambda: lengths) == 4
    assert _pin_words([pin, "2"], lambda: lengths) == 1
    # Twelve digits in groups, then "1": both readings have a valid check digit, and
    # the PIN lengths in use decide between a 12-digit PIN with offer 1 and a 13-digit PIN.
    twelve = with_check_digit("12345678901")
    assert luhn_valid(twelve)
    assert luhn_valid(twelve + "1")
    words = [*_groups(twelve, 4).split(), "1"]
    assert _pin_words(words, lambda: frozenset({12})) == 3
    assert _pin_words(words, lambda: frozenset({13})) == 4


def test_an_sms_recharge_is_confirmed_by_its_reply_alone(rt: Runtime, shop: Shop) -> None:
    with (
        sendsms_inbox() as (url, inbox),
        _client(rt, kannel_sendsms_url=url, confirmation_sms=True) as client,
    ):
        sms(client, "LANG sw")
        assert sms(client, f"RCH {shop.pins[0]} {OTHER}").text.startswith("Umefanikiwa")
        notice = inbox.next()
        assert inbox.empty_after(0.5)
    assert notice["to"] == OTHER
    assert (
        notice["text"] == f"Your number was recharged by {MSISDN}: +10.00 KES, balance 10.00 KES."
    )


def test_a_rest_redemption_for_another_number_is_noticed_after_the_commit_not_confirmed(
    rt: Runtime, shop: Shop
) -> None:
    # The one after-commit hook: every channel's credit tells the recipient; only USSD,
    # IVR and /m confirm by SMS (REST callers get their answer).
    with sendsms_inbox() as (url, inbox):
        configure(rt, kannel_sendsms_url=url, confirmation_sms=True)
        install_notices(rt)
        answer = redemption.redeem(
            rt,
            CONSOLE,
            RedemptionRequest(msisdn=MSISDN, recipient_msisdn=OTHER, pin=shop.pins[0]),
        )
        assert answer["result_code"] == 0
        notice = inbox.next()
        assert inbox.empty_after(0.5)
    assert notice["to"] == OTHER
    assert notice["text"].startswith(f"Your number was recharged by {MSISDN}")


def test_a_failed_redemption_sends_nothing(rt: Runtime, shop: Shop) -> None:
    with sendsms_inbox() as (url, inbox):
        configure(rt, kannel_sendsms_url=url, confirmation_sms=True)
        install_notices(rt)
        with pytest.raises(ResultError):
            redemption.redeem(
                rt, CONSOLE, RedemptionRequest(msisdn=MSISDN, recipient_msisdn=OTHER, pin="1" * 14)
            )
        assert inbox.empty_after(0.5)
