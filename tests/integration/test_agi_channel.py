"""The FastAGI server, driven over TCP by a client that speaks AGI as Asterisk does.

The client writes the ``agi_`` environment and a blank line, then reads one command at a
time and answers it with ``200 result=…`` lines: DTMF digits for GET DATA, ``endpos``
for STREAM FILE, ``HANGUP`` and 511 once the caller has hung up.
"""

import asyncio
import contextlib
import json
import logging
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests import factories
from tests.agi_client import FakeAsterisk
from tests.channel_support import (
    MSISDN,
    OTHER,
    Shop,
    assert_never_logged,
    bad_check_digit,
    balance,
    configure,
    sendsms_inbox,
    shop_fixture,  # noqa: F401 (the shop fixture)
    transactions,
)
from voms.channels import agi, subscriber
from voms.channels.agi import AgiError, AgiReply, parse_reply
from voms.domain.pins import with_check_digit
from voms.domain.results import Result
from voms.runtime import Runtime
from voms.services import subscriber_view
from voms.services.auth import CONSOLE


class RunningAgi:
    """``agi.start`` on a free port, its event loop in a thread of its own."""

    def __init__(self, rt: Runtime) -> None:
        self.loop = asyncio.new_event_loop()
        self.server = self.loop.run_until_complete(agi.start(rt, ["127.0.0.1"], 0))
        self.port = int(self.server.sockets[0].getsockname()[1])
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def stop(self) -> None:
        async def close() -> None:
            self.server.close()
            await self.server.wait_closed()

        asyncio.run_coroutine_threadsafe(close(), self.loop).result(timeout=10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=10)
        self.loop.run_until_complete(self.loop.shutdown_default_executor())
        self.loop.close()


@pytest.fixture
def server(rt: Runtime, shop: Shop) -> Iterator[RunningAgi]:
    running = RunningAgi(rt)
    yield running
    running.stop()


# --- the protocol -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("line", "reply"),
    [
        ("200 result=0", AgiReply(200, "0")),
        ("200 result=1234 (timeout)\n", AgiReply(200, "1234", "timeout")),
        ("200 result= (timeout)", AgiReply(200, "", "timeout")),
        ("200 result=-1 endpos=0", AgiReply(200, "-1", None, {"endpos": "0"})),
        ("200 result=49 endpos=8640", AgiReply(200, "49", None, {"endpos": "8640"})),
        ("200 result=1 (speech) endpos=0", AgiReply(200, "1", "speech", {"endpos": "0"})),
        ("510 Invalid or unknown command", AgiReply(510, "", "Invalid or unknown command")),
        ("520 End of proper usage.", AgiReply(520, "", "End of proper usage.")),
        (
            "511 Command Not Permitted on a dead channel",
            AgiReply(511, "", "Command Not Permitted on a dead channel"),
        ),
    ],
)
def test_agi_reply_lines_are_parsed(line: str, reply: AgiReply) -> None:
    assert parse_reply(line) == reply


def test_a_line_that_is_not_agi_is_an_error() -> None:
    with pytest.raises(AgiError):
        parse_reply("hello")
    with pytest.raises(AgiError) as garbled:
        parse_reply("garbled 12345678901234 line")
    assert "12345678901234" not in str(garbled.value)
    assert "garbled" in str(garbled.value)


# --- calls ----------------------------------------------------------------------------------


def test_a_caller_recharges_their_own_number_and_hears_the_new_balance(
    rt: Runtime, server: RunningAgi, shop: Shop, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    pin = shop.pins[0]
    asterisk = FakeAsterisk(server.port, {"voms/menu": ["1"], "voms/enter-pin": [pin]})
    commands = asterisk.call()
    assert commands == [
        "ANSWER",
        "GET DATA voms/menu 6000 1",
        "GET DATA voms/enter-pin 6000 24",
        'SET VARIABLE VOMS_RESULT "0"',
        'STREAM FILE voms/recharge-successful ""',
        'SET VARIABLE VOMS_BALANCE "10"',
        # "ten shillings added, your new balance is ten shillings"
        'SAY NUMBER 10 ""',
        'STREAM FILE voms/unit-KES ""',
        'STREAM FILE voms/added ""',
        'STREAM FILE voms/your-new-balance-is ""',
        'SAY NUMBER 10 ""',
        'STREAM FILE voms/unit-KES ""',
        'STREAM FILE voms/goodbye ""',
    ]
    assert balance(rt) == 1000
    [row] = transactions(rt)
    assert (row.channel, row.actor, row.msisdn, row.result_code) == ("ivr", "ivr", MSISDN, 0)
    assert_never_logged(caplog, pin)


def test_another_number_is_entered_read_back_and_confirmed(
    rt: Runtime, server: RunningAgi, shop: Shop
) -> None:
    asterisk = FakeAsterisk(
        server.port,
        {
            "voms/menu": ["2"],
            "voms/enter-number": ["254700000003", OTHER],
            "voms/confirm-number": ["2", "1"],
            "voms/enter-pin": [shop.pins[0]],
        },
    )
    commands = asterisk.call()
    assert 'SAY DIGITS 254700000003 ""' in commands
    assert f'SAY DIGITS {OTHER} ""' in commands
    assert asterisk.variables["VOMS_RESULT"] == "0"
    assert (balance(rt, MSISDN), balance(rt, OTHER)) == (0, 1000)
    [row] = transactions(rt)
    assert (row.msisdn, row.recipient_msisdn) == (MSISDN, OTHER)


def test_a_caller_without_caller_id_enters_the_number(
    rt: Runtime, server: RunningAgi, shop: Shop
) -> None:
    asterisk = FakeAsterisk(
        server.port,
        {
            "voms/enter-number": [OTHER],
            "voms/confirm-number": ["1"],
            "voms/enter-pin": [shop.pins[0]],
        },
        callerid="unknown",
    )
    asterisk.call()
    assert "voms/menu" not in asterisk.played()
    assert balance(rt, OTHER) == 1000
    assert transactions(rt)[0].msisdn == OTHER


def test_a_bad_pin_may_be_entered_again_up_to_the_configured_count(rt: Runtime, shop: Shop) -> None:
    configure(rt, channel_pin_retries=2)
    running = RunningAgi(rt)
    try:
        wrong = bad_check_digit(shop.pins[0])
        again = FakeAsterisk(
            running.port, {"voms/menu": ["1"], "voms/enter-pin": [wrong, "", shop.pins[0]]}
        )
        again.call()
        assert again.played().count("voms/invalid-pin") == 2
        assert again.variables["VOMS_RESULT"] == "0"

        out = FakeAsterisk(running.port, {"voms/menu": ["1"], "voms/enter-pin": [wrong] * 3})
        out.call()
        assert out.variables["VOMS_RESULT"] == "2002"
        assert out.played()[-2:] == ["voms/result-2002", "voms/goodbye"]
    finally:
        running.stop()
    assert [row.result_code for row in transactions(rt)] == [2002, 4007, 0, 2002, 2002, 2002]


def test_a_voucher_with_offers_asks_for_one(rt: Runtime, server: RunningAgi, shop: Shop) -> None:
    asterisk = FakeAsterisk(
        server.port,
        {
            "voms/menu": ["1"],
            "voms/enter-pin": [shop.bundle_pins[0]],
            "voms/choose-offer": ["7", "2"],
        },
    )
    asterisk.call()
    assert asterisk.played().count("voms/choose-offer") == 2
    assert "voms/invalid-choice" in asterisk.played()
    # The offers are read out before the choice: "for ten shillings press 1, ..."
    heard = asterisk.said()
    first_choice = heard.index("voms/choose-offer")
    assert heard[heard.index("voms/enter-pin") + 1 : first_choice] == [
        *["voms/for", "#10", "voms/unit-KES", "voms/press", "#1"],
        *["voms/for", "#50", "voms/unit-SMS", "voms/press", "#2"],
    ]
    assert asterisk.variables == {"VOMS_RESULT": "0", "VOMS_BALANCE": "50"}
    assert balance(rt, balance_type="SMS") == 50


def test_a_failure_without_its_own_sound_file_plays_the_generic_one(
    rt: Runtime, server: RunningAgi, shop: Shop
) -> None:
    FakeAsterisk(server.port, {"voms/menu": ["1"], "voms/enter-pin": [shop.pins[0]]}).call()
    asterisk = FakeAsterisk(
        server.port,
        {"voms/menu": ["1"], "voms/enter-pin": [shop.pins[0]]},
        missing={"voms/result-2009"},
    )
    asterisk.call()
    assert asterisk.variables["VOMS_RESULT"] == "2009"
    assert asterisk.played()[-3:] == ["voms/result-2009", "voms/recharge-failed", "voms/goodbye"]


def test_each_redemption_has_a_request_id_and_a_lost_answer_is_asked_again_safely(
    rt: Runtime, server: RunningAgi, shop: Shop, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = subscriber.redeem
    sent: list[str | None] = []

    def answer_lost_once(*args: Any, **kwargs: Any) -> dict[str, Any]:
        # The redemption commits, then its answer is lost on the way back (3000).
        sent.append(kwargs.get("request_id"))
        answer = real(*args, **kwargs)
        if len(sent) == 1:
            return Result.SYSTEM_ERROR.body()
        return answer

    monkeypatch.setattr(agi, "RETRY_DELAY_S", 0)
    monkeypatch.setattr(subscriber, "redeem", answer_lost_once)
    asterisk = FakeAsterisk(server.port, {"voms/menu": ["1"], "voms/enter-pin": [shop.pins[0]]})
    asterisk.call()
    assert asterisk.variables["VOMS_RESULT"] == "0"
    assert len(sent) == 2
    assert sent[0] == sent[1]
    assert sent[0] is not None
    assert sent[0].startswith("ivr-")
    assert balance(rt) == 1000  # credited once
    assert [row.result_code for row in transactions(rt)] == [0]


def test_every_redemption_of_a_call_has_its_own_request_id(
    rt: Runtime, server: RunningAgi, shop: Shop, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = subscriber.redeem
    sent: list[str | None] = []

    def recorded(*args: Any, **kwargs: Any) -> dict[str, Any]:
        sent.append(kwargs.get("request_id"))
        return real(*args, **kwargs)

    monkeypatch.setattr(subscriber, "redeem", recorded)
    asterisk = FakeAsterisk(
        server.port,
        {"voms/menu": ["1"], "voms/enter-pin": [shop.bundle_pins[0]], "voms/choose-offer": ["2"]},
    )
    asterisk.call()
    other = FakeAsterisk(server.port, {"voms/menu": ["1"], "voms/enter-pin": [shop.pins[1]]})
    other.call()
    assert asterisk.variables["VOMS_RESULT"] == other.variables["VOMS_RESULT"] == "0"
    assert len(sent) == 3
    assert len(set(sent)) == 3


@pytest.mark.parametrize("hangup_first", [False, True])
def test_a_caller_hanging_up_during_pin_entry_ends_the_call_quietly(
    rt: Runtime,
    server: RunningAgi,
    shop: Shop,
    hangup_first: bool,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="voms.channels.agi")
    asterisk = FakeAsterisk(
        server.port, {"voms/menu": ["1"]}, hangup_at="voms/enter-pin", hangup_first=hangup_first
    )
    commands = asterisk.call()
    assert commands[-1] == "GET DATA voms/enter-pin 6000 24"
    assert transactions(rt) == []
    assert "ivr: caller hung up" in caplog.text
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


def test_prompts_are_configurable(rt: Runtime, shop: Shop) -> None:
    configure(
        rt,
        agi_prompts={"enter_pin": "acme/pin", "result_2004": "acme/unknown-pin"},
        channel_pin_retries=0,
    )
    unknown_pin = with_check_digit("1234567890123")
    running = RunningAgi(rt)
    try:
        asterisk = FakeAsterisk(running.port, {"voms/menu": ["1"], "acme/pin": [unknown_pin]})
        asterisk.call()
    finally:
        running.stop()
    assert asterisk.played()[1:] == ["acme/pin", "acme/unknown-pin", "voms/goodbye"]


def test_a_prompt_name_that_could_inject_a_command_is_refused(rt: Runtime) -> None:
    configure(rt, agi_prompts={"goodbye": 'bye ""\nHANGUP'})
    with pytest.raises(ValueError, match="not a sound file name"):
        agi.prompts_of(rt)


def test_connections_from_other_addresses_are_refused_unheard(
    rt: Runtime, shop: Shop, caplog: pytest.LogCaptureFixture
) -> None:
    configure(rt, agi_allowed_clients="192.0.2.0/24, 2001:db8::1")
    caplog.set_level(logging.WARNING, logger="voms.channels.agi")
    running = RunningAgi(rt)
    try:
        asterisk = FakeAsterisk(
            running.port, {"voms/menu": ["1"], "voms/enter-pin": [shop.pins[0]]}
        )
        # Closed with the environment unread, the kernel may answer with a reset.
        with contextlib.suppress(ConnectionResetError):
            asterisk.call()
        assert asterisk.commands == []
    finally:
        running.stop()
    assert "refused FastAGI connection from 127.0.0.1" in caplog.text
    assert transactions(rt) == []


def test_every_credit_is_said_as_money_with_its_minor_units(rt: Runtime, shop: Shop) -> None:
    both = [
        {
            "number": 1,
            "name": "15.50 KES + 20 SMS",
            "default": True,
            "credits": [
                {"balance_type": "CASH", "amount": 1550, "balance_expiry_extension_days": 1},
                {"balance_type": "SMS", "amount": 20, "balance_expiry_extension_days": 1},
            ],
            "account_expiry_extension_days": 0,
        }
    ]
    factories.voucher_type(rt, "BOTH", scenarios=both)
    [(_, pin)] = factories.active_batch(rt, "BOTH", count=1)
    running = RunningAgi(rt)
    try:
        asterisk = FakeAsterisk(running.port, {"voms/menu": ["1"], "voms/enter-pin": [pin]})
        asterisk.call()
    finally:
        running.stop()
    fifteen_fifty = ["#15", "voms/unit-KES", "voms/and", "#50", "voms/minor-KES"]
    twenty_sms = ["#20", "voms/unit-SMS"]
    assert asterisk.said()[2:-1] == [
        "voms/recharge-successful",
        *[*fifteen_fifty, "voms/added", "voms/your-new-balance-is", *fifteen_fifty],
        *[*twenty_sms, "voms/added", "voms/your-new-balance-is", *twenty_sms],
    ]
    assert asterisk.variables["VOMS_BALANCE"] == "15"


def test_a_swahili_call_hears_the_swahili_prompt_set(
    rt: Runtime, server: RunningAgi, shop: Shop
) -> None:
    asterisk = FakeAsterisk(
        server.port, {"voms/menu": ["1"], "voms/enter-pin": [shop.pins[0]]}, language="sw"
    )
    asterisk.call()
    # "umeongezewa shilingi kumi, salio lako jipya ni shilingi kumi": the unit first
    assert asterisk.said()[2:] == [
        "voms/recharge-successful",
        *["voms/added", "voms/unit-KES", "#10"],
        *["voms/your-new-balance-is", "voms/unit-KES", "#10"],
        "voms/goodbye",
    ]


def test_a_call_in_a_language_without_texts_hears_the_english_prompt_set(
    rt: Runtime, server: RunningAgi, shop: Shop
) -> None:
    asterisk = FakeAsterisk(
        server.port, {"voms/menu": ["1"], "voms/enter-pin": [shop.pins[0]]}, language="fr"
    )
    asterisk.call()
    assert asterisk.said()[3:5] == ["#10", "voms/unit-KES"]


def test_3_answers_the_callers_balances(rt: Runtime, server: RunningAgi, shop: Shop) -> None:
    FakeAsterisk(server.port, {"voms/menu": ["1"], "voms/enter-pin": [shop.pins[0]]}).call()
    asterisk = FakeAsterisk(server.port, {"voms/menu": ["3"]})
    asterisk.call()
    assert asterisk.said() == [
        "voms/menu",
        *["voms/your-balance-is", "#10", "voms/unit-KES"],
        "voms/goodbye",
    ]
    assert asterisk.variables == {"VOMS_RESULT": "0"}
    empty = FakeAsterisk(server.port, {"voms/menu": ["3"]}, callerid=OTHER)
    empty.call()
    assert empty.said() == ["voms/menu", "voms/no-balance", "voms/goodbye"]
    stranger = FakeAsterisk(server.port, {"voms/menu": ["3"]}, callerid="254700000077")
    stranger.call()
    assert stranger.said() == ["voms/menu", "voms/no-account", "voms/goodbye"]
    assert stranger.variables == {"VOMS_RESULT": "5001"}
    assert len(transactions(rt)) == 1


def test_another_number_without_an_account_is_refused_before_the_pin(
    rt: Runtime, server: RunningAgi, shop: Shop
) -> None:
    asterisk = FakeAsterisk(
        server.port,
        {
            "voms/menu": ["2"],
            "voms/enter-number": ["254700000077", OTHER],
            "voms/confirm-number": ["1", "1"],
            "voms/enter-pin": [shop.pins[0]],
        },
    )
    asterisk.call()
    heard = asterisk.said()
    assert heard.index("voms/no-account") < heard.index("voms/enter-pin")
    assert heard.count("voms/enter-number") == 2
    assert balance(rt, OTHER) == 1000


def test_a_texts_file_sets_the_prompts_of_a_language(
    rt: Runtime, shop: Shop, tmp_path: Path
) -> None:
    path = tmp_path / "texts.json"
    path.write_text(
        json.dumps({"default": {"texts": {"sw": {"ivr.enter_pin": "acme/sw-intro acme/sw-pin"}}}})
    )
    configure(rt, texts_file=path)
    running = RunningAgi(rt)
    try:
        asterisk = FakeAsterisk(
            running.port, {"voms/menu": ["1"], "acme/sw-pin": [shop.pins[0]]}, language="sw"
        )
        asterisk.call()
    finally:
        running.stop()
    assert asterisk.said()[:3] == ["voms/menu", "acme/sw-intro", "acme/sw-pin"]
    assert asterisk.variables["VOMS_RESULT"] == "0"


def test_a_call_in_swahili_is_confirmed_by_sms_in_swahili(rt: Runtime, shop: Shop) -> None:
    subscriber_view.set_language(rt, CONSOLE, MSISDN, "sw")
    with sendsms_inbox() as (url, inbox):
        configure(rt, kannel_sendsms_url=url, confirmation_sms=True)
        running = RunningAgi(rt)
        try:
            FakeAsterisk(
                running.port,
                {"voms/menu": ["1"], "voms/enter-pin": [shop.pins[0]]},
                language="sw",
            ).call()
            sent = inbox.next()
        finally:
            running.stop()
    assert sent["to"] == MSISDN
    assert sent["text"] == (
        f"Salio la {MSISDN} limeongezwa: +10.00 KES, salio 10.00 KES. "
        f"Namba ya mfululizo {shop.serials[0]}."
    )
