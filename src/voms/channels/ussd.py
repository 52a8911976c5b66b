"""USSD: the HTTP callback convention of USSD gateways, with CON/END menus.

For each step of a session the gateway POSTs the form fields ``sessionId``,
``serviceCode``, ``phoneNumber`` and ``text`` (every input of the session so far, joined
by ``*``) to ``/ussd?secret=…``; the reply is ``text/plain``, ``CON …`` to show a menu
and wait for input, ``END …`` to finish, at most 182 characters.

Menu: 1 recharge my number · 2 recharge another number (entered, checked to have an
account, then confirmed) · 3 my balance · 4 language. After the PIN: the result; a
choice of offers when the voucher has several; the PIN asked again after a bad one,
``VOMS_CHANNEL_PIN_RETRIES`` times.
Several inputs in one go (``*140*1*PIN#`` dialled at once) are taken in order.

Where the session stands is kept in the database (``services.channel_sessions``), so
any server process can take the next step; it expires after
``VOMS_USSD_SESSION_TIMEOUT_S`` without a callback. The PIN is never stored: the session
keeps which input held it and reads it again from the next callback's ``text``. A
gateway's retry of a step (same ``text`` again) gets the same reply and redeems nothing
twice (each redemption carries a request id made of the session and input position).
"""

import hashlib
from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import APIRouter, Form, Query, Request
from fastapi.responses import PlainTextResponse

from voms.channels import sms, subscriber
from voms.channels.texts import Messages
from voms.domain.results import Result
from voms.runtime import Runtime
from voms.services import channel_sessions
from voms.services.channel_sessions import MAX_SESSION_ID_LENGTH, Session
from voms.services.subscriber_view import Account
from voms.serving import RuntimeDep, run_redemption_work

CHANNEL = "ussd"
MAX_REPLY_CHARS = 182
MAX_INPUT_CHARS = 400  # every input of a session, joined by "*"

router = APIRouter(tags=["channels"], lifespan=subscriber.texts_checked)


@dataclass(frozen=True)
class Reply:
    text: str
    end: bool

    def render(self) -> str:
        body = ("END " if self.end else "CON ") + self.text
        if len(body) > MAX_REPLY_CHARS:
            # "..." rather than "…", which is outside the GSM 7-bit alphabet
            body = body[: MAX_REPLY_CHARS - 3] + "..."
        return body


def _pages(header: str, lines: list[str], more: str) -> list[list[int]]:
    """Offers (their indexes) split into pages that fit one reply each with ``header``
    and "more"; the same pages whether or not a problem is shown above them."""
    room = MAX_REPLY_CHARS - len("CON ") - len(header)
    pages: list[list[int]] = []
    page: list[int] = []
    used = 0
    for index, line in enumerate(lines):
        cost = len(line) + 1
        if page and used + cost + len(more) + 1 > room:
            pages.append(page)
            page, used = [], 0
        page.append(index)
        used += cost
    pages.append(page)
    return pages


class _Menu:
    """One step after another of a session; ``state`` is what the next callback needs."""

    def __init__(self, rt: Runtime, session: Session, parts: list[str], said: Messages) -> None:
        self.rt = rt
        self.session = session
        self.state = session.state
        self.parts = parts
        self.said = said
        digest = hashlib.sha256(session.session_id.encode()).hexdigest()[:32]
        self.request_prefix = f"ussd-{digest}"

    def main_menu(self, problem: str | None = None) -> Reply:
        self.state["step"] = "menu"
        menu = self.said.text("ussd.menu")
        return Reply(f"{problem}\n{menu}" if problem else menu, end=False)

    def feed(self, index: int, value: str) -> Reply:
        step = self.state.get("step", "menu")
        value = value.strip()
        if step == "menu":
            return self._menu(value)
        if step == "number":
            return self._number(value)
        if step == "confirm":
            return self._confirm(value)
        if step == "pin":
            return self._redeem(index, None)
        if step == "offer":
            return self._offer(index, value)
        if step == "language":
            return self._language(value)
        return Reply(self.state.get("reply", ""), end=True)  # "done": nothing more to do

    def _menu(self, value: str) -> Reply:
        if value == "1":
            if self.state.get("provider") is None and not self._has_account(self.session.msisdn):
                return self._done(self.said.text("balance.unknown"))
            self.state.update(step="pin", recipient=self.session.msisdn)
            return Reply(self.said.text("ussd.enter_pin"), end=False)
        if value == "2":
            self.state["step"] = "number"
            return Reply(self.said.text("ussd.enter_number"), end=False)
        if value == "3":
            return self._done(
                subscriber.balance_text(self.rt, CHANNEL, self.session.msisdn, self.said)
            )
        if value == "4":
            self.state["step"] = "language"
            return self._languages()
        return self.main_menu(self.said.text("ussd.invalid_choice"))

    def _has_account(self, msisdn: str) -> bool:
        """Whether a number has an account; True when that cannot be told (the service
        will answer for it then)."""
        try:
            return subscriber.account(self.rt, CHANNEL, msisdn) is not None
        except Exception as exc:
            subscriber.log_unexpected(CHANNEL, "subscriber lookup", exc)
            return True

    def _number(self, value: str) -> Reply:
        number = subscriber.msisdn_or_none(value)
        if number is None:
            return Reply(self.said.text("ussd.invalid_number"), end=False)
        if not self._has_account(number):  # told now, not after the PIN
            return Reply(self.said.text("ussd.unknown_number", msisdn=number), end=False)
        self.state.update(step="confirm", recipient=number)
        return Reply(self.said.text("ussd.confirm_number", msisdn=number), end=False)

    def _languages(self, problem: str | None = None) -> Reply:
        installed = subscriber.texts(self.rt)
        lines = [self.said.text("ussd.choose_language")]
        for number, language in enumerate(installed.languages(), start=1):
            lines.append(f"{number} {installed.messages(None, language).text('language.name')}")
        return Reply("\n".join([problem, *lines] if problem else lines), end=False)

    def _language(self, value: str) -> Reply:
        languages = subscriber.texts(self.rt).languages()
        if not (value.isdigit() and 1 <= int(value) <= len(languages)):
            return self._languages(self.said.text("ussd.invalid_choice"))
        language = languages[int(value) - 1]
        if not subscriber.set_language(self.rt, CHANNEL, self.session.msisdn, language):
            return self._done(self.said.text("balance.unknown"))
        self.state["language"] = language
        said = subscriber.texts(self.rt).messages(self.state.get("provider"), language)
        return self._done(said.text("ussd.language_set"))

    def _confirm(self, value: str) -> Reply:
        if value == "1":
            self.state["step"] = "pin"
            return Reply(self.said.text("ussd.enter_pin"), end=False)
        if value == "2":
            self.state["step"] = "number"
            return Reply(self.said.text("ussd.enter_number"), end=False)
        number = self.state["recipient"]
        problem = self.said.text("ussd.invalid_choice")
        confirm = self.said.text("ussd.confirm_number", msisdn=number)
        return Reply(f"{problem}\n{confirm}", end=False)

    def _redeem(self, index: int, scenario: str | None) -> Reply:
        if scenario is None:
            self.state["pin_index"] = index
        pin = self.parts[self.state["pin_index"]]
        recipient = self.state["recipient"]
        answer = subscriber.redeem(
            self.rt,
            CHANNEL,
            msisdn=self.session.msisdn,
            pin=pin,
            recipient=None if recipient == self.session.msisdn else recipient,
            scenario=scenario,
            request_id=f"{self.request_prefix}-{index}",
        )
        code = answer["result_code"]
        if code == Result.SUCCESS.code:
            return self._done(self.said.result(answer))
        if code == Result.SCENARIO_REQUIRED.code and scenario is None:
            self.state.update(
                step="offer",
                page=0,
                offers=[self.said.scenario(s) for s in answer.get("scenarios", [])],
                numbers=[str(s["number"]) for s in answer.get("scenarios", [])],
            )
            return self._offers()
        if code == Result.INVALID_SCENARIO_NUMBER.code and scenario is not None:
            return self._offers(self.said.text("ussd.invalid_choice"))
        bad_pins = int(self.state.get("bad_pins", 0))
        retries = self.rt.settings.channel_pin_retries
        if code in subscriber.BAD_PIN_RESULTS and bad_pins < retries:
            self.state["bad_pins"] = bad_pins + 1
            text = self.said.text(
                "ussd.enter_pin_again", problem=self.said.result(answer), left=retries - bad_pins
            )
            return Reply(text, end=False)
        return self._done(self.said.result(answer))

    def _offers(self, problem: str | None = None) -> Reply:
        header = self.said.text("result.2008")
        if problem:
            header = f"{problem}\n{header}"
        pages = self._pages()
        page = int(self.state.get("page", 0)) % len(pages)
        lines = [header, *(self.state["offers"][i] for i in pages[page])]
        if len(pages) > 1:  # "more" on the last page goes back to the first
            lines.append(self.said.text("ussd.more"))
        return Reply("\n".join(lines), end=False)

    def _pages(self) -> list[list[int]]:
        """The pages of offers, cut once with room for the longest problem shown above
        them, so a wrong key never moves an offer to a page already passed."""
        if "pages" not in self.state:
            header = f"{self.said.text('ussd.invalid_choice')}\n{self.said.text('result.2008')}"
            self.state["pages"] = _pages(header, self.state["offers"], self.said.text("ussd.more"))
        pages: list[list[int]] = self.state["pages"]
        return pages

    def _offer(self, index: int, value: str) -> Reply:
        if value == "0" and "0" not in self.state["numbers"]:
            self.state["page"] = (int(self.state.get("page", 0)) + 1) % len(self._pages())
            return self._offers()
        if value not in self.state["numbers"]:
            return self._offers(self.said.text("ussd.invalid_choice"))
        return self._redeem(index, value)

    def _done(self, text: str) -> Reply:
        self.state.update(step="done", reply=text)
        return Reply(text, end=True)


def _account_or_none(rt: Runtime, msisdn: str) -> Account | None:
    try:
        return subscriber.account(rt, CHANNEL, msisdn)
    except Exception as exc:
        subscriber.log_unexpected(CHANNEL, "subscriber lookup", exc)
        return None


def _step(rt: Runtime, session_id: str, msisdn: str, text: str) -> str:
    """The reply to one callback of a session."""
    actor = subscriber.principal(CHANNEL)
    timeout = rt.settings.ussd_session_timeout_s
    session = channel_sessions.load(rt, actor, CHANNEL, session_id, msisdn)
    fresh = subscriber.texts(rt).messages()
    if session.expired:
        return Reply(fresh.text("ussd.expired"), end=True).render()
    if session.msisdn != msisdn:  # a session id is the gateway's, for one subscriber
        return Reply(fresh.result(Result.INVALID_SUBSCRIBER.body()), True).render()
    if session.is_new:
        channel_sessions.purge_expired(rt, actor)
        found = _account_or_none(rt, msisdn)
        session.state.update(
            provider=found and found.service_provider,
            language=found and found.language,
            currencies=found.currencies if found else {},
        )
    installed = subscriber.texts(rt)
    provider = session.state.get("provider")
    said = installed.messages(
        provider,
        installed.language_of(provider, session.state.get("language")),
        session.state.get("currencies"),
    )
    parts = text.split("*") if text else []
    consumed = int(session.state.get("consumed", 0))
    if not session.is_new and len(parts) <= consumed:
        return str(session.state.get("last", ""))  # the gateway asks again: same answer
    menu = _Menu(rt, session, parts, said)
    reply = menu.main_menu() if "step" not in session.state else None
    for index in range(consumed, len(parts)):
        reply = menu.feed(index, parts[index])
        if reply.end:
            break
    assert reply is not None  # a stored session always has new input here
    rendered = reply.render()
    session.state.update(consumed=len(parts), last=rendered)
    if not channel_sessions.save(rt, actor, session, timeout):
        # Another process took this very step (a retry racing the first try); the
        # redemption's request id made both get one answer, which it stored.
        stored = channel_sessions.load(rt, actor, CHANNEL, session_id, msisdn)
        return str(stored.state.get("last", rendered))
    return rendered


@router.post("/ussd", response_class=PlainTextResponse)
async def ussd_callback(
    request: Request,
    rt: RuntimeDep,
    secret: Annotated[str | None, Query(description="VOMS_USSD_SECRET")] = None,
    session_id: Annotated[str, Form(alias="sessionId")] = "",
    service_code: Annotated[str, Form(alias="serviceCode")] = "",
    phone_number: Annotated[str, Form(alias="phoneNumber")] = "",
    text: Annotated[str, Form()] = "",
) -> PlainTextResponse:
    """One step of a USSD session: ``CON`` and a menu, or ``END`` and the outcome."""
    # Lengths are checked here, not by the form's validation: the gateway shows the
    # subscriber a reply, and a 422 body is not one.
    if not sms.secret_matches(rt.settings.ussd_secret, secret):
        return PlainTextResponse("", status_code=403)
    msisdn = subscriber.msisdn_or_none(phone_number)
    said = subscriber.texts(rt).messages()
    if msisdn is None or not session_id or len(session_id) > MAX_SESSION_ID_LENGTH:
        answer: dict[str, Any] = Result.INVALID_SUBSCRIBER.body()
        return PlainTextResponse(Reply(said.result(answer), end=True).render())
    if len(text) > MAX_INPUT_CHARS:
        return PlainTextResponse(Reply(said.text("ussd.too_long"), end=True).render())
    reply = await run_redemption_work(request, _step, rt, session_id, msisdn, text)
    return PlainTextResponse(reply)
