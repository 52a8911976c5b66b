"""What a subscriber can do through any channel: recharge, read the balance, be told.

Each channel acts as a built-in principal named after it (``ussd``, ``sms``, ``ivr``,
``web``) with the ``channel`` role, so its transactions show who carried them, and reads
the accounts it speaks to with the same principal. Nothing here logs a request's values:
only result codes and exception types, so no PIN reaches a log line.
"""

import dataclasses
import logging
import traceback
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from typing import Any

from voms.channels.texts import Messages, Texts, TextsFile
from voms.domain.errors import ResultError, VomsError
from voms.domain.msisdn import normalize_msisdn
from voms.domain.results import Result
from voms.domain.roles import Role
from voms.runtime import Runtime
from voms.services import redemption, subscriber_view
from voms.services.auth import Principal
from voms.services.redemption import RedemptionRequest
from voms.services.subscriber_view import Account
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


def texts(rt: Runtime) -> Texts:
    """The installation's texts (``VOMS_TEXTS_FILE``), read again when the file changes."""
    cached = rt.caches.get("channel_texts")
    if not isinstance(cached, TextsFile):
        cached = TextsFile(rt.settings.texts_file, rt.settings.channel_language)
        rt.caches["channel_texts"] = cached
    return cached.current()


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
    client: str | None = None,
) -> Response:
    """Redeem through the one redemption service, within the channel's and the number's
    rate limits; a failure is a response, not an error.

    ``client`` is the caller's address where the subscriber types the number (/m): bad
    PINs then count against it, not against the number, and so does the number's rate
    limit (nobody can use up someone else's)."""
    request = RedemptionRequest(
        msisdn=msisdn,
        pin=pin,
        recipient_msisdn=recipient,
        scenario=scenario,
        channel=channel,
        request_id=request_id,
    )
    try:
        number = msisdn_or_none(msisdn) or msisdn
        limited = number if client is None else f"{number}@{client}"
        if not rate_limits(rt).allow_subscriber(channel, limited):
            raise ResultError(Result.TOO_MANY_REQUESTS)
        who = principal(channel)
        if client is not None:
            who = dataclasses.replace(who, client=client)
        response = redemption.redeem(rt, who, request)
    except ResultError as error:
        response = error.result.body(**error.extra)
    except Exception as exc:
        log_unexpected(channel, "redemption", exc)
        response = Result.SYSTEM_ERROR.body()
    log.info("%s: redemption answered %s", channel, response["result_code"])
    return response


def account(rt: Runtime, channel: str, msisdn: str) -> Account | None:
    """The subscriber's account with its balances, or None when the number has none."""
    return subscriber_view.account(rt, principal(channel), msisdn)


def messages_for(found: Account | None, installed: Texts, language: str | None = None) -> Messages:
    """The texts for an account: in ``language`` when asked and known, else in the
    subscriber's chosen language, else their provider's; amounts in its currencies."""
    if found is None:
        return installed.messages(None, installed.language_of(None, language))
    chosen = language if language in installed.languages() else found.language
    return installed.messages(
        found.service_provider,
        installed.language_of(found.service_provider, chosen),
        found.currencies,
    )


def messages(
    rt: Runtime, channel: str, msisdn: str | None, language: str | None = None
) -> Messages:
    """The texts for this subscriber's provider and language, amounts in their currencies."""
    found: Account | None = None
    if msisdn:
        try:
            found = account(rt, channel, msisdn)
        except Exception as exc:
            log_unexpected(channel, "subscriber lookup", exc)
    return messages_for(found, texts(rt), language)


def balance_text(rt: Runtime, channel: str, msisdn: str, said: Messages) -> str:
    """The answer to "my balance"."""
    try:
        found = account(rt, channel, msisdn)
    except Exception as exc:
        log_unexpected(channel, "balance", exc)
        return said.result(Result.SYSTEM_ERROR.body())
    if found is None:
        return said.text("balance.unknown")
    return said.balances(found.balances)


def pin_lengths(rt: Runtime, channel: str) -> frozenset[int]:
    """The PIN lengths in use; none known when they cannot be read."""
    try:
        return subscriber_view.pin_lengths(rt, principal(channel))
    except Exception as exc:
        log_unexpected(channel, "PIN lengths", exc)
        return frozenset()


def set_language(rt: Runtime, channel: str, msisdn: str, language: str) -> bool:
    """Record the subscriber's language; False when it could not be (no account)."""
    try:
        subscriber_view.set_language(rt, principal(channel), msisdn, language)
    except VomsError:
        return False
    except Exception as exc:
        log_unexpected(channel, "language choice", exc)
        return False
    return True


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
