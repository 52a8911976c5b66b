"""SMS through Kannel: the sms-service get-url endpoint and the sendsms notices.

Kannel's smsbox calls ``GET /sms/kannel?secret=…&from=%p&to=%P&text=%a&id=%I`` for each
message a subscriber sends and sends the response body back to the subscriber as the
reply. Commands (keywords configurable, case ignored):

- ``RCH <PIN>``: recharge the sender's number;
- ``RCH <PIN> <NUMBER>``: recharge another number (the recipient gets a notice when
  ``VOMS_KANNEL_SENDSMS_URL`` is set);
- ``RCH <PIN> [<NUMBER>] <OFFER>``: choose the offer (1 to 4 digits) of a voucher with
  several; a number has at least 5 digits, so the two cannot be confused;
- ``BAL``: the sender's balances;
- ``LANG <code>``: the sender's texts from now on in that language (``LANG sw``).

A PIN may be typed in the groups it is printed in (``RCH 16592 43735 88039``).

The shared secret in the URL (``VOMS_SMS_SECRET``) is what lets Kannel in; without it
the endpoint refuses everything.
"""

import functools
import hmac
import logging
import urllib.parse
import urllib.request
from collections.abc import Callable, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request
from fastapi.responses import PlainTextResponse
from pydantic import SecretStr

from voms.channels import subscriber
from voms.channels.texts import Messages
from voms.domain.pins import MIN_PIN_LENGTH, luhn_valid
from voms.domain.results import Result
from voms.runtime import Runtime
from voms.serving import RuntimeDep, run_redemption_work

CHANNEL = "sms"
MAX_REPLY_CHARS = 459  # three concatenated GSM 7-bit parts
MAX_COMMAND_CHARS = 160  # a recharge longer than one SMS is not one we know
MAX_MESSAGE_ID_CHARS = 64

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
    language = _keywords(rt.settings.sms_language_keywords) or ["LANG"]
    return said.text(
        "sms.help",
        recharge=recharge[0],
        balance=balance[0],
        language=language[0],
        languages="/".join(subscriber.texts(rt).languages()),
    )


def _pin_words(words: list[str], lengths: Callable[[], frozenset[int]]) -> int:
    """How many of ``words`` hold the PIN: one, or its printed groups ("16592 43735 88039").

    Groups have the length of the first, the last maybe shorter (then an offer may look
    like it): the reading that gives a PIN of a length in use with a valid check digit.
    """
    if not words or len(words[0]) >= MIN_PIN_LENGTH or not words[0].isdigit():
        return 1
    run = 1
    while run < len(words) and words[run].isdigit() and len(words[run]) == len(words[0]):
        run += 1
    candidates = [run]
    if run < len(words) and words[run].isdigit() and len(words[run]) < len(words[0]):
        candidates.insert(0, run + 1)
    known = lengths()
    pins = [c for c in candidates if _is_pin("".join(words[:c]), known)]
    return pins[0] if pins else candidates[0]  # else every group, told "wrong PIN"


def _is_pin(digits: str, lengths: frozenset[int]) -> bool:
    return len(digits) in lengths and luhn_valid(digits)


def _recharge_command(
    rt: Runtime, sender: str, keyword: str, words: list[str], request_id: str | None
) -> str:
    said = subscriber.messages(rt, CHANNEL, sender)
    in_pin = _pin_words(words, lambda: subscriber.pin_lengths(rt, CHANNEL))
    pin = "".join(words[:in_pin]) if words else None
    recipient: str | None = None
    scenario: str | None = None
    for word in words[in_pin:]:
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
    language = _keywords(rt.settings.sms_language_keywords)
    request_id = f"sms-{message_id}"[:100] if message_id else None
    if keyword in recharge and len(text) <= MAX_COMMAND_CHARS:
        return _recharge_command(rt, sender, keyword, words[1:], request_id)
    said = subscriber.messages(rt, CHANNEL, sender)
    if keyword in balance and len(words) == 1:
        return subscriber.balance_text(rt, CHANNEL, sender, said)
    if keyword in language and len(words) == 2:
        return _language_command(rt, sender, words[1].lower(), said)
    return _help(rt, said)


def _language_command(rt: Runtime, sender: str, language: str, said: Messages) -> str:
    """``LANG sw``: the sender's texts from now on in that language (one shipped or set)."""
    if language not in subscriber.texts(rt).languages():
        return _help(rt, said)
    if not subscriber.set_language(rt, CHANNEL, sender, language):
        return said.text("balance.unknown")
    return subscriber.messages(rt, CHANNEL, sender).text("sms.language_set")


@router.get("/sms/kannel", response_class=PlainTextResponse)
async def kannel_inbound(
    request: Request,
    rt: RuntimeDep,
    secret: Annotated[str | None, Query(description="VOMS_SMS_SECRET")] = None,
    sender: Annotated[str, Query(alias="from", description="%p")] = "",
    receiver: Annotated[str, Query(alias="to", description="%P")] = "",
    text: Annotated[str, Query(description="%a")] = "",
    message_id: Annotated[str | None, Query(alias="id", description="%I")] = None,
) -> PlainTextResponse:
    """Kannel sms-service get-url: one inbound SMS in, the reply SMS as the body."""
    # No length limits on the parameters: an over-long message gets the help text as
    # its reply, since a 422 body would be sent to the subscriber as it is.
    if not secret_matches(rt.settings.sms_secret, secret):
        return PlainTextResponse("", status_code=403)
    msisdn = subscriber.msisdn_or_none(sender)
    if msisdn is None:
        said = subscriber.texts(rt).messages()
        return PlainTextResponse(said.result(Result.INVALID_SUBSCRIBER.body()))
    if message_id is not None and len(message_id) > MAX_MESSAGE_ID_CHARS:
        message_id = None
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


def _send(rt: Runtime, to: str, text: str, what: str) -> None:
    try:
        status = sendsms(rt, to, text)
    except Exception as exc:  # a notice is best effort; the recharge is done
        log.warning("sendsms %s failed: %s", what, exc.__class__.__name__)
        return
    log.info("sendsms %s accepted by Kannel (HTTP %s)", what, status)


def recipient_notice(said: Messages, answer: Mapping[str, Any]) -> str:
    """The SMS telling a number's owner that someone else recharged it."""
    return said.text(
        "notice.recharged", msisdn=answer["msisdn"], credits=said.credits(answer["credits"])
    )


def confirmation(said: Messages, answer: Mapping[str, Any]) -> str:
    """The SMS confirming a recharge to the subscriber who made it (never the PIN)."""
    return said.text(
        "notice.confirmation",
        msisdn=answer.get("recipient_msisdn") or answer["msisdn"],
        credits=said.credits(answer["credits"]),
        serial=answer.get("serial") or "",
    )


def _notice(rt: Runtime, recipient: str, answer: Mapping[str, Any]) -> None:
    said = subscriber.messages(rt, CHANNEL, recipient)
    _send(rt, recipient, recipient_notice(said, answer), "notice")


def _confirm(rt: Runtime, answer: Mapping[str, Any]) -> None:
    requester = str(answer["msisdn"])
    said = subscriber.messages(rt, CHANNEL, requester)
    _send(rt, requester, confirmation(said, answer), "confirmation")


def install_notices(rt: Runtime) -> None:
    """With ``VOMS_KANNEL_SENDSMS_URL`` set, the redemption service sends the SMS of every
    successful recharge (:func:`after_recharge`), whatever the channel, once committed,
    and the alert jobs send subscriber alerts (:func:`send_alert`)."""
    if rt.settings.kannel_sendsms_url:
        rt.after_recharge = functools.partial(after_recharge, rt)
        install_alerts(rt)


def install_alerts(rt: Runtime) -> None:
    """Subscriber alerts leave through Kannel (when ``VOMS_KANNEL_SENDSMS_URL`` is set)."""
    if rt.settings.kannel_sendsms_url:
        rt.alert_sms = functools.partial(send_alert, rt)


def alert_text(said: Messages, kind: str, values: Mapping[str, Any]) -> str:
    """The SMS of one subscriber alert, in the subscriber's language (never a PIN)."""
    if kind == "reward":
        return said.text(
            "alert.reward",
            promotion=values.get("promotion", ""),
            credits=said.credits(values.get("credits", [])),
        )
    balance_type = str(values.get("balance_type", ""))
    return said.text(
        f"alert.{kind}",
        balance_type=said.balance_type(balance_type) if balance_type else "",
        balance=said.amount(balance_type, int(values["balance"])) if "balance" in values else "",
        date=values.get("date", ""),
    )


def send_alert(rt: Runtime, msisdn: str, kind: str, values: Mapping[str, Any]) -> None:
    """Send one subscriber alert through Kannel's sendsms; raises unless Kannel took it.

    ``values`` name the subscriber's ``service_provider``, ``language`` and the provider's
    ``currencies`` (balance type → ISO code), so no lookup is made per message."""
    installed = subscriber.texts(rt)
    provider = values.get("service_provider")
    said = installed.messages(
        provider,
        installed.language_of(provider, values.get("language")),
        values.get("currencies") or {},
    )
    status = sendsms(rt, msisdn, alert_text(said, kind, values)[:MAX_REPLY_CHARS])
    if not 200 <= status < 300:
        raise RuntimeError(f"Kannel answered HTTP {status}")


def notify_recipient(rt: Runtime, answer: Mapping[str, Any]) -> "Future[None] | None":
    """After a recharge of another number, tell its owner by SMS (when configured)."""
    recipient = answer.get("recipient_msisdn")
    if not rt.settings.kannel_sendsms_url or not recipient or recipient == answer.get("msisdn"):
        return None
    return _senders.submit(_notice, rt, str(recipient), dict(answer))


def confirm_recharge(rt: Runtime, answer: Mapping[str, Any]) -> "Future[None] | None":
    """Confirm a recharge to its subscriber by SMS when ``VOMS_CONFIRMATION_SMS`` is on."""
    if not (rt.settings.confirmation_sms and rt.settings.kannel_sendsms_url):
        return None
    return _senders.submit(_confirm, rt, dict(answer))


# The subscriber channels whose recharges are confirmed by SMS: an SMS recharge is
# confirmed by its reply already, and the integrations (REST, SOAP) answer their caller.
CONFIRMED_CHANNELS = frozenset({"ussd", "ivr", "web"})


def after_recharge(rt: Runtime, channel: str, answer: Mapping[str, Any]) -> list["Future[None]"]:
    """The SMS a successful recharge sends: the recipient's notice (every channel) and the
    confirmation (USSD, IVR and web only)."""
    sent = [notify_recipient(rt, answer)]
    if channel in CONFIRMED_CHANNELS:
        sent.append(confirm_recharge(rt, answer))
    return [future for future in sent if future is not None]
