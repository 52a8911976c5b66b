"""Subscriber texts: defaults, overrides per provider and language, the file's checks."""

import json
import logging
import os
from pathlib import Path

import pytest

from voms.channels import texts
from voms.channels.texts import DEFAULTS, Sayable, Texts, TextsError, load, parse
from voms.domain.results import Result
from voms.logs import QueryScrubber

SUCCESS = {
    "result_code": 0,
    "msisdn": "254700000001",
    "recipient_msisdn": "254700000002",
    "serial": "100000000001",
    "credits": [{"balance_type": "CASH", "amount": 1000, "balance": 1550}],
}


def test_every_result_code_has_an_english_text() -> None:
    for result in Result:
        assert DEFAULTS[f"result.{result.code}"].strip()


def test_no_default_text_offers_a_pin_placeholder() -> None:
    for key, text in DEFAULTS.items():
        assert not {"pin", "PIN"} & texts.placeholders(text), key


def test_a_success_names_the_recipient_and_each_credit() -> None:
    said = Texts().messages()
    assert said.result(SUCCESS) == (
        "Recharge of 254700000002 successful: +1000 CASH, balance 1550 CASH."
    )


def test_amounts_are_money_in_the_balance_types_currency_and_minor_unit() -> None:
    said = Texts().messages(currencies={"CASH": "KES", "SMS": None})
    assert said.result(SUCCESS) == (
        "Recharge of 254700000002 successful: +10.00 KES, balance 15.50 KES."
    )
    assert said.balances([{"balance_type": "SMS", "amount": 50}]) == "Your balance: 50 SMS."
    assert Texts().messages(currencies={"CASH": "JPY"}).amount("CASH", 1000) == "1000"
    assert Texts().messages(currencies={"CASH": "BHD"}).amount("CASH", 1000) == "1.000"
    named = parse({"default": {"texts": {"en": {"balance_type.CASH": "shillings"}}}})
    assert named.messages(currencies={"CASH": "KES"}).credits(SUCCESS["credits"]) == (
        "+10.00 shillings, balance 15.50 shillings"
    )


def test_the_ivr_says_amounts_in_words_in_each_languages_order() -> None:
    english = Texts().messages(None, "en", {"CASH": "KES"})
    assert english.said_amount("CASH", 1000) == [Sayable.number(10), Sayable("voms/unit-KES")]
    assert english.said_amount("CASH", 1550) == [
        Sayable.number(15),
        Sayable("voms/unit-KES"),
        Sayable("voms/and"),
        Sayable.number(50),
        Sayable("voms/minor-KES"),
    ]
    swahili = Texts().messages(None, "sw", {"CASH": "KES"})
    assert swahili.said_amount("CASH", 1000) == [Sayable("voms/unit-KES"), Sayable.number(10)]


def test_english_and_every_shipped_language_are_complete() -> None:
    installed = Texts()
    assert installed.languages() == ["en", "sw"]
    assert installed.missing() == {}
    assert set(texts.shipped_locales()["sw"]) == set(DEFAULTS)


def test_a_missing_translation_falls_back_to_english_and_is_reported() -> None:
    partial = parse({"default": {"texts": {"fr": {"result.2009": "Ce bon a déjà servi."}}}})
    said = partial.messages(None, "fr")
    assert said.result({"result_code": 2009}) == "Ce bon a déjà servi."
    assert said.result({"result_code": 2014}) == "This voucher has expired."
    [line] = partial.report()
    assert line.startswith(f"texts: fr lacks {len(DEFAULTS) - 1} text(s), said in English: ")
    assert "result.2014" in line
    assert "\n" not in line


def test_a_providers_language_is_its_subscribers_default() -> None:
    configured = parse(
        {"default": {"language": "en"}, "service_providers": {"ACME": {"language": "sw"}}}
    )
    assert configured.language_of("ACME") == "sw"
    assert configured.language_of("ACME", "en") == "en"
    assert configured.language_of("ACME", "xx") == "sw"
    assert configured.language_of("OTHER") == "en"
    assert configured.messages("ACME").result({"result_code": 2009}) == "Vocha hii imeshatumika."


def test_a_text_that_cannot_fit_a_ussd_reply_is_refused_in_one_line() -> None:
    fits = "x" * 178
    parse({"default": {"texts": {"en": {"ussd.enter_pin": fits}}}})
    parse({"default": {"texts": {"en": {"web.title": "x" * 400}}}})  # a page, not a screen
    with pytest.raises(TextsError) as refused:
        parse({"default": {"texts": {"sw": {"result.2009": fits + "x"}}}})
    assert str(refused.value) == (
        "default.texts.sw.result.2009: 179 characters without its values; "
        "a USSD reply holds 178 after CON/END"
    )
    assert texts.fixed_length("Recharge {msisdn}?\n1 Yes") == len("Recharge ?\n1 Yes")


def test_every_default_screen_text_fits_a_ussd_reply() -> None:
    for key, text in DEFAULTS.items():
        if not key.startswith(("web.", "ivr.")):
            assert texts.fixed_length(text) <= texts.MAX_SCREEN_CHARS, key


def test_decimals_and_balance_type_names_make_amounts_readable() -> None:
    said = parse(
        {
            "default": {
                "decimals": {"CASH": 2},
                "texts": {"en": {"balance_type.CASH": "KES"}},
            }
        }
    ).messages()
    assert said.credits(SUCCESS["credits"]) == "+10.00 KES, balance 15.50 KES"
    assert said.amount("CASH", -5) == "-0.05"
    assert said.major_units("CASH", 1550) == 15
    assert said.balances([]) == "You have no balance yet."


def test_provider_and_language_overrides_are_found_in_that_order() -> None:
    configured = parse(
        {
            "default": {"texts": {"sw": {"result.2009": "Vocha hii imeshatumika."}}},
            "service_providers": {
                "ACME": {
                    "texts": {
                        "en": {"result.2009": "ACME: already used."},
                        "sw": {"result.2014": "ACME: imeisha muda."},
                    }
                }
            },
        }
    )
    used = {"result_code": 2009}
    expired = {"result_code": 2014}
    assert configured.messages("ACME", "sw").result(used) == "Vocha hii imeshatumika."
    assert configured.messages("ACME", "sw").result(expired) == "ACME: imeisha muda."
    assert configured.messages("ACME", "fr").result(used) == "ACME: already used."
    assert configured.messages("OTHER", "en").result(used) == "This voucher has already been used."
    assert configured.messages(None, "sw").result(expired) == "Muda wa vocha hii umekwisha."
    assert configured.messages(None, "fr").result(expired) == "This voucher has expired."
    assert configured.languages() == ["en", "sw"]


def test_an_unknown_result_code_reads_as_a_system_error() -> None:
    assert Texts().messages().result({"result_code": 9999}) == DEFAULTS["result.3000"]


@pytest.mark.parametrize(
    ("content", "complaint"),
    [
        ({"default": {"texts": {"en": {"result.2099": "x"}}}}, "unknown text key"),
        ({"default": {"texts": {"en": {"result.0": "Done {pin}"}}}}, "unknown placeholder"),
        ({"default": {"texts": {"en": {"ussd.menu": "1 {"}}}}, "malformed placeholder"),
        ({"default": {"texts": {"english!": {}}}}, "not a language code"),
        ({"default": {"decimals": {"CASH": 9}}}, "0 to 6"),
        ({"defaults": {}}, "unknown key"),
        ({"service_providers": {"ACME": {"text": {}}}}, "unknown key"),
        ({"default": {"texts": {"en": {"balance_type.CASH": "{x}"}}}}, "no placeholders"),
        ({"default": {"texts": {"en": {"ivr.menu": 'menu ""\nHANGUP'}}}}, "not a sound file"),
        ({"default": {"texts": {"en": {"ivr.menu": " "}}}}, "not a sound file"),
        ({"default": {"language": "english!"}}, "not a language code"),
        ([], "expected a JSON object"),
    ],
)
def test_a_texts_file_that_could_break_a_reply_is_refused(content: object, complaint: str) -> None:
    with pytest.raises(TextsError, match=complaint):
        parse(content)


def test_a_texts_file_is_read_and_its_errors_name_the_file(tmp_path: Path) -> None:
    path = tmp_path / "texts.json"
    path.write_text(json.dumps({"default": {"texts": {"en": {"result.2014": "Too late."}}}}))
    assert load(path).messages().result({"result_code": 2014}) == "Too late."
    path.write_text("{")
    with pytest.raises(TextsError, match=r"texts\.json: not JSON"):
        load(path)
    with pytest.raises(TextsError, match="cannot read"):
        load(tmp_path / "missing.json")


def test_access_log_lines_lose_the_pin_and_the_secret_but_keep_the_rest() -> None:
    # The arguments uvicorn gives its access log: client, method, path?query, version, status
    record = logging.LogRecord(
        "uvicorn.access",
        logging.INFO,
        __file__,
        1,
        '%s - "%s %s HTTP/%s" %d',
        (
            "127.0.0.1:5000",
            "GET",
            "/sms/kannel?secret=s3cr3t&from=2547&text=RCH+12345678901234&id=x&token=t0k3n",
            "1.1",
            200,
        ),
        None,
    )
    assert QueryScrubber().filter(record)
    line = record.getMessage()
    assert "12345678901234" not in line
    assert "s3cr3t" not in line
    assert "t0k3n" not in line
    assert "/sms/kannel?secret=***&from=2547&text=***&id=x&token=***" in line


class _Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _write(path: Path, text: str, mtime: int) -> None:
    path.write_text(text, encoding="utf-8")
    os.utime(path, ns=(mtime, mtime))  # a new modification time, however fast the test


def test_a_changed_texts_file_is_read_again_at_most_once_a_second(tmp_path: Path) -> None:
    path = tmp_path / "texts.json"
    _write(path, json.dumps({"default": {"texts": {"en": {"result.2009": "Used."}}}}), 1)
    clock = _Clock()
    watched = texts.TextsFile(path, clock=clock)
    assert watched.current().messages().text("result.2009") == "Used."

    _write(path, json.dumps({"default": {"texts": {"en": {"result.2009": "Used up."}}}}), 2)
    clock.now += 0.5
    assert watched.current().messages().text("result.2009") == "Used."  # not looked at yet
    clock.now += 0.6
    assert watched.current().messages().text("result.2009") == "Used up."


def test_a_broken_new_texts_file_keeps_the_texts_in_use_and_logs_an_error(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "texts.json"
    _write(path, json.dumps({"default": {"texts": {"en": {"result.2009": "Used."}}}}), 1)
    clock = _Clock()
    watched = texts.TextsFile(path, clock=clock)
    _write(path, '{"default": {"texts": {"en": {"result.2009": "{pin}"}}}}', 2)
    clock.now += 1
    with caplog.at_level(logging.ERROR, logger="voms.channels.texts"):
        assert watched.current().messages().text("result.2009") == "Used."
        clock.now += 1
        assert watched.current().messages().text("result.2009") == "Used."
    [error] = caplog.records  # logged once, not at every look
    assert str(path) in error.getMessage()
    assert "texts in use stay" in error.getMessage()

    _write(path, "{not json", 3)
    clock.now += 1
    assert watched.current().messages().text("result.2009") == "Used."
    _write(path, json.dumps({"default": {"texts": {"en": {"result.2009": "Fixed."}}}}), 4)
    clock.now += 1
    assert watched.current().messages().text("result.2009") == "Fixed."


def test_a_broken_texts_file_at_start_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "texts.json"
    path.write_text("{not json", encoding="utf-8")
    with pytest.raises(TextsError, match="not JSON"):
        texts.TextsFile(path)
