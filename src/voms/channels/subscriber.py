"""What a subscriber can do through any channel: recharge, read the balance, be told.

Each channel acts as a built-in principal named after it (``ussd``, ``sms``, ``ivr``,
``web``) with the ``channel`` role, so its transactions show who carried them; it reads
balances as a read-only principal of the same name. Nothing here logs a request's values:
only result codes and exception types, so no PIN reaches a log line.
"""

import logging
import traceback
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from typing import Any

from voms.channels.texts import Messages, Texts, load
from voms.domain.errors import ResultError, VomsError
from voms.domain.msisdn import normalize_msisdn
from voms.domain.results import Result
from voms.domain.roles import Role
from voms.runtime import Runtime
from voms.services import redemption, wallet
from voms.services.auth import Principal
from voms.services.redemption import RedemptionRequest
from voms.serving import rate_limits

log = logging.getLogger("voms.channels")

Response = dict[str, Any]

# Results a subscriber may answer by typing the PIN again.
BAD_PIN_RESULTS = frozenset(
    {
        Result.INVALID_VOUCHER_NUMBER.code,
        Result.INVALID_VOUCHER_NUMBER_LENGTH.code,
        Result.VOUCHER_NOT_FOUND.code,
        Result.MISSING_VOUCHER_NUMBER.code,
    }
)


def principal(channel: str) -> Principal:
    """The built-in principal a channel redeems as."""
    return Principal(name=channel, role=Role.CHANNEL)


def _reader(channel: str) -> Principal:
    return Principal(name=channel, role=Role.AUDITOR)


def texts(rt: Runtime) -> Texts:
    """The installation's texts (``VOMS_TEXTS_FILE``), read once per process."""
    cached = rt.caches.get("channel_texts")
    if not isinstance(cached, Texts):
        cached = load(rt.settings.texts_file, rt.settings.channel_language)
        rt.caches["channel_texts"] = cached
    return cached


@asynccontextmanager
async def texts_checked(app: Any) -> AsyncIterator[None]:
    """Router lifespan: a broken texts file stops the server at start, not at a reply."""
    texts(app.state.runtime)
    yield


def log_unexpected(channel: str, what: str, exc: BaseException) -> None:
    # Where it broke, without the exception's message or any value: those may hold input.
    frames = "".join(traceback.format_tb(exc.__traceback__))
    log.error("%s: %s failed with %s\n%s", channel, what, exc.__class__.__name__, frames)


def redeem(
    rt: Runtime,
    channel: str,
    *,
    msisdn: str,
    pin: str | None,
    recipient: str | None = None,
    scenario: int | str | None = None,
    request_id: str | None = None,
) -> Response:
    """Redeem through the one redemption service, within the channel's and the number's
    rate limits; a failure is a response, not an error."""
    request = RedemptionRequest(
        msisdn=msisdn,
        pin=pin,
        recipient_msisdn=recipient,
        scenario=scenario,
        channel=channel,
        request_id=request_id,
    )
    try:
        if not rate_limits(rt).allow_subscriber(channel, msisdn_or_none(msisdn) or msisdn):
            raise ResultError(Result.TOO_MANY_REQUESTS)
        response = redemption.redeem(rt, principal(channel), request)
    except ResultError as error:
        response = error.result.body(**error.extra)
    except Exception as exc:
        log_unexpected(channel, "redemption", exc)
        response = Result.SYSTEM_ERROR.body()
    log.info("%s: redemption answered %s", channel, response["result_code"])
    return response


def account(rt: Runtime, channel: str, msisdn: str) -> dict[str, Any] | None:
    """The subscriber's account with its balances, or None when there is none."""
    try:
        return wallet.get_subscriber(rt, _reader(channel), msisdn)
    except VomsError:
        return None


def provider_of(rt: Runtime, channel: str, msisdn: str) -> str | None:
    """The service provider code of a subscriber (for the texts), if known."""
    try:
        found = account(rt, channel, msisdn)
    except Exception as exc:
        log_unexpected(channel, "subscriber lookup", exc)
        return None
    return None if found is None else str(found["service_provider"])


def messages(
    rt: Runtime, channel: str, msisdn: str | None, language: str | None = None
) -> Messages:
    """The texts for this subscriber's provider, in ``language`` when there are some."""
    provider = provider_of(rt, channel, msisdn) if msisdn else None
    return texts(rt).messages(provider, language)


def balance_text(rt: Runtime, channel: str, msisdn: str, said: Messages) -> str:
    """The answer to "my balance"."""
    try:
        found = account(rt, channel, msisdn)
    except Exception as exc:
        log_unexpected(channel, "balance", exc)
        return said.result(Result.SYSTEM_ERROR.body())
    if found is None:
        return said.text("balance.unknown")
    return said.balances(found["balances"])


def msisdn_or_none(raw: str | None) -> str | None:
    """A subscriber number as the domain normalizes it, or None when it is not one."""
    try:
        return normalize_msisdn(raw)
    except ResultError:
        return None


def first_balance(response: Mapping[str, Any]) -> tuple[str, int] | None:
    """The balance type and new balance of a success's first credit (what IVR says)."""
    for credit in response.get("credits", []):
        if credit.get("balance") is not None:
            return str(credit["balance_type"]), int(credit["balance"])
    return None
