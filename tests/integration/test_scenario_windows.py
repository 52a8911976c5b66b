"""Campaign scenarios: offered only while they run, and only to their product types."""

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from tests import factories
from voms.domain.errors import ResultError
from voms.runtime import Runtime
from voms.services import catalog, redemption
from voms.services.auth import CONSOLE
from voms.services.redemption import RechargeRequest, RedemptionRequest

GOLD, SILVER = "254700000001", "254700000002"
JULY = datetime(2027, 7, 1, tzinfo=UTC)
AUGUST = datetime(2027, 8, 1, tzinfo=UTC)
REGULAR: dict[str, Any] = {
    "number": 1,
    "name": "10 KES",
    "default": True,
    "credits": [{"balance_type": "CASH", "amount": 1000}],
}
TALKFEST: dict[str, Any] = {
    "number": 2,
    "name": "Talk-Fest July: 180 minutes",
    "credits": [{"balance_type": "SMS", "amount": 180}],
    "valid_from": JULY.isoformat(),
    "valid_until": AUGUST.isoformat(),
    "product_types": ["GOLD"],
}


class Clock:
    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.now = datetime.now(UTC)
        monkeypatch.setattr("voms.services.uow.utcnow", lambda: self.now)


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    return Clock(monkeypatch)


@pytest.fixture
def shop(rt: Runtime) -> Runtime:
    factories.service_provider(rt)
    factories.balance_type(rt, "CASH")
    factories.balance_type(rt, "SMS")
    factories.product_type(rt, "GOLD")
    factories.product_type(rt, "SILVER")
    factories.voucher_type(rt, "FEST", scenarios=[REGULAR, TALKFEST])
    factories.subscriber(rt, GOLD, product_type="GOLD")
    factories.subscriber(rt, SILVER, product_type="SILVER")
    return rt


def redeem(rt: Runtime, msisdn: str, pin: str, scenario: int | None = None) -> dict[str, Any]:
    return redemption.redeem(
        rt, CONSOLE, RedemptionRequest(msisdn=msisdn, pin=pin, scenario=scenario)
    )


def refusal(rt: Runtime, msisdn: str, pin: str, scenario: int | None = None) -> ResultError:
    with pytest.raises(ResultError) as refused:
        redeem(rt, msisdn, pin, scenario)
    return refused.value


def pins(rt: Runtime, count: int) -> list[str]:
    return [pin for _, pin in factories.active_batch(rt, "FEST", count=count)]


def test_a_campaign_scenario_is_offered_only_while_it_runs(shop: Runtime, clock: Clock) -> None:
    rt = shop
    vouchers = pins(rt, 4)
    clock.now = JULY - timedelta(microseconds=1)
    assert redeem(rt, GOLD, vouchers[0])["scenario"] == 1  # the only one running
    assert refusal(rt, GOLD, vouchers[1], scenario=2).result.code == 4005
    clock.now = JULY
    offered = refusal(rt, GOLD, vouchers[1])
    assert offered.result.code == 2008
    assert [s["number"] for s in offered.extra["scenarios"]] == [1, 2]
    assert redeem(rt, GOLD, vouchers[1], scenario=2)["credits"][0]["amount"] == 180
    clock.now = AUGUST  # ended: [valid_from, valid_until)
    assert redeem(rt, GOLD, vouchers[2])["scenario"] == 1
    assert refusal(rt, GOLD, vouchers[3], scenario=2).result.code == 4005


def test_a_campaign_scenario_is_offered_only_to_its_product_types(
    shop: Runtime, clock: Clock
) -> None:
    rt = shop
    vouchers = pins(rt, 2)
    clock.now = JULY + timedelta(days=3)
    assert redeem(rt, SILVER, vouchers[0])["scenario"] == 1  # no choice: Talk-Fest is GOLD's
    assert refusal(rt, SILVER, vouchers[1], scenario=2).result.code == 2007
    assert refusal(rt, GOLD, vouchers[1]).result.code == 2008


def test_a_voucher_type_recharge_follows_the_same_windows(shop: Runtime, clock: Clock) -> None:
    rt = shop
    clock.now = AUGUST + timedelta(days=1)
    with pytest.raises(ResultError) as refused:
        redemption.recharge(
            rt, CONSOLE, RechargeRequest(msisdn=GOLD, voucher_type="FEST", scenario=2)
        )
    assert refused.value.result.code == 4005


def test_scenario_windows_are_shown_and_created_idempotently(shop: Runtime) -> None:
    rt = shop
    (_, talkfest) = catalog.scenarios_of(rt, CONSOLE, "FEST")
    assert (talkfest["valid_from"], talkfest["valid_until"], talkfest["product_types"]) == (
        JULY,
        AUGUST,
        ["GOLD"],
    )
    body = catalog.VoucherTypeIn.model_validate(
        {
            "code": "FEST",
            "name": "FEST voucher",
            "service_provider": "ACME",
            "scenarios": [REGULAR, TALKFEST],
        }
    )
    assert catalog.create_or_find_voucher_type(rt, CONSOLE, body)[1] is False
    later = {**TALKFEST, "valid_until": (AUGUST + timedelta(days=1)).isoformat()}
    other = catalog.VoucherTypeIn.model_validate(
        {**body.model_dump(mode="json"), "scenarios": [REGULAR, later]}
    )
    with pytest.raises(Exception, match="scenarios"):
        catalog.create_or_find_voucher_type(rt, CONSOLE, other)


def test_a_scenario_that_ends_before_it_starts_is_refused(shop: Runtime) -> None:
    with pytest.raises(Exception, match="ends before it starts"):
        factories.voucher_type(
            shop, "BAD", scenarios=[{**TALKFEST, "valid_until": JULY.isoformat()}]
        )
