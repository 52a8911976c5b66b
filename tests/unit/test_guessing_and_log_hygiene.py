"""The guessing arithmetic of SECURITY.md, masked numbers, and a log no request can forge."""

import logging

from voms.domain.guessing import HOURS_PER_YEAR, hours_to_guess, pins_of_length
from voms.domain.msisdn import mask_msisdn, msisdn_is_authenticated
from voms.logs import TextFormatter


def test_expected_time_to_guess_follows_the_table_of_security_md() -> None:
    assert pins_of_length(14) == 10**13
    assert round(hours_to_guess(12, 10**6, 600)) == 167
    assert 1.8 < hours_to_guess(14, 10**6, 600) / HOURS_PER_YEAR < 2.0
    assert 18 < hours_to_guess(16, 10**7, 600) / HOURS_PER_YEAR < 20
    assert hours_to_guess(14, 0, 600) == float("inf")


def test_numbers_that_match_no_subscriber_keep_two_digits() -> None:
    assert mask_msisdn("12345678901234") == "************34"


def test_only_network_channels_vouch_for_the_msisdn() -> None:
    assert all(msisdn_is_authenticated(c) for c in ("ussd", "sms", "ivr", "soap", "care"))
    assert not any(msisdn_is_authenticated(c) for c in ("rest", "web"))


def test_a_logged_value_cannot_start_a_line_of_its_own() -> None:
    forged = "x\n2026-12-06 10:00:00,000 INFO voms.api admin key revoked\r\x1b[2K"
    record = logging.LogRecord("voms", logging.INFO, __file__, 1, "job %s", (forged,), None)
    text = TextFormatter("%(levelname)s %(message)s").format(record)
    lines = text.split("\n")
    assert lines[0] == "INFO job x"
    assert lines[1].startswith("    2026-12-06")
    assert "\r" not in text
    assert "\x1b" not in text
    assert "\\x1b" in text
