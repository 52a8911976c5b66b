"""The redemption service: every result code, their precedence, and what a success does."""

from collections.abc import Iterator
from datetime import datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import Engine, func, select, update

from tests import factories
from voms.db import tables as t
from voms.db.types import utcnow
from voms.domain.errors import ResultError
from voms.domain.pins import with_check_digit
from voms.runtime import Runtime
from voms.services import auth, housekeeping, lifecycle, redemption, wallet
from voms.services.auth import CONSOLE, Principal
from voms.services.redemption import RechargeRequest, RedemptionRequest

MSISDN = "254700000001"
OTHER = "254700000002"


@pytest.fixture
def pins(rt: Runtime) -> list[tuple[str, str]]:
    """Five active TOPUP10 vouchers (10 KES, +30 days balance, +60 days account)."""
    factories.standard_catalog(rt)
    factories.subscriber(rt, MSISDN)
    return factories.active_batch(rt, count=5)


def redeem(rt: Runtime, actor: Principal = CONSOLE, **fields: Any) -> dict[str, Any]:
    return redemption.redeem(rt, actor, RedemptionRequest(**{"msisdn": MSISDN, **fields}))


def code_of(rt: Runtime, **fields: Any) -> int:
    try:
        redeem(rt, **fields)
    except ResultError as error:
        return error.result.code
    return 0


def balance(rt: Runtime, msisdn: str = MSISDN, balance_type: str = "CASH") -> int:
    found = wallet.get_subscriber(rt, CONSOLE, msisdn)["balances"]
    return sum(b["amount"] for b in found if b["balance_type"] == balance_type)


def voucher_state(rt: Runtime, serial: str) -> str:
    with rt.engine.connect() as conn:
        return str(
            conn.execute(
                select(t.vouchers.c.state).where(t.vouchers.c.serial == int(serial))
            ).scalar_one()
        )


def batch_of(rt: Runtime, serial: str) -> int:
    with rt.engine.connect() as conn:
        return int(
            conn.execute(
                select(t.vouchers.c.batch_id).where(t.vouchers.c.serial == int(serial))
            ).scalar_one()
        )


def transactions(rt: Runtime) -> list[Any]:
    with rt.engine.connect() as conn:
        return conn.execute(select(t.transactions).order_by(t.transactions.c.at)).all()


# --- success ------------------------------------------------------------------------------


def test_redeeming_credits_the_wallet_and_consumes_the_voucher(
    rt: Runtime, pins: list[tuple[str, str]]
) -> None:
    serial, pin = pins[0]
    before = utcnow()
    answer = redeem(rt, pin=pin, channel="ussd")
    assert answer["result_code"] == 0
    assert answer["result_text"] == "Success"
    assert answer["serial"] == serial
    assert answer["voucher_type"] == "TOPUP10"
    assert answer["scenario"] == 1
    assert answer["msisdn"] == MSISDN
    assert answer["product_type"] == "GOLD"
    assert answer["rewards"] == []
    [credit] = answer["credits"]
    assert credit["balance_type"] == "CASH"
    assert credit["amount"] == 1000
    assert credit["balance"] == 1000
    assert credit["expires_at"] >= (before + timedelta(days=30)).isoformat()
    assert balance(rt) == 1000
    assert voucher_state(rt, serial) == "redeemed"
    [row] = transactions(rt)
    assert (row.kind, row.channel, row.result_code, row.serial) == (
        "redemption",
        "ussd",
        0,
        int(serial),
    )
    assert row.id == answer["transaction_id"]
    with rt.engine.connect() as conn:
        ledger = conn.execute(select(t.ledger)).one()
    assert (ledger.amount, ledger.cause, ledger.serial) == (1000, "redemption", int(serial))
    assert ledger.transaction_id == answer["transaction_id"]


def test_the_pin_never_appears_in_an_answer_or_a_record(
    rt: Runtime, pins: list[tuple[str, str]]
) -> None:
    _, pin = pins[0]
    answer = redeem(rt, pin=pin, request_id="with-pin")
    with pytest.raises(ResultError) as failed:
        redeem(rt, pin=pin)
    wrong_check_digit = pin[:-1] + str((int(pin[-1]) + 1) % 10)
    with pytest.raises(ResultError):
        redeem(rt, pin=wrong_check_digit, request_id="bad-pin", channel="ussd")
    assert pin not in repr(answer)
    assert pin not in repr(failed.value.extra) + str(failed.value)
    assert all(pin not in repr(row) for row in transactions(rt))
    with rt.engine.connect() as conn:
        remembered = conn.execute(select(t.idempotency_keys)).all()
        attempts = conn.execute(select(t.pin_attempts)).all()
    assert len(remembered) == 2
    assert len(attempts) == 1
    stored = repr(remembered) + repr(attempts)
    assert pin[:-1] not in stored


def test_a_recipient_is_credited_on_behalf_of_the_requester(
    rt: Runtime, pins: list[tuple[str, str]]
) -> None:
    factories.subscriber(rt, OTHER)
    answer = redeem(rt, pin=pins[0][1], recipient_msisdn="+254 700-000002")
    assert answer["recipient_msisdn"] == OTHER
    assert balance(rt, OTHER) == 1000
    assert balance(rt, MSISDN) == 0
    [row] = transactions(rt)
    assert (row.msisdn, row.recipient_msisdn) == (MSISDN, OTHER)


def test_expiries_are_extended_from_the_later_of_now_and_the_current_expiry(
    rt: Runtime, pins: list[tuple[str, str]]
) -> None:
    later = utcnow() + timedelta(days=100)
    factories.subscriber(rt, OTHER, account_expires_at=later)
    first = redeem(rt, pin=pins[0][1], recipient_msisdn=OTHER)
    assert first["account_expires_at"] == (later + timedelta(days=60)).isoformat()
    second = redeem(rt, pin=pins[1][1], recipient_msisdn=OTHER)
    balance_expiry = first["credits"][0]["expires_at"]
    assert (
        second["credits"][0]["expires_at"]
        == (datetime.fromisoformat(balance_expiry) + timedelta(days=30)).isoformat()
    )
    assert second["credits"][0]["balance"] == 2000

    past = utcnow() - timedelta(days=10)
    factories.subscriber(rt, "254700000003", account_expires_at=past)
    before = utcnow()
    third = redeem(rt, pin=pins[2][1], recipient_msisdn="254700000003")
    expires = datetime.fromisoformat(third["account_expires_at"])
    assert before + timedelta(days=60) <= expires <= utcnow() + timedelta(days=60)


# --- result codes ---------------------------------------------------------------------------


def test_a_second_redemption_of_one_voucher_gives_2009(
    rt: Runtime, pins: list[tuple[str, str]]
) -> None:
    redeem(rt, pin=pins[0][1])
    assert code_of(rt, pin=pins[0][1]) == 2009
    assert balance(rt) == 1000


@pytest.mark.parametrize(
    ("pin", "code"),
    [
        (None, 4007),
        ("", 4007),
        ("12345", 4001),
        ("1234567890123", 4001),
        ("12345678901234", 2002),  # fourteen digits, wrong check digit
        ("1234abcd901234", 2002),
        (["a"], 2002),
    ],
)
def test_malformed_pins_are_refused_before_any_lookup(
    rt: Runtime, pins: list[tuple[str, str]], pin: object, code: int
) -> None:
    good = pins[0][1]
    if code == 2002 and pin == "12345678901234":
        pin = good[:-1] + str((int(good[-1]) + 1) % 10)
    assert code_of(rt, pin=pin) == code


def test_an_unknown_pin_gives_2004(rt: Runtime, pins: list[tuple[str, str]]) -> None:
    known = {pin for _, pin in pins}
    unknown = next(
        p for p in (with_check_digit(f"{n:013d}") for n in range(1000, 2000)) if p not in known
    )
    assert code_of(rt, pin=unknown) == 2004


def test_a_voucher_type_created_a_moment_ago_is_redeemable_at_once(
    rt: Runtime, pins: list[tuple[str, str]]
) -> None:
    """The catalog cache, filled by a first redemption, does not know a new PIN length:
    it reads the catalog again rather than refuse the PIN until it expires."""
    assert redeem(rt, pin=pins[0][1])["result_code"] == 0
    factories.voucher_type(rt, "TOPUP10_SHORT", pin_length=10)
    (_, short_pin), *_ = factories.active_batch(rt, "TOPUP10_SHORT", count=1)
    assert redeem(rt, pin=short_pin)["voucher_type"] == "TOPUP10_SHORT"


@pytest.mark.parametrize(("msisdn", "recipient"), [(None, None), ("12ab", None), (MSISDN, "x")])
def test_a_missing_or_invalid_subscriber_number_gives_4006(
    rt: Runtime, pins: list[tuple[str, str]], msisdn: str | None, recipient: str | None
) -> None:
    assert code_of(rt, msisdn=msisdn, recipient_msisdn=recipient, pin=pins[0][1]) == 4006


def test_a_serial_that_is_not_the_pins_gives_2003(rt: Runtime, pins: list[tuple[str, str]]) -> None:
    (serial, pin), (other_serial, _) = pins[0], pins[1]
    assert code_of(rt, pin=pin, serial=other_serial) == 2003
    assert code_of(rt, pin=pin, serial="12-x") == 2003
    assert code_of(rt, pin=pin, serial=serial) == 0


def test_a_batch_not_yet_activated_gives_2011(rt: Runtime, pins: list[tuple[str, str]]) -> None:
    [(_, pin)] = factories.active_batch(rt, count=1, activate=False)
    assert code_of(rt, pin=pin) == 2011


def test_a_frozen_or_deleted_batch_gives_2001(rt: Runtime, pins: list[tuple[str, str]]) -> None:
    lifecycle.change_batch(rt, CONSOLE, batch_of(rt, pins[0][0]), "freeze")
    assert code_of(rt, pin=pins[0][1]) == 2001
    lifecycle.change_batch(rt, CONSOLE, batch_of(rt, pins[0][0]), "delete")
    assert code_of(rt, pin=pins[1][1]) == 2001


def test_a_frozen_voucher_gives_2012_and_a_deleted_one_2013(
    rt: Runtime, pins: list[tuple[str, str]]
) -> None:
    lifecycle.change_vouchers(rt, CONSOLE, "freeze", pins[0][0])
    lifecycle.change_vouchers(rt, CONSOLE, "delete", pins[1][0])
    assert code_of(rt, pin=pins[0][1]) == 2012
    assert code_of(rt, pin=pins[1][1]) == 2013


def test_an_expired_voucher_gives_2014(rt: Runtime, pins: list[tuple[str, str]]) -> None:
    lifecycle.amend_batch(rt, CONSOLE, batch_of(rt, pins[0][0]), utcnow() - timedelta(seconds=1))
    assert code_of(rt, pin=pins[0][1]) == 2014


def test_the_first_applicable_code_wins_in_the_order_of_api_md(
    rt: Runtime, pins: list[tuple[str, str]]
) -> None:
    batch = batch_of(rt, pins[0][0])
    redeem(rt, pin=pins[0][1])
    redemption.reserve(rt, CONSOLE, RedemptionRequest(msisdn=MSISDN, pin=pins[1][1]))
    lifecycle.change_vouchers(rt, CONSOLE, "freeze", pins[2][0])
    lifecycle.change_vouchers(rt, CONSOLE, "delete", pins[3][0])
    lifecycle.amend_batch(rt, CONSOLE, batch, utcnow() - timedelta(seconds=1))
    # Frozen voucher in an expired batch: 2012 before 2014.
    assert code_of(rt, pin=pins[2][1]) == 2012
    lifecycle.change_batch(rt, CONSOLE, batch, "freeze")
    # In a frozen, expired batch: 2009, 2010, 2013 before 2001; 2001 before 2012 and 2014.
    assert [code_of(rt, pin=pin) for _, pin in pins] == [2009, 2010, 2001, 2013, 2001]
    [(_, fresh)] = factories.active_batch(rt, count=1, activate=False)
    assert code_of(rt, pin=fresh) == 2011


def test_an_unknown_recipient_gives_5001_and_an_inactive_one_5002(
    rt: Runtime, pins: list[tuple[str, str]]
) -> None:
    assert code_of(rt, pin=pins[0][1], recipient_msisdn=OTHER) == 5001
    factories.subscriber(rt, OTHER, state="suspended")
    assert code_of(rt, pin=pins[0][1], recipient_msisdn=OTHER) == 5002
    assert voucher_state(rt, pins[0][0]) == "available"


def test_a_voucher_restricted_to_other_product_types_gives_2007(rt: Runtime) -> None:
    factories.standard_catalog(rt)
    factories.voucher_type(rt, "SILVERONLY", allowed_product_types=["SILVER"])
    factories.subscriber(rt, MSISDN, product_type="GOLD")
    factories.subscriber(rt, OTHER, product_type="SILVER")
    [(_, pin)] = factories.active_batch(rt, "SILVERONLY", count=1)
    assert code_of(rt, pin=pin) == 2007
    assert code_of(rt, pin=pin, recipient_msisdn=OTHER) == 0


SCENARIOS = [
    {
        "number": 1,
        "name": "10 KES",
        "credits": [{"balance_type": "CASH", "amount": 1000}],
        "account_expiry_extension_days": 30,
    },
    {
        "number": 2,
        "name": "50 SMS + Silver",
        "credits": [
            {"balance_type": "SMS", "amount": 50, "balance_expiry_extension_days": 7},
            {"balance_type": "CASH", "amount": 100},
        ],
        "account_expiry_extension_days": 0,
        "new_product_type": "SILVER",
    },
]


def test_several_scenarios_need_a_choice_2008_listing_them(rt: Runtime) -> None:
    factories.standard_catalog(rt)
    factories.voucher_type(rt, "CHOICE", scenarios=SCENARIOS)
    factories.subscriber(rt, MSISDN)
    [(serial, pin)] = factories.active_batch(rt, "CHOICE", count=1)
    with pytest.raises(ResultError) as failed:
        redeem(rt, pin=pin)
    assert failed.value.result.code == 2008
    choices = failed.value.extra["scenarios"]
    assert [c["number"] for c in choices] == [1, 2]
    assert choices[1]["credits"][0] == {
        "balance_type": "SMS",
        "amount": 50,
        "balance_expiry_extension_days": 7,
    }
    assert choices[1]["new_product_type"] == "SILVER"
    assert code_of(rt, pin=pin, scenario=3) == 4005
    assert code_of(rt, pin=pin, scenario="two") == 4005
    assert voucher_state(rt, serial) == "available"

    answer = redeem(rt, pin=pin, scenario="2")
    assert answer["scenario"] == 2
    assert answer["product_type"] == "SILVER"
    assert sorted((c["balance_type"], c["amount"]) for c in answer["credits"]) == [
        ("CASH", 100),
        ("SMS", 50),
    ]
    assert wallet.get_subscriber(rt, CONSOLE, MSISDN)["product_type"] == "SILVER"
    assert transactions(rt)[-1].scenario == 2


def test_a_credit_above_the_balance_limit_gives_5004_and_leaves_the_voucher_unused(
    rt: Runtime,
) -> None:
    factories.service_provider(rt)
    factories.balance_type(rt, "CASH", max_balance=1500)
    factories.product_type(rt, "GOLD")
    factories.voucher_type(rt)
    factories.subscriber(rt)
    (_, first), (serial, second) = factories.active_batch(rt, count=2)
    redeem(rt, pin=first)
    assert code_of(rt, pin=second) == 5004
    assert voucher_state(rt, serial) == "available"
    assert balance(rt) == 1000
    with rt.engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(t.ledger)).scalar_one() == 1


def test_an_unknown_service_provider_gives_4000_and_another_ones_voucher_2004(
    rt: Runtime, pins: list[tuple[str, str]]
) -> None:
    factories.service_provider(rt, "OTHER")
    assert code_of(rt, pin=pins[0][1], service_provider="NOPE") == 4000
    assert code_of(rt, pin=pins[0][1], service_provider="OTHER") == 2004
    assert code_of(rt, pin=pins[0][1], service_provider="ACME") == 0


def test_malformed_channel_or_request_id_gives_4008(
    rt: Runtime, pins: list[tuple[str, str]]
) -> None:
    assert code_of(rt, pin=pins[0][1], channel="pigeon") == 4008
    assert code_of(rt, pin=pins[0][1], request_id="x" * 101) == 4008
    assert code_of(rt, pin=pins[0][1], request_id=7) == 4008


def test_every_attempt_is_recorded_and_a_failure_changes_no_balance(
    rt: Runtime, pins: list[tuple[str, str]]
) -> None:
    channel_key = auth.authenticate(rt, factories.api_key(rt, "channel"))
    assert channel_key is not None
    redeem(rt, channel_key, pin=pins[0][1], channel="sms")
    for fields in (
        {"pin": pins[0][1]},
        {"pin": None},
        {"pin": pins[1][1], "recipient_msisdn": OTHER},
    ):
        with pytest.raises(ResultError):
            redeem(rt, channel_key, channel="ivr", **fields)
    rows = transactions(rt)
    assert [row.result_code for row in rows] == [0, 2009, 4007, 5001]
    assert all(row.api_key_id == channel_key.api_key_id for row in rows)
    assert [row.channel for row in rows] == ["sms", "ivr", "ivr", "ivr"]
    assert rows[1].serial == int(pins[0][0])
    assert rows[2].serial is None
    # OTHER is no subscriber: stored masked, as it may be a PIN typed in the wrong field.
    assert (rows[3].serial, rows[3].recipient_msisdn) == (int(pins[1][0]), "*" * 10 + OTHER[-2:])
    assert rows[3].voucher_type_id is not None
    assert balance(rt) == 1000


# --- idempotency ----------------------------------------------------------------------------


def test_a_retried_request_id_gets_the_first_answer_and_changes_nothing(
    rt: Runtime, pins: list[tuple[str, str]]
) -> None:
    first = redeem(rt, pin=pins[0][1], request_id="r-1")
    again = redeem(rt, pin=pins[0][1], request_id="r-1")
    assert again == first
    assert balance(rt) == 1000
    assert len(transactions(rt)) == 1
    with pytest.raises(ResultError) as reused:
        redeem(rt, pin=pins[1][1], request_id="r-1")
    assert reused.value.result.code == 5006
    assert voucher_state(rt, pins[1][0]) == "available"


def test_a_retried_failure_gets_the_first_failure_again(
    rt: Runtime, pins: list[tuple[str, str]]
) -> None:
    assert code_of(rt, pin=pins[0][1], recipient_msisdn=OTHER, request_id="r-2") == 5001
    factories.subscriber(rt, OTHER)
    assert code_of(rt, pin=pins[0][1], recipient_msisdn=OTHER, request_id="r-2") == 5001
    assert code_of(rt, pin=pins[0][1], recipient_msisdn=OTHER, request_id="r-3") == 0


def test_request_ids_are_scoped_to_the_api_key(rt: Runtime, pins: list[tuple[str, str]]) -> None:
    one = auth.authenticate(rt, factories.api_key(rt, "channel", name="one"))
    two = auth.authenticate(rt, factories.api_key(rt, "channel", name="two"))
    assert one is not None
    assert two is not None
    redeem(rt, one, pin=pins[0][1], request_id="same")
    redeem(rt, two, pin=pins[1][1], request_id="same")
    assert balance(rt) == 2000


def test_request_ids_are_kept_at_least_a_day(rt: Runtime, pins: list[tuple[str, str]]) -> None:
    first = redeem(rt, pin=pins[0][1], request_id="r-4")
    housekeeping.run_job(rt, CONSOLE, "request_id_purge", now=utcnow() + timedelta(hours=24))
    assert redeem(rt, pin=pins[0][1], request_id="r-4") == first
    done = housekeeping.run_job(
        rt,
        CONSOLE,
        "request_id_purge",
        now=utcnow() + timedelta(hours=rt.settings.idempotency_retention_hours, minutes=1),
    )
    assert done["rows_affected"] == 1


# --- bad-PIN blacklist ----------------------------------------------------------------------


def test_consecutive_bad_pins_blacklist_the_msisdn_until_the_time_is_over(
    rt: Runtime, pins: list[tuple[str, str]]
) -> None:
    """On a channel where the network gives the MSISDN (here USSD)."""
    rt.settings = rt.settings.model_copy(update={"max_bad_pin_attempts": 3})
    good = pins[0][1]
    bad_check_digit = good[:-1] + str((int(good[-1]) + 1) % 10)
    unknown = with_check_digit("0000000000001")
    bad = (unknown, bad_check_digit, unknown)
    assert [code_of(rt, pin=p, channel="ussd") for p in bad] == [2004, 2002, 2004]
    assert code_of(rt, pin=good) == 5003
    assert code_of(rt, msisdn=OTHER, pin=good, recipient_msisdn=MSISDN) == 0
    with rt.engine.begin() as conn:  # the blacklist time passes
        conn.execute(
            update(t.pin_attempts).values(blacklisted_until=utcnow() - timedelta(seconds=1))
        )
    assert code_of(rt, pin=pins[1][1]) == 0


def test_a_success_resets_the_count_of_bad_pins(rt: Runtime, pins: list[tuple[str, str]]) -> None:
    rt.settings = rt.settings.model_copy(update={"max_bad_pin_attempts": 3})
    unknown = with_check_digit("0000000000001")
    assert [code_of(rt, pin=unknown) for _ in range(2)] == [2004, 2004]
    assert code_of(rt, pin=pins[0][1]) == 0
    assert [code_of(rt, pin=unknown) for _ in range(2)] == [2004, 2004]
    assert code_of(rt, pin=pins[1][1]) == 0


# --- reservations ----------------------------------------------------------------------------


def reserve(rt: Runtime, pin: str, **fields: Any) -> dict[str, Any]:
    return redemption.reserve(rt, CONSOLE, RedemptionRequest(msisdn=MSISDN, pin=pin, **fields))


def test_reserve_then_commit_redeems_without_touching_the_wallet(
    rt: Runtime, pins: list[tuple[str, str]]
) -> None:
    serial, pin = pins[0]
    held = reserve(rt, pin)
    assert held["result_code"] == 0
    assert held["serial"] == serial
    assert held["credits"] == [
        {
            "balance_type": "CASH",
            "amount": 1000,
            "balance_expiry_extension_days": 30,
            "balance": None,
        }
    ]
    assert voucher_state(rt, serial) == "reserved"
    assert code_of(rt, pin=pin) == 2010
    done = redemption.commit(rt, CONSOLE, held["reservation_id"])
    assert done["result_code"] == 0
    assert voucher_state(rt, serial) == "redeemed"
    assert balance(rt) == 0
    for finish in (redemption.commit, redemption.revoke):
        with pytest.raises(ResultError) as again:
            finish(rt, CONSOLE, held["reservation_id"])
        assert again.value.result.code == 2005
    assert [row.kind for row in transactions(rt) if row.result_code == 0] == [
        "reservation",
        "commit",
    ]


def test_revoke_makes_the_voucher_available_again(rt: Runtime, pins: list[tuple[str, str]]) -> None:
    serial, pin = pins[0]
    held = reserve(rt, pin, recipient_msisdn="254799999999")  # not in our wallet: fine
    redemption.revoke(rt, CONSOLE, held["reservation_id"])
    assert voucher_state(rt, serial) == "available"
    assert redeem(rt, pin=pin)["result_code"] == 0


def test_an_unknown_reservation_gives_2005(rt: Runtime, pins: list[tuple[str, str]]) -> None:
    with pytest.raises(ResultError) as failed:
        redemption.commit(rt, CONSOLE, "no-such-reservation")
    assert failed.value.result.code == 2005
    assert transactions(rt)[-1].result_code == 2005


@pytest.mark.parametrize(
    ("action", "reservation_state", "voucher"),
    [
        ("hold", "held", "reserved"),
        ("commit", "committed", "redeemed"),
        ("revoke", "revoked", "available"),
    ],
)
def test_housekeeping_applies_the_timeout_action_of_the_voucher_type(
    rt: Runtime, action: str, reservation_state: str, voucher: str
) -> None:
    factories.standard_catalog(rt)
    factories.voucher_type(rt, "TIMED", reservation_timeout_s=60, timeout_action=action)
    [(serial, pin)] = factories.active_batch(rt, "TIMED", count=1)
    held = reserve(rt, pin)
    not_due = housekeeping.run_job(rt, CONSOLE, "reservation_timeouts")
    assert not_due["rows_affected"] == 0
    done = housekeeping.run_job(
        rt, CONSOLE, "reservation_timeouts", now=utcnow() + timedelta(seconds=61)
    )
    assert done["detail"][action] == 1
    with rt.engine.connect() as conn:
        state = conn.execute(
            select(t.reservations.c.state).where(t.reservations.c.id == held["reservation_id"])
        ).scalar_one()
    assert state == reservation_state
    assert voucher_state(rt, serial) == voucher
    last = transactions(rt)[-1]
    assert (last.kind, last.actor, last.channel) == (action, "housekeeping", "system")
    if action == "hold":  # a held reservation still waits for a decision
        assert redemption.commit(rt, CONSOLE, held["reservation_id"])["result_code"] == 0
        assert voucher_state(rt, serial) == "redeemed"


def test_a_late_commit_meets_the_timeout_action_first(rt: Runtime) -> None:
    factories.standard_catalog(rt)
    factories.voucher_type(rt, "TIMED", reservation_timeout_s=60, timeout_action="revoke")
    [(serial, pin)] = factories.active_batch(rt, "TIMED", count=1)
    held = reserve(rt, pin)
    with rt.engine.begin() as conn:  # a minute passes
        conn.execute(update(t.reservations).values(expires_at=utcnow() - timedelta(seconds=1)))
    with pytest.raises(ResultError) as late:
        redemption.commit(rt, CONSOLE, held["reservation_id"])
    assert late.value.result.code == 2005
    assert voucher_state(rt, serial) == "available"


# --- voucher-type recharges ------------------------------------------------------------------


def test_a_voucher_type_recharge_credits_like_its_vouchers(
    rt: Runtime, pins: list[tuple[str, str]]
) -> None:
    answer = redemption.recharge(
        rt, CONSOLE, RechargeRequest(msisdn=MSISDN, voucher_type="TOPUP10", channel="web")
    )
    assert answer["result_code"] == 0
    assert "serial" not in answer
    assert answer["credits"][0]["balance"] == 1000
    [row] = transactions(rt)
    assert (row.kind, row.serial, row.channel) == ("recharge", None, "web")
    with pytest.raises(ResultError) as unknown:
        redemption.recharge(rt, CONSOLE, RechargeRequest(msisdn=MSISDN, voucher_type="NOPE"))
    assert unknown.value.result.code == 5005


@pytest.fixture
def one_connection(rt: Runtime, monkeypatch: pytest.MonkeyPatch) -> Iterator[Engine]:
    """PostgreSQL only: ``rt`` on a pool of one connection, with the standard catalog
    and MSISDN's subscriber."""
    if rt.engine.dialect.name != "postgresql":
        pytest.skip("PostgreSQL only: SQLite prepares nothing")
    from voms.db.engine import make_engine

    one = make_engine(rt.settings.model_copy(update={"db_pool_size": 1, "db_max_overflow": 0}))
    monkeypatch.setattr(rt, "engine", one)
    factories.standard_catalog(rt)
    factories.subscriber(rt, MSISDN)
    yield one
    one.dispose()


def test_a_redemption_s_statements_are_parsed_and_planned_once_per_connection(
    rt: Runtime, one_connection: Engine
) -> None:
    from sqlalchemy import text

    for _, pin in factories.active_batch(rt, count=8):
        assert redeem(rt, pin=pin)["result_code"] == 0
    with one_connection.connect() as conn:  # the same connection: what it has prepared
        prepared = conn.execute(
            text("SELECT statement, generic_plans FROM pg_prepared_statements")
        ).all()
    assert {"BEGIN", "COMMIT"} <= {row.statement for row in prepared}
    # The voucher lookup takes each lookup hash as a parameter of its own: given an
    # array, PostgreSQL planned it anew every time on a full-size table (a table this
    # small gets a generic plan either way, so the plans themselves prove nothing here).
    lookup = [row for row in prepared if "FROM vouchers JOIN batches" in row.statement]
    assert len(lookup) == 1
    assert "vouchers.pin_hash IN ($" in lookup[0].statement


def test_refused_redemptions_do_not_take_the_prepared_statements_of_the_next(
    rt: Runtime, one_connection: Engine
) -> None:
    """psycopg prepares what a connection runs often, and after a ROLLBACK it then
    deallocated every prepared statement, the hot path's too: the next redemption on
    that connection failed (InvalidSqlStatementName)."""
    pins = factories.active_batch(rt, count=3)
    assert redeem(rt, pin=pins[0][1])["result_code"] == 0
    for _ in range(6):  # often enough for psycopg to prepare it
        wallet.get_subscriber(rt, CONSOLE, MSISDN)
    assert code_of(rt, pin=pins[0][1]) == 2009  # refused: rolled back
    assert redeem(rt, pin=pins[1][1])["result_code"] == 0
    assert code_of(rt, pin=pins[1][1]) == 2009
    assert redeem(rt, pin=pins[2][1])["result_code"] == 0


def test_a_redemption_with_a_request_id_costs_three_round_trips(
    rt: Runtime, one_connection: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Find the voucher (with BEGIN); take it with the account's lock and read; write
    everything with the COMMIT. Nothing else reaches the server."""
    from sqlalchemy import event

    from voms.db import hot

    first, second = factories.active_batch(rt, count=2)
    assert redeem(rt, pin=first[1], request_id="warm")["result_code"] == 0  # caches filled
    round_trips: list[str] = []
    send = hot._send
    monkeypatch.setattr(
        hot, "_send", lambda *args, **kw: round_trips.append("hot") or send(*args, **kw)
    )
    event.listen(one_connection, "before_cursor_execute", lambda *_: round_trips.append("sql"))
    assert redeem(rt, pin=second[1], request_id="counted")["result_code"] == 0
    assert round_trips == ["hot", "hot", "hot"]
