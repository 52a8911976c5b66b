"""Redeem, reserve and recharge, each in the order it runs:

parse → find the voucher → check the account and policy → choose the scenario → take
the voucher → apply through the billing engine → (the frame records the attempt, stores
the answer, commits, then notifies).

On PostgreSQL a redemption costs three round trips: the voucher lookup (with BEGIN);
taking the voucher with locking and reading the account; every write with the COMMIT.
So the voucher is taken in the round trip that locks the account: a redemption locks
the voucher, then the subscriber, and no other transaction locks both.
"""

import uuid
from datetime import timedelta

from sqlalchemy import insert

from voms.db import tables as t
from voms.domain.errors import ResultError
from voms.domain.results import Result
from voms.domain.roles import Permission
from voms.domain.serials import format_serial
from voms.domain.states import ReservationState, VoucherAction
from voms.runtime import Runtime
from voms.services import accounts_lifecycle, catalog_cache
from voms.services.auth import Principal
from voms.services.redemption import (
    accounts,
    attempts,
    blacklist,
    charging,
    limits,
    promotions,
    requests,
    vouchers,
)
from voms.services.redemption.attempts import iso, success
from voms.services.redemption.requests import (
    Attempt,
    RechargeRequest,
    RedemptionRequest,
    Response,
)
from voms.services.uow import UnitOfWork


def redeem(rt: Runtime, actor: Principal, request: RedemptionRequest) -> Response:
    """Consume the voucher of a PIN and credit the recipient's wallet, atomically."""
    actor.require(Permission.REDEEM)
    attempt = Attempt(kind="redemption", actor=actor)

    def work(uow: UnitOfWork) -> Response:
        msisdn, recipient = requests.parties(attempt, request)
        attempt.service_provider_id = requests.service_provider(
            rt, uow, actor, request.service_provider
        )
        found = vouchers.find(rt, uow, attempt, request, msisdn)
        charging.hand_over(rt, uow, attempt, request, found, msisdn, recipient)  # external IN
        taken = vouchers.move(uow, found.serial, VoucherAction.REDEEM, redeemed_by=recipient)
        counted = promotions.count_early(rt, uow, attempt, found.voucher_type, recipient)
        account = rt.billing.load_account(uow, recipient, lock=True)  # (sends the move too)
        account = accounts_lifecycle.admit(rt, uow, account)
        accounts.check_account(account, found.voucher_type)
        assert account is not None
        scenario = accounts.scenario(
            attempt, found.voucher_type, request.scenario, account, uow.started_at
        )
        vouchers.ensure_taken(uow, taken, found.serial)
        change = accounts.change(rt, uow, attempt, scenario, "redemption")
        rt.billing.check(account, change)
        limits.count(rt, uow, found.voucher_type.service_provider_id, recipient, change)
        credited = accounts.credit(rt, uow, account, change)
        promotions.reward(rt, uow, attempt, account, change, credited, counted)
        if found.had_failures:
            blacklist.forget_bad_pins(uow, msisdn)
        return success(
            serial=format_serial(found.serial, rt.settings.serial_width),
            voucher_type=found.voucher_type.code,
            scenario=scenario.number,
            msisdn=attempt.msisdn,
            recipient_msisdn=attempt.recipient,
            **credited,
        )

    try:
        return attempts.run(rt, attempt, request, work)
    except charging.Reserved as reserved:  # the voucher waits for the charging system
        return charging.settle(rt, attempt, request, reserved)


_INSERT_RESERVATION = insert(t.reservations)


def reserve(rt: Runtime, actor: Principal, request: RedemptionRequest) -> Response:
    """Hold a voucher for an external charging system, which applies the credits itself.

    The recipient need not have a wallet here; when it has one, its state and product
    type are checked as for a redemption.
    """
    actor.require(Permission.REDEEM)
    attempt = Attempt(kind="reservation", actor=actor, reservation_id=str(uuid.uuid4()))

    def work(uow: UnitOfWork) -> Response:
        msisdn, recipient = requests.parties(attempt, request)
        attempt.service_provider_id = requests.service_provider(
            rt, uow, actor, request.service_provider
        )
        found = vouchers.find(rt, uow, attempt, request, msisdn)
        taken = vouchers.move(uow, found.serial, VoucherAction.RESERVE)
        account = rt.billing.load_account(uow, recipient, lock=False)  # (sends the move too)
        account = accounts_lifecycle.admit(rt, uow, account, revive=False)
        accounts.check_account(account, found.voucher_type, required=False)
        scenario = accounts.scenario(
            attempt, found.voucher_type, request.scenario, account, uow.started_at
        )
        vouchers.ensure_taken(uow, taken, found.serial)
        credits = [{**c.public(), "balance": None} for c in scenario.credits]
        expires_at = uow.started_at + timedelta(seconds=found.voucher_type.reservation_timeout_s)
        uow.write(
            _INSERT_RESERVATION,
            {
                "id": attempt.reservation_id,
                "serial": found.serial,
                "voucher_type_id": found.voucher_type.id,
                "channel": attempt.channel,
                "msisdn": msisdn,
                "recipient_msisdn": recipient,
                "scenario": scenario.number,
                "state": ReservationState.OPEN.value,
                "credits": credits,
                "created_at": uow.started_at,
                "expires_at": expires_at,
                "api_key_id": actor.api_key_id,
            },
        )
        if found.had_failures:
            blacklist.forget_bad_pins(uow, msisdn)
        return success(
            reservation_id=attempt.reservation_id,
            serial=format_serial(found.serial, rt.settings.serial_width),
            voucher_type=found.voucher_type.code,
            scenario=scenario.number,
            msisdn=attempt.msisdn,
            recipient_msisdn=attempt.recipient,
            credits=credits,
            account_expiry_extension_days=scenario.account_expiry_extension_days,
            new_product_type=scenario.new_product_type,
            expires_at=iso(expires_at),
        )

    return attempts.run(rt, attempt, request, work)


def recharge(rt: Runtime, actor: Principal, request: RechargeRequest) -> Response:
    """Credit a wallet as a redemption of a voucher type would, with no voucher."""
    actor.require(Permission.VOUCHER_TYPE_RECHARGE)
    attempt = Attempt(kind="recharge", actor=actor)

    def work(uow: UnitOfWork) -> Response:
        _, recipient = requests.parties(attempt, request)
        sp_id = requests.service_provider(rt, uow, actor, request.service_provider)
        code = request.voucher_type
        voucher_type = (
            catalog_cache.voucher_type(rt, uow.conn, code=code) if isinstance(code, str) else None
        )
        if voucher_type is None or sp_id not in (None, voucher_type.service_provider_id):
            raise ResultError(Result.VOUCHER_TYPE_NOT_FOUND)
        attempt.voucher_type_id = voucher_type.id
        attempt.service_provider_id = voucher_type.service_provider_id
        counted = promotions.count_early(rt, uow, attempt, voucher_type, recipient)
        account = rt.billing.load_account(uow, recipient, lock=True)
        account = accounts_lifecycle.admit(rt, uow, account)
        accounts.check_account(account, voucher_type)
        assert account is not None
        scenario = accounts.scenario(
            attempt, voucher_type, request.scenario, account, uow.started_at, use_default=True
        )
        change = accounts.change(rt, uow, attempt, scenario, "recharge")
        rt.billing.check(account, change)
        limits.count(rt, uow, voucher_type.service_provider_id, recipient, change)
        credited = accounts.credit(rt, uow, account, change)
        promotions.reward(rt, uow, attempt, account, change, credited, counted)
        return success(
            voucher_type=voucher_type.code,
            scenario=scenario.number,
            msisdn=attempt.msisdn,
            recipient_msisdn=attempt.recipient,
            **credited,
        )

    return attempts.run(rt, attempt, request, work)
