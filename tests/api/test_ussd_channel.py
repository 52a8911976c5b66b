"""USSD sessions as a gateway drives them: form fields in, CON/END text out."""

import json
import logging
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select, update

from tests import factories
from tests.channel_support import (
    MSISDN,
    OTHER,
    Shop,
    app_client,
    assert_never_logged,
    bad_check_digit,
    balance,
    configure,
    shop_fixture,  # noqa: F401 (the shop fixture)
    transactions,
)
from voms.api.app import create_app
from voms.channels.texts import TextsError
from voms.db import tables as t
from voms.db.types import utcnow
from voms.runtime import Runtime, build_runtime

SECRET = "ussd-gateway-secret"
MENU = "CON 1 Recharge my number\n2 Recharge another number\n3 My balance\n4 Language"


class Phone:
    """One USSD session: the gateway sends every input so far with each step."""

    def __init__(self, client: TestClient, session_id: str = "ATUid_1", msisdn: str = MSISDN):
        self.client = client
        self.session_id = session_id
        self.msisdn = msisdn
        self.inputs: list[str] = []
        self.replies: list[str] = []

    def post(self, text: str, secret: str = SECRET) -> Any:
        return self.client.post(
            "/ussd",
            params={"secret": secret},
            data={
                "sessionId": self.session_id,
                "serviceCode": "*140#",
                "phoneNumber": f"+{self.msisdn}",
                "text": text,
            },
        )

    def step(self, *inputs: str) -> str:
        self.inputs += inputs
        answer = self.post("*".join(self.inputs))
        assert answer.status_code == 200
        assert answer.headers["content-type"].startswith("text/plain")
        reply = str(answer.text)
        assert reply.startswith(("CON ", "END "))
        assert len(reply) <= 182
        self.replies.append(reply)
        return reply

    def dial(self) -> str:
        return self.step()


def _client(rt: Runtime, **settings: Any) -> TestClient:
    return app_client(rt, **{"ussd_secret": SECRET, **settings})


@pytest.fixture
def gateway(rt: Runtime, shop: Shop) -> Iterator[TestClient]:
    with _client(rt) as client:
        yield client


def _sessions(rt: Runtime) -> list[Any]:
    with rt.engine.connect() as conn:
        return conn.execute(select(t.channel_sessions)).all()


def test_dialling_shows_the_menu(gateway: TestClient) -> None:
    assert Phone(gateway).dial() == MENU


def test_recharging_my_number(
    rt: Runtime, gateway: TestClient, shop: Shop, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    pin = shop.pins[0]
    phone = Phone(gateway)
    phone.dial()
    assert phone.step("1") == "CON Enter the voucher PIN:"
    assert phone.step(pin) == (
        f"END Recharge of {MSISDN} successful: +10.00 KES, balance 10.00 KES."
    )
    assert balance(rt) == 1000
    [row] = transactions(rt)
    assert (row.channel, row.actor, row.msisdn, row.result_code) == ("ussd", "ussd", MSISDN, 0)
    [session] = _sessions(rt)
    assert pin not in json.dumps(session.state)
    assert all(pin not in reply for reply in phone.replies)
    assert_never_logged(caplog, pin)


def test_recharging_another_number_after_confirming_it(
    rt: Runtime, gateway: TestClient, shop: Shop
) -> None:
    phone = Phone(gateway)
    phone.dial()
    assert phone.step("2") == "CON Enter the number to recharge:"
    assert phone.step("07") == "CON Invalid number. Enter the number to recharge:"
    assert phone.step("254700000009") == (
        "CON 254700000009 has no account. Enter the number to recharge:"
    )
    assert phone.step(OTHER) == f"CON Recharge {OTHER}?\n1 Yes\n2 No"
    assert phone.step("2") == "CON Enter the number to recharge:"
    assert phone.step(OTHER) == f"CON Recharge {OTHER}?\n1 Yes\n2 No"
    assert phone.step("1") == "CON Enter the voucher PIN:"
    assert phone.step(shop.pins[0]).startswith(f"END Recharge of {OTHER} successful")
    assert (balance(rt, MSISDN), balance(rt, OTHER)) == (0, 1000)
    [row] = transactions(rt)
    assert (row.msisdn, row.recipient_msisdn) == (MSISDN, OTHER)


def test_my_balance(rt: Runtime, gateway: TestClient, shop: Shop) -> None:
    Phone(gateway, "s1").step("1", shop.pins[0])
    phone = Phone(gateway, "s2")
    phone.dial()
    assert phone.step("3") == "END Your balance: 10.00 KES."


def test_a_wrong_menu_choice_shows_the_menu_again(gateway: TestClient) -> None:
    phone = Phone(gateway)
    phone.dial()
    assert phone.step("9") == "CON Invalid choice.\n" + MENU.removeprefix("CON ")


def test_a_bad_pin_may_be_re_entered_up_to_the_configured_count(
    rt: Runtime, gateway: TestClient, shop: Shop
) -> None:
    wrong = bad_check_digit(shop.pins[0])
    phone = Phone(gateway, "retry")
    phone.step("1")
    assert phone.step(wrong) == (
        "CON Wrong PIN. Please check the number on your voucher.\nEnter the PIN again (2 left):"
    )
    assert phone.step(wrong).endswith("(1 left):")
    assert phone.step(shop.pins[0]).startswith("END Recharge of")

    out = Phone(gateway, "out")
    out.step("1")
    replies = [out.step(wrong) for _ in range(3)]
    assert [r[:4] for r in replies] == ["CON ", "CON ", "END "]
    assert replies[-1] == "END Wrong PIN. Please check the number on your voucher."
    assert [row.result_code for row in transactions(rt)] == [2002, 2002, 0, 2002, 2002, 2002]


def test_a_voucher_with_offers_asks_for_one(rt: Runtime, gateway: TestClient, shop: Shop) -> None:
    pin = shop.bundle_pins[0]
    phone = Phone(gateway)
    phone.step("1")
    assert phone.step(pin) == "CON Choose an offer:\n1 10 KES\n2 50 SMS"
    assert phone.step("7") == "CON Invalid choice.\nChoose an offer:\n1 10 KES\n2 50 SMS"
    assert phone.step("2").startswith("END Recharge of 254700000001 successful: +50 SMS")
    assert balance(rt, balance_type="SMS") == 50
    [session] = _sessions(rt)
    assert pin not in json.dumps(session.state)


def test_many_offers_are_shown_page_by_page_within_182_characters(
    rt: Runtime, gateway: TestClient
) -> None:
    offers = [
        {
            "number": n,
            "name": f"Bundle {n}: {n * 10} SMS, {n * 100} MB and {n} days",
            "default": False,
            "credits": [{"balance_type": "SMS", "amount": n, "balance_expiry_extension_days": 1}],
            "account_expiry_extension_days": 0,
        }
        for n in range(1, 10)
    ]
    factories.voucher_type(rt, "MANY", scenarios=offers)
    [(_, pin)] = factories.active_batch(rt, "MANY", count=1)
    phone = Phone(gateway)
    phone.step("1")
    first = phone.step(pin)
    assert first.startswith("CON Choose an offer:\n1 Bundle 1")
    assert first.endswith("\n0 More")
    shown = [first]
    while (page := phone.step("0")) != first:  # "0 More" on the last page: the first
        assert page.endswith("\n0 More")
        shown.append(page)
    listed = "\n".join(shown)
    assert all(f"\n{n} Bundle {n}:" in listed for n in range(1, 10))
    assert phone.step("9").startswith("END Recharge of")
    assert balance(rt, balance_type="SMS") == 9


def test_inputs_sent_at_once_are_taken_in_order(
    rt: Runtime, gateway: TestClient, shop: Shop
) -> None:
    # *140*1*PIN# dialled in one go reaches us as text "1*PIN" on the first callback.
    assert Phone(gateway).step("1", shop.pins[0]).startswith("END Recharge of")
    assert balance(rt) == 1000


def test_a_gateway_retry_of_a_step_gets_the_same_reply_and_redeems_once(
    rt: Runtime, gateway: TestClient, shop: Shop
) -> None:
    phone = Phone(gateway)
    phone.step("1")
    first = phone.step(shop.pins[0])
    again = phone.post("*".join(phone.inputs)).text
    assert again == first
    assert balance(rt) == 1000
    assert len(transactions(rt)) == 1


def test_steps_may_reach_different_server_processes(rt: Runtime, shop: Shop) -> None:
    configure(rt, ussd_secret=SECRET)
    other_rt = build_runtime(rt.settings)
    try:
        with TestClient(create_app(rt)) as one, TestClient(create_app(other_rt)) as two:
            first, second = Phone(one, "lb"), Phone(two, "lb")
            assert first.step() == MENU
            second.inputs = first.inputs
            assert second.step("2") == "CON Enter the number to recharge:"
            first.inputs = second.inputs
            assert first.step(OTHER).startswith("CON Recharge")
            assert second.step("1") == "CON Enter the voucher PIN:"
            assert first.step(shop.pins[0]).startswith(f"END Recharge of {OTHER}")
    finally:
        other_rt.engine.dispose()
    assert balance(rt, OTHER) == 1000


def test_a_session_expires_after_the_timeout_and_is_then_purged(
    rt: Runtime, gateway: TestClient, shop: Shop
) -> None:
    phone = Phone(gateway, "old")
    phone.step("1")
    with rt.engine.begin() as conn:
        conn.execute(update(t.channel_sessions).values(expires_at=utcnow() - timedelta(seconds=1)))
    assert phone.step(shop.pins[0]) == "END Your session has expired. Please dial again."
    assert balance(rt) == 0
    Phone(gateway, "new").dial()
    with rt.engine.connect() as conn:
        ids = conn.execute(select(t.channel_sessions.c.session_id)).scalars().all()
    assert ids == ["new"]


def test_the_session_timeout_is_configurable(rt: Runtime, shop: Shop) -> None:
    with _client(rt, ussd_session_timeout_s=42) as client:
        before = utcnow()
        Phone(client).dial()
    [session] = _sessions(rt)
    assert timedelta(seconds=41) < session.expires_at - before < timedelta(seconds=44)


def test_a_session_belongs_to_its_phone_number(
    rt: Runtime, gateway: TestClient, shop: Shop
) -> None:
    Phone(gateway, "mine").step("1")
    intruder = Phone(gateway, "mine", msisdn=OTHER)
    intruder.inputs = ["1"]
    assert intruder.step(shop.pins[0]) == "END Invalid phone number."
    assert transactions(rt) == []


def test_without_the_shared_secret_nothing_is_done(rt: Runtime, shop: Shop) -> None:
    with _client(rt) as client:
        phone = Phone(client)
        assert phone.post(f"1*{shop.pins[0]}", secret="guess").status_code == 403
    with _client(rt, ussd_secret=None) as client:
        assert Phone(client).post(f"1*{shop.pins[0]}").status_code == 403
    assert transactions(rt) == []
    with rt.engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(t.channel_sessions)).scalar() == 0


def test_a_missing_phone_number_ends_the_session(gateway: TestClient) -> None:
    answer = gateway.post("/ussd", params={"secret": SECRET}, data={"sessionId": "x", "text": ""})
    assert answer.text == "END Invalid phone number."


def test_a_reply_made_longer_than_182_characters_by_its_values_is_cut(
    rt: Runtime, shop: Shop, tmp_path: Any
) -> None:
    path = tmp_path / "texts.json"
    long_confirm = "Recharge {msisdn}? " + "Really " * 22 + "\n1 Yes\n2 No"
    path.write_text(
        json.dumps({"default": {"texts": {"en": {"ussd.confirm_number": long_confirm}}}})
    )
    with _client(rt, texts_file=path) as client:
        reply = Phone(client).step("2", OTHER)
    assert len(reply) == 182
    assert reply.startswith(f"CON Recharge {OTHER}? Really")
    assert reply.endswith("...")


def test_a_texts_file_with_a_text_that_cannot_fit_a_reply_stops_the_app(
    rt: Runtime, shop: Shop, tmp_path: Any
) -> None:
    path = tmp_path / "texts.json"
    path.write_text(json.dumps({"default": {"texts": {"sw": {"ussd.menu": "Menu " * 50}}}}))
    client = _client(rt, texts_file=path)
    with pytest.raises(TextsError) as refused:
        client.__enter__()
    assert "default.texts.sw.ussd.menu: 250 characters" in str(refused.value)
    assert "\n" not in str(refused.value)


def test_after_a_wrong_key_the_pages_of_offers_still_show_every_offer(
    rt: Runtime, gateway: TestClient
) -> None:
    offers = [
        {
            "number": n,
            "name": f"Offer {n}: {n * 10} SMS, {n * 100} MB, {n} days",
            "default": False,
            "credits": [{"balance_type": "SMS", "amount": n, "balance_expiry_extension_days": 1}],
            "account_expiry_extension_days": 0,
        }
        for n in range(1, 9)
    ]
    factories.voucher_type(rt, "EIGHT", scenarios=offers)
    [(_, pin)] = factories.active_batch(rt, "EIGHT", count=1)
    phone = Phone(gateway)
    phone.step("1")
    first = phone.step(pin)
    again = phone.step("9")  # no offer 9
    assert again.startswith("CON Invalid choice.\nChoose an offer:\n")
    assert again.removeprefix("CON Invalid choice.\n") == first.removeprefix("CON ")
    pages = [first]
    while len(pages) < 8:
        pages.append(phone.step("0"))
        if pages[-1] == first:
            break
    assert pages[-1] == first, "0 on the last page goes back to the first"
    shown = [line.split(":")[0] for page in pages[:-1] for line in page.split("\n")]
    assert [f"{n} Offer {n}" for n in range(1, 9)] == [
        line for line in shown if line.startswith(tuple("12345678")) and "Offer" in line
    ]
    assert phone.step("3").startswith("END Recharge of 254700000001 successful: +3 SMS")


def test_a_number_without_an_account_is_told_so_before_the_pin(
    rt: Runtime, gateway: TestClient, shop: Shop
) -> None:
    phone = Phone(gateway, msisdn="254700000077")
    phone.dial()
    assert phone.step("1") == "END This number has no account."
    assert transactions(rt) == []


def test_an_over_long_input_gets_an_end_reply_not_a_422(gateway: TestClient) -> None:
    phone = Phone(gateway)
    phone.dial()
    assert phone.step("1", "1" * 400) == "END Your input is too long. Please dial again."
    too_long_number = Phone(gateway, "other", msisdn="2" * 60)
    assert too_long_number.step() == "END Invalid phone number."
    too_long_id = Phone(gateway, "s" * 300)
    assert too_long_id.step() == "END Invalid phone number."


def test_a_subscriber_chooses_their_language_and_is_then_answered_in_it(
    rt: Runtime, gateway: TestClient, shop: Shop
) -> None:
    phone = Phone(gateway, "lang")
    phone.dial()
    assert phone.step("4") == "CON Choose your language:\n1 English\n2 Kiswahili"
    assert phone.step("2") == "END Ujumbe utakuwa kwa Kiswahili."
    swahili = Phone(gateway, "sw")
    assert swahili.dial() == (
        "CON 1 Ongeza salio langu\n2 Ongeza salio la namba nyingine\n3 Salio langu\n4 Lugha"
    )
    assert swahili.step("1") == "CON Weka PIN ya vocha:"
    assert swahili.step(shop.pins[0]) == (
        f"END Umefanikiwa kuongeza salio la {MSISDN}: +10.00 KES, salio 10.00 KES."
    )
    back = Phone(gateway, "en")
    back.step()
    assert back.step("4", "1") == "END Messages will be in English."
    assert Phone(gateway, "en2").dial() == MENU


def test_a_providers_default_language_answers_its_subscribers(
    rt: Runtime, shop: Shop, tmp_path: Any
) -> None:
    path = tmp_path / "texts.json"
    path.write_text(json.dumps({"service_providers": {"ACME": {"language": "sw"}}}))
    with _client(rt, texts_file=path) as client:
        phone = Phone(client)
        assert phone.dial().startswith("CON 1 Ongeza salio langu")
        assert phone.step("3") == "END Bado huna salio."
        stranger = Phone(client, "x", msisdn="254700000077")
        assert stranger.dial() == MENU


@pytest.mark.parametrize("language", ["en", "sw"])
def test_every_shipped_language_fits_each_ussd_reply(
    rt: Runtime, shop: Shop, tmp_path: Any, language: str
) -> None:
    path = tmp_path / "texts.json"
    path.write_text(json.dumps({"default": {"language": language}}))
    with _client(rt, texts_file=path) as client:
        phone = Phone(client)
        replies = [phone.dial(), phone.step("9"), phone.step("2"), phone.step("07")]
        replies += [phone.step("254700000077"), phone.step(OTHER), phone.step("1")]
        replies += [phone.step(bad_check_digit(shop.pins[0])), phone.step(shop.pins[0])]
        other = Phone(client, "b")
        replies += [other.step("1", shop.bundle_pins[0]), other.step("8"), other.step("1")]
        replies += [Phone(client, "c").step("3"), Phone(client, "d").step("4")]
    assert all(len(reply) <= 182 and not reply.endswith("...") for reply in replies)
    assert replies[-6].startswith("END ")  # the recharge of the other number
    assert "10.00 KES" in replies[-6]


def test_a_language_lacking_texts_is_reported_at_start_and_answered_in_english(
    rt: Runtime, shop: Shop, tmp_path: Any, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "texts.json"
    french = {"ussd.enter_pin": "Entrez le code du bon :"}
    path.write_text(
        json.dumps(
            {
                "service_providers": {"ACME": {"language": "fr"}},
                "default": {"texts": {"fr": french}},
            }
        )
    )
    caplog.set_level(logging.WARNING, logger="voms.channels")
    with _client(rt, texts_file=path) as client:
        reported = [r.getMessage() for r in caplog.records if "texts: fr lacks" in r.getMessage()]
        phone = Phone(client)
        assert phone.dial() == MENU
        assert phone.step("1") == "CON Entrez le code du bon :"
    [line] = reported
    assert "ussd.menu" in line
