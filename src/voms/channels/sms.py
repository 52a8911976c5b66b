"""SMS through Kannel: the sms-service get-url endpoint and the sendsms notices.

Kannel's smsbox calls ``GET /sms/kannel?secret=…&from=%p&to=%P&text=%a&id=%I`` for each
message a subscriber sends and sends the response body back to the subscriber as the
reply. Commands (keywords configurable, case ignored):

- ``RCH <PIN>``: recharge the sender's number;
- ``RCH <PIN> <NUMBER>``: recharge another number (the recipient gets a notice when
  ``VOMS_KANNEL_SENDSMS_URL`` is set);
- ``RCH <PIN> [<NUMBER>] <OFFER>``: choose the offer (1 to 4 digits) of a voucher with
  several; a number has at least 5 digits, so the two cannot be confused;
- ``BAL``: the sender's balances.

The shared secret in the URL (``VOMS_SMS_SECRET``) is what lets Kannel in; without it
the endpoint refuses everything.
"""

import functools
import hmac
import logging
import urllib.parse
import urllib.request
from collections.abc import Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request
from fastapi.responses import PlainTextResponse
from pydantic import SecretStr

from voms.channels import subscriber
from voms.channels.texts import Messages
from voms.domain.results import Result
from voms.runtime import Runtime
from voms.serving import RuntimeDep, run_redemption_work

CHANNEL = "sms"
MAX_REPLY_CHARS = 459  # three concatenated GSM 7-bit parts

log = logging.getLogger("voms.channels.sms")
router = APIRouter(tags=["channels"], lifespan=subscriber.texts_checked)


def secret_matches(configured: SecretStr | None, given: str | None) -> bool:
    """Constant-time comparison; an unset secret matches nothing."""
    if configured is None or not configured.get_secret_value() or given is None:
        return False
    return hmac.compare_digest(configured.get_secret_value().encode(), given.encode())


def _keywords(setting: str) -> list[str]:
    """The keywords of a setting, upper case, in their order (the first is shown in help)."""
    return list(dict.fromkeys(w.strip().upper() for w in setting.split(",") if w.strip()))


def _help(rt: Runtime, said: Messages) -> str:
    recharge = _keywords(rt.settings.sms_recharge_keywords) or ["RCH"]
    balance = _keywords(rt.settings.sms_balance_keywords) or ["BAL"]
    return said.text("sms.help", recharge=recharge[0], balance=balance[0])


def _recharge_command(
    rt: Runtime, sender: str, keyword: str, words: list[str], request_id: str | None
) -> str:
    said = subscriber.messages(rt, CHANNEL, sender)
    pin = words[0] if words else None
    recipient: str | None = None
    scenario: str | None = None
    for word in words[1:]:
        digits = word.lstrip("+")
        if digits.isdigit() and len(digits) <= 4 and scenario is None:
            scenario = digits
        elif recipient is None:
            recipient = word
        else:
            return _help(rt, said)
    answer = subscriber.redeem(
        rt,
        CHANNEL,
        msisdn=sender,
        pin=pin,
        recipient=recipient,
        scenario=scenario,
        request_id=request_id,
    )
    if answer["result_code"] == Result.SCENARIO_REQUIRED.code:
        command = f"{keyword} PIN" + (f" {recipient}" if recipient else "")
        choices = ", ".join(said.scenario(s) for s in answer.get("scenarios", []))
        return said.text("sms.choose_scenario", choices=choices, command=command)
    return said.result(answer)


def reply_to(rt: Runtime, sender: str, text: str, message_id: str | None = None) -> str:
    """The reply to one inbound message (never empty, never holding the PIN)."""
    words = text.split()
    keyword = words[0].upper() if words else ""
    recharge = _keywords(rt.settings.sms_recharge_keywords)
    balance = _keywords(rt.settings.sms_balance_keywords)
    request_id = f"sms-{message_id}"[:100] if message_id else None
    if keyword in recharge:
        return _recharge_command(rt, sender, keyword, words[1:], request_id)
    said = subscriber.messages(rt, CHANNEL, sender)
    if keyword in balance and len(words) == 1:
        return subscriber.balance_text(rt, CHANNEL, sender, said)
    return _help(rt, said)


@router.get("/sms/kannel", response_class=PlainTextResponse)
async def kannel_inbound(
    request: Request,
    rt: RuntimeDep,
    secret: Annotated[str | None, Query(description="VOMS_SMS_SECRET")] = None,
    sender: Annotated[str, Query(alias="from", max_length=40, description="%p")] = "",
    receiver: Annotated[str, Query(alias="to", max_length=40, description="%P")] = "",
    text: Annotated[str, Query(max_length=1600, description="%a")] = "",
    message_id: Annotated[str | None, Query(alias="id", max_length=64, description="%I")] = None,
) -> PlainTextResponse:
    """Kannel sms-service get-url: one inbound SMS in, the reply SMS as the body."""
    if not secret_matches(rt.settings.sms_secret, secret):
        return PlainTextResponse("", status_code=403)
    msisdn = subscriber.msisdn_or_none(sender)
    if msisdn is None:
        said = subscriber.texts(rt).messages()
        return PlainTextResponse(said.result(Result.INVALID_SUBSCRIBER.body()))
    reply = await run_redemption_work(request, reply_to, rt, msisdn, text, message_id)
    return PlainTextResponse(reply[:MAX_REPLY_CHARS])


# --- notices through Kannel's sendsms interface -------------------------------------------

_senders = ThreadPoolExecutor(max_workers=2, thread_name_prefix="voms-sendsms")


def sendsms(rt: Runtime, to: str, text: str) -> int:
    """Send one SMS through Kannel's smsbox sendsms interface; its HTTP status."""
    settings = rt.settings
    assert settings.kannel_sendsms_url is not None
    params = {"username": settings.kannel_sendsms_username, "to": to, "text": text}
    if settings.kannel_sendsms_password is not None:
        params["password"] = settings.kannel_sendsms_password.get_secret_value()
    if settings.kannel_sendsms_from:
        params["from"] = settings.kannel_sendsms_from
    url = f"{settings.kannel_sendsms_url}?{urllib.parse.urlencode(params)}"
    if not url.startswith(("http://", "https://")):
        raise ValueError("VOMS_KANNEL_SENDSMS_URL must be an http(s) URL")
    with urllib.request.urlopen(url, timeout=10) as answer:  # noqa: S310 (scheme checked)
        return int(answer.status)


def _notice(rt: Runtime, recipient: str, text_for: Mapping[str, Any]) -> None:
    said: Messages = subscriber.messages(rt, CHANNEL, recipient)
    text = said.text(
        "notice.recharged", msisdn=text_for["msisdn"], credits=said.credits(text_for["credits"])
    )
    try:
        status = sendsms(rt, recipient, text)
    except Exception as exc:  # a notice is best effort; the recharge is done
        log.warning("sendsms notice failed: %s", exc.__class__.__name__)
        return
    log.info("sendsms notice accepted by Kannel (HTTP %s)", status)


def install_notices(rt: Runtime) -> None:
    """With ``VOMS_KANNEL_SENDSMS_URL`` set, the redemption service tells the recipient of
    every recharge of another number, whatever the channel, once it is committed."""
    if rt.settings.kannel_sendsms_url:
        rt.notify_recipient = functools.partial(notify_recipient, rt)


def notify_recipient(rt: Runtime, answer: Mapping[str, Any]) -> "Future[None] | None":
    """After a recharge of another number, tell its owner by SMS (when configured)."""
    recipient = answer.get("recipient_msisdn")
    if not rt.settings.kannel_sendsms_url or not recipient or recipient == answer.get("msisdn"):
        return None
    return _senders.submit(_notice, rt, str(recipient), dict(answer))
