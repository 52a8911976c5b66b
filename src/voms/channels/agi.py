"""IVR through Asterisk: a FastAGI server (asyncio) speaking the AGI protocol.

Asterisk connects for each call (``AGI(agi://host:4573/recharge)`` in the dialplan),
sends the ``agi_`` environment up to a blank line, then waits for one command at a time
and answers each with a line such as ``200 result=1234 (timeout)``. The call:

1. ANSWER; a menu (GET DATA, one digit): 1 recharge the caller's number (``agi_callerid``),
   2 another number (entered, read back with SAY DIGITS, confirmed, and refused at once
   when it has no account), 3 the caller's balances. A caller without a usable caller id
   goes straight to entering a number.
2. GET DATA collects the PIN (DTMF, ``#`` ends it); a bad PIN may be entered again
   ``VOMS_CHANNEL_PIN_RETRIES`` times. A voucher with several offers reads them out
   ("for ten shillings press 1") and asks for one. Each redemption carries a request id
   of its own (``ivr-<call>-<n>``), and one answered 3000 (the database out of reach, the
   answer lost) is sent once more with the same id: the service then gives the first
   answer again if it had committed.
3. SET VARIABLE ``VOMS_RESULT`` (the result code) and, after a success, ``VOMS_BALANCE``;
   every credit is said with its new balance, as money ("ten shillings"). The dialplan
   continues after ``AGI()``.

Prompts are the texts' ``ivr.*`` entries in the call's language (``agi_language``):
sound files and numbers (SAY NUMBER). ``VOMS_AGI_PROMPTS`` replaces a prompt for every
language; a failure plays ``voms/result-<code>`` when that file exists, else
``voms/recharge-failed``. Only addresses in ``VOMS_AGI_ALLOWED_CLIENTS`` may connect;
others are disconnected unheard.
The PIN lives in the call's coroutine only; nothing logs it.
"""

import asyncio
import contextlib
import ipaddress
import logging
import re
import secrets
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from voms.channels import sms, subscriber
from voms.channels.texts import DEFAULTS, Messages, Sayable, placeholders
from voms.domain.pins import MAX_PIN_LENGTH
from voms.domain.results import Result
from voms.runtime import Runtime

CHANNEL = "ivr"
RESULT_VARIABLE = "VOMS_RESULT"
RETRY_DELAY_S = 0.5  # before a redemption answered 3000 is sent again
BALANCE_VARIABLE = "VOMS_BALANCE"

# The prompts VOMS_AGI_PROMPTS may replace: the texts' ivr.* entries that are sounds only.
PROMPT_NAMES = frozenset(
    key.removeprefix("ivr.")
    for key, text in DEFAULTS.items()
    if key.startswith("ivr.") and not placeholders(text)
)
_RESULT_PROMPT = "voms/result-{code}"
_SOUND_NAME = re.compile(r"^[A-Za-z0-9_./-]{1,200}$")
_REPLY = re.compile(r"^(?P<code>\d{3})(?:[ -](?P<rest>.*))?$")
_RESULT = re.compile(r"^result=(?P<result>\S*)(?: \((?P<data>[^)]*)\))?(?P<extra>.*)$")

ENV_LINES_MAX = 256
READ_TIMEOUT_S = 300.0  # longest a prompt plus digit entry may take; a dead peer ends here

log = logging.getLogger("voms.channels.agi")


class AgiHangup(Exception):
    """The caller hung up (HANGUP, 511, or Asterisk closed the connection)."""


class AgiError(Exception):
    """Asterisk refused a command (510, 520) or said something that is not AGI."""


@dataclass(frozen=True)
class AgiReply:
    """One answer of Asterisk: ``200 result=1234 (timeout) endpos=8000``."""

    code: int
    result: str = ""
    data: str | None = None
    extra: dict[str, str] = field(default_factory=dict)


_DIGIT_RUN = re.compile(r"\d{6,}")


def parse_reply(line: str) -> AgiReply:
    """The reply of one AGI response line."""
    matched = _REPLY.match(line.rstrip("\r\n"))
    if matched is None:
        # The line is logged: a run of digits in it could be a PIN the caller keyed.
        shown = _DIGIT_RUN.sub("…", line[:80])
        raise AgiError(f"not an AGI response: {shown!r}")
    code, rest = int(matched.group("code")), matched.group("rest") or ""
    found = _RESULT.match(rest)
    if found is None:
        return AgiReply(code=code, data=rest or None)
    extra = dict(item.split("=", 1) for item in found.group("extra").split() if "=" in item)
    return AgiReply(code, found.group("result"), found.group("data"), extra)


def _quoted(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


class AgiSession:
    """One FastAGI connection: the call's environment and the command exchange."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.env: dict[str, str] = {}
        self.hung_up = False

    async def _line(self) -> str:
        try:
            raw = await asyncio.wait_for(self.reader.readline(), READ_TIMEOUT_S)
        except (TimeoutError, ConnectionError, asyncio.LimitOverrunError, ValueError):
            raise AgiHangup from None
        if not raw:
            raise AgiHangup
        return raw.decode("utf-8", errors="replace").rstrip("\r\n")

    async def read_environment(self) -> dict[str, str]:
        """The ``agi_*`` variables Asterisk sends first, up to the blank line."""
        for _ in range(ENV_LINES_MAX):
            line = await self._line()
            if not line:
                return self.env
            name, _, value = line.partition(":")
            if name.startswith("agi_"):
                self.env[name] = value.strip()
        raise AgiError("no end of the AGI environment")

    async def command(self, *words: str) -> AgiReply:
        """Send one command; its reply. A hangup (HANGUP, 511, EOF) raises AgiHangup."""
        if self.hung_up:
            raise AgiHangup
        try:
            self.writer.write((" ".join(words) + "\n").encode())
            await self.writer.drain()
        except ConnectionError:
            raise AgiHangup from None
        line = await self._line()
        while line == "HANGUP":  # FastAGI's notice that the channel hung up
            self.hung_up = True
            line = await self._line()
        if line.startswith("520-"):  # usage text, up to "520 End of proper usage."
            while not line.startswith("520 "):
                line = await self._line()
        reply = parse_reply(line)
        if reply.code == 511:
            self.hung_up = True
            raise AgiHangup
        if reply.code != 200:
            raise AgiError(f"{words[0]} {words[1] if len(words) > 1 else ''}: {reply.code}")
        return reply

    async def answer(self) -> None:
        reply = await self.command("ANSWER")
        if reply.result == "-1":
            raise AgiHangup

    async def stream(self, sound: str) -> bool:
        """Play a sound file; False when Asterisk could not open it."""
        reply = await self.command("STREAM", "FILE", sound, '""')
        return not (reply.result == "-1" and reply.extra.get("endpos", "0") == "0")

    async def get_data(self, sound: str, timeout_ms: int, max_digits: int) -> str:
        """Play ``sound`` and collect DTMF digits (``#`` ends); "" when none came."""
        reply = await self.command("GET", "DATA", sound, str(timeout_ms), str(max_digits))
        if reply.result == "-1":
            raise AgiHangup
        return reply.result

    async def say_number(self, number: int) -> None:
        await self.command("SAY", "NUMBER", str(number), '""')

    async def say_digits(self, digits: str) -> None:
        await self.command("SAY", "DIGITS", digits, '""')

    async def set_variable(self, name: str, value: str) -> None:
        await self.command("SET", "VARIABLE", name, _quoted(value))


# --- the recharge call -------------------------------------------------------------------


class _Call:
    """The dialogue of one call, with its prompts and retry budget."""

    def __init__(self, rt: Runtime, agi: AgiSession, prompts: dict[str, str]) -> None:
        self.rt = rt
        self.agi = agi
        self.prompts = prompts  # VOMS_AGI_PROMPTS
        self.settings = rt.settings
        # agi_uniqueid is unique within one Asterisk only, not among several: a call
        # id of our own, with a counter per redemption sent, makes the request ids.
        self.call_id = secrets.token_hex(8)
        self.redemptions = 0
        self.language = agi.env.get("agi_language") or None
        self.said = Messages()

    async def messages(self, msisdn: str | None) -> Messages:
        """The texts for ``msisdn`` in the call's language, amounts in its currencies."""
        return await asyncio.to_thread(subscriber.messages, self.rt, CHANNEL, msisdn, self.language)

    def prompt(self, name: str) -> list[Sayable]:
        if name in self.prompts:
            return [Sayable(self.prompts[name])]
        return self.said.sounds(f"ivr.{name}")

    async def say(self, said: list[Sayable]) -> None:
        for item in said:
            if item.spoken_number is not None:
                await self.agi.say_number(item.spoken_number)
            else:
                await self.agi.stream(item.sound)

    async def play(self, name: str) -> None:
        await self.say(self.prompt(name))

    async def digits(self, prompt: str, max_digits: int) -> str:
        # GET DATA plays one file: what a prompt says before it is played first (a
        # prompt asking for digits has no placeholders, so its last word is a sound).
        *before, last = self.prompt(prompt)
        await self.say(before)
        return await self.agi.get_data(last.sound, self.settings.agi_digit_timeout_ms, max_digits)

    async def choose(self, prompt: str, options: Iterable[str]) -> str | None:
        """One digit among ``options``, asked again on a wrong one within the retries."""
        allowed = set(options)
        for _ in range(self.settings.channel_pin_retries + 1):
            choice = await self.digits(prompt, 1)
            if choice in allowed:
                return choice
            await self.play("invalid_choice")
        return None

    async def other_number(self) -> str | None:
        """A number entered with DTMF, read back, confirmed, and known to have an account."""
        for _ in range(self.settings.channel_pin_retries + 1):
            number = subscriber.msisdn_or_none(await self.digits("enter_number", 15))
            if number is None:
                await self.play("invalid_choice")
                continue
            await self.play("you_entered")
            await self.agi.say_digits(number)
            if await self.choose("confirm_number", "12") != "1":
                continue
            if await asyncio.to_thread(subscriber.account, self.rt, CHANNEL, number) is None:
                await self.play("balance.unknown")  # before the PIN
                continue
            return number
        return None

    async def redeem(
        self, requester: str, recipient: str, pin: str, scenario: str | None
    ) -> dict[str, Any]:
        """One redemption under a request id of its own; a 3000 is retried once with it."""
        self.redemptions += 1
        request_id = f"{CHANNEL}-{self.call_id}-{self.redemptions}"
        answer: dict[str, Any] = {}
        for attempt in range(2):
            if attempt:
                await asyncio.sleep(RETRY_DELAY_S)
            answer = await asyncio.to_thread(
                subscriber.redeem,
                self.rt,
                CHANNEL,
                msisdn=requester,
                pin=pin,
                recipient=None if recipient == requester else recipient,
                scenario=scenario,
                request_id=request_id,
            )
            if answer["result_code"] != Result.SYSTEM_ERROR.code:
                break
        return answer

    def said_credits(self, said: Messages, credits: Iterable[dict[str, Any]]) -> list[Sayable]:
        """The credits of an offer in words: "ten shillings and fifty SMS"."""
        words: list[Sayable] = []
        for credit in credits:
            if words:
                words += said.sounds("ivr.and")
            words += said.said_amount(str(credit["balance_type"]), int(credit["amount"]))
        return words

    async def offers(self, scenarios: list[dict[str, Any]]) -> None:
        """Each offer read out with the key that chooses it."""
        for scenario in scenarios:
            await self.say(
                self.said.sounds(
                    "ivr.offer",
                    credits=self.said_credits(self.said, scenario.get("credits", [])),
                    number=Sayable.number(int(scenario["number"])),
                )
            )

    async def recharge(self, requester: str, recipient: str) -> dict[str, Any]:
        """PIN entry with retries, and an offer when the voucher has several."""
        bad_pins = 0
        while True:
            pin = await self.digits("enter_pin", MAX_PIN_LENGTH)
            answer = await self.redeem(requester, recipient, pin, None)
            code = answer["result_code"]
            if code == Result.SCENARIO_REQUIRED.code:
                scenarios = list(answer.get("scenarios", []))
                await self.offers(scenarios)
                choice = await self.choose("choose_offer", [str(s["number"]) for s in scenarios])
                if choice is None:
                    return Result.INVALID_SCENARIO_NUMBER.body()
                return await self.redeem(requester, recipient, pin, choice)
            if code in subscriber.BAD_PIN_RESULTS and bad_pins < self.settings.channel_pin_retries:
                bad_pins += 1
                await self.play("invalid_pin")
                continue
            return answer

    async def tell(self, answer: dict[str, Any], recipient: str) -> None:
        code = answer["result_code"]
        await self.agi.set_variable(RESULT_VARIABLE, str(code))
        if code == Result.SUCCESS.code:
            await self.play("success")
            said = await self.messages(recipient)
            found = subscriber.first_balance(answer)
            if found is not None:
                await self.agi.set_variable(BALANCE_VARIABLE, str(said.major_units(*found)))
            for credit in answer.get("credits", []):
                amount = said.said_amount(str(credit["balance_type"]), int(credit["amount"]))
                if credit.get("balance") is None:  # an external charging system's credit
                    await self.say(amount)
                    continue
                balance = said.said_amount(str(credit["balance_type"]), int(credit["balance"]))
                await self.say(said.sounds("ivr.credit", amount=amount, balance=balance))
        else:
            specific = self.prompts.get(f"result_{code}", _RESULT_PROMPT.format(code=code))
            if not await self.agi.stream(specific):
                await self.play("failed")
        await self.play("goodbye")

    async def balance(self, caller: str) -> int:
        """The caller's balances, said as money; the result code for the dialplan."""
        found = await asyncio.to_thread(subscriber.account, self.rt, CHANNEL, caller)
        if found is None:
            await self.agi.set_variable(RESULT_VARIABLE, str(Result.SUBSCRIBER_NOT_FOUND.code))
            await self.play("balance.unknown")
            await self.play("goodbye")
            return Result.SUBSCRIBER_NOT_FOUND.code
        await self.agi.set_variable(RESULT_VARIABLE, str(Result.SUCCESS.code))
        entries: list[Sayable] = []
        for entry in found.balances:
            amount = self.said.said_amount(str(entry["balance_type"]), int(entry["amount"]))
            entries += self.said.sounds("ivr.balance.entry", amount=amount)
        if entries:
            await self.say(self.said.sounds("ivr.balance", balances=entries))
        else:
            await self.play("balance.empty")
        await self.play("goodbye")
        return Result.SUCCESS.code

    async def run(self) -> int:
        env = self.agi.env
        caller = subscriber.msisdn_or_none(env.get("agi_callerid"))
        self.said = await self.messages(caller)
        await self.agi.answer()
        recipient: str | None = None
        if caller is not None:
            choice = await self.choose("menu", "123")
            if choice == "3":
                return await self.balance(caller)
            recipient = caller if choice == "1" else None
            if choice == "2":
                recipient = await self.other_number()
        else:
            recipient = await self.other_number()
        if recipient is None:
            answer = Result.INVALID_SUBSCRIBER.body()
            await self.tell(answer, "")
            return int(answer["result_code"])
        answer = await self.recharge(caller or recipient, recipient)
        await self.tell(answer, recipient)
        return int(answer["result_code"])


def prompts_of(rt: Runtime) -> dict[str, str]:
    """``VOMS_AGI_PROMPTS``, its names and sound files checked."""
    prompts = dict(rt.settings.agi_prompts)
    for key, sound in prompts.items():
        if key not in PROMPT_NAMES and not re.fullmatch(r"result_\d{1,4}", key):
            raise ValueError(f"VOMS_AGI_PROMPTS: unknown prompt {key!r}")
        if not _SOUND_NAME.match(sound):
            raise ValueError(f"VOMS_AGI_PROMPTS: {key}: {sound!r} is not a sound file name")
    return prompts


# --- the server -----------------------------------------------------------------------------


def allowed_networks(setting: str) -> list[ipaddress.IPv4Network | ipaddress.IPv6Network]:
    """``VOMS_AGI_ALLOWED_CLIENTS``: addresses or networks, comma-separated."""
    networks = []
    for item in setting.split(","):
        if item.strip():
            try:
                networks.append(ipaddress.ip_network(item.strip(), strict=False))
            except ValueError:
                raise ValueError(f"VOMS_AGI_ALLOWED_CLIENTS: {item.strip()!r}") from None
    return networks


def _is_allowed(
    peer: str, networks: Sequence[ipaddress.IPv4Network | ipaddress.IPv6Network]
) -> bool:
    try:
        address = ipaddress.ip_address(peer.split("%", 1)[0])
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return any(address in network for network in networks)


async def handle_call(
    rt: Runtime,
    prompts: dict[str, str],
    networks: Sequence[ipaddress.IPv4Network | ipaddress.IPv6Network],
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
) -> None:
    """One FastAGI connection, from the environment to the last command."""
    peername = writer.get_extra_info("peername")
    peer = str(peername[0]) if peername else "?"
    try:
        if not _is_allowed(peer, networks):
            log.warning(
                "refused FastAGI connection from %s (not in VOMS_AGI_ALLOWED_CLIENTS)", peer
            )
            return
        agi = AgiSession(reader, writer)
        await agi.read_environment()
        code = await _Call(rt, agi, prompts).run()
        log.info("ivr: call %s ended with result %s", agi.env.get("agi_uniqueid", "?"), code)
    except AgiHangup:
        log.info("ivr: caller hung up")
    except AgiError as exc:
        log.warning("ivr: %s", exc)
    except Exception as exc:
        subscriber.log_unexpected(CHANNEL, "call", exc)
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()


async def start(rt: Runtime, hosts: Sequence[str], port: int) -> asyncio.Server:
    """Listen for Asterisk on ``hosts``:``port`` (port 0: any free port)."""
    prompts = prompts_of(rt)
    networks = allowed_networks(rt.settings.agi_allowed_clients)
    sms.install_notices(rt)

    async def on_connect(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await handle_call(rt, prompts, networks, reader, writer)

    return await asyncio.start_server(on_connect, host=list(hosts), port=port)


async def serve(rt: Runtime, hosts: Sequence[str], port: int) -> None:
    """Run the FastAGI server until cancelled."""
    server = await start(rt, hosts, port)
    bound = ", ".join(f"{s.getsockname()[0]}:{s.getsockname()[1]}" for s in server.sockets)
    log.info("FastAGI listening on %s", bound)
    async with server:
        await server.serve_forever()
