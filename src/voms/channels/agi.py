"""IVR through Asterisk: a FastAGI server (asyncio) speaking the AGI protocol.

Asterisk connects for each call (``AGI(agi://host:4573/recharge)`` in the dialplan),
sends the ``agi_`` environment up to a blank line, then waits for one command at a time
and answers each with a line such as ``200 result=1234 (timeout)``. The call:

1. ANSWER; a menu (GET DATA, one digit): 1 recharge the caller's number (``agi_callerid``),
   2 another number (entered, then read back with SAY DIGITS and confirmed). A caller
   without a usable caller id goes straight to entering a number.
2. GET DATA collects the PIN (DTMF, ``#`` ends it); a bad PIN may be entered again
   ``VOMS_CHANNEL_PIN_RETRIES`` times. A voucher with several offers asks for one.
3. SET VARIABLE ``VOMS_RESULT`` (the result code) and, after a success, ``VOMS_BALANCE``;
   the new balance is said with SAY NUMBER. The dialplan continues after ``AGI()``.

Prompts are sound file names (``VOMS_AGI_PROMPTS`` replaces any default); a failure plays
``voms/result-<code>`` when that file exists, else ``voms/recharge-failed``. Only
addresses in ``VOMS_AGI_ALLOWED_CLIENTS`` may connect; others are disconnected unheard.
The PIN lives in the call's coroutine only; nothing logs it.
"""

import asyncio
import contextlib
import ipaddress
import logging
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from voms.channels import sms, subscriber
from voms.domain.pins import MAX_PIN_LENGTH
from voms.domain.results import Result
from voms.runtime import Runtime

CHANNEL = "ivr"
RESULT_VARIABLE = "VOMS_RESULT"
BALANCE_VARIABLE = "VOMS_BALANCE"

DEFAULT_PROMPTS: dict[str, str] = {
    "menu": "voms/menu",  # "for this number press 1, for another number press 2"
    "enter_number": "voms/enter-number",
    "you_entered": "voms/you-entered",
    "confirm_number": "voms/confirm-number",  # "if correct press 1, to change it press 2"
    "enter_pin": "voms/enter-pin",
    "invalid_pin": "voms/invalid-pin",
    "invalid_choice": "voms/invalid-choice",
    "choose_offer": "voms/choose-offer",
    "success": "voms/recharge-successful",
    "new_balance": "voms/your-new-balance-is",
    "failed": "voms/recharge-failed",
    "goodbye": "voms/goodbye",
}
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
        self.prompts = prompts
        self.settings = rt.settings

    async def digits(self, prompt: str, max_digits: int) -> str:
        return await self.agi.get_data(
            self.prompts[prompt], self.settings.agi_digit_timeout_ms, max_digits
        )

    async def choose(self, prompt: str, options: Iterable[str]) -> str | None:
        """One digit among ``options``, asked again on a wrong one within the retries."""
        allowed = set(options)
        for _ in range(self.settings.channel_pin_retries + 1):
            choice = await self.digits(prompt, 1)
            if choice in allowed:
                return choice
            await self.agi.stream(self.prompts["invalid_choice"])
        return None

    async def other_number(self) -> str | None:
        """A number entered with DTMF, read back and confirmed."""
        for _ in range(self.settings.channel_pin_retries + 1):
            number = subscriber.msisdn_or_none(await self.digits("enter_number", 15))
            if number is None:
                await self.agi.stream(self.prompts["invalid_choice"])
                continue
            await self.agi.stream(self.prompts["you_entered"])
            await self.agi.say_digits(number)
            if await self.choose("confirm_number", "12") == "1":
                return number
        return None

    async def redeem(
        self, requester: str, recipient: str, pin: str, scenario: str | None
    ) -> dict[str, Any]:
        # No request id: a call is one connection that Asterisk never replays, and
        # agi_uniqueid is unique within one Asterisk only, not among several.
        return await asyncio.to_thread(
            subscriber.redeem,
            self.rt,
            CHANNEL,
            msisdn=requester,
            pin=pin,
            recipient=None if recipient == requester else recipient,
            scenario=scenario,
        )

    async def recharge(self, requester: str, recipient: str) -> dict[str, Any]:
        """PIN entry with retries, and an offer when the voucher has several."""
        bad_pins = 0
        while True:
            pin = await self.digits("enter_pin", MAX_PIN_LENGTH)
            answer = await self.redeem(requester, recipient, pin, None)
            code = answer["result_code"]
            if code == Result.SCENARIO_REQUIRED.code:
                offers = [str(s["number"]) for s in answer.get("scenarios", [])]
                choice = await self.choose("choose_offer", offers)
                if choice is None:
                    return Result.INVALID_SCENARIO_NUMBER.body()
                return await self.redeem(requester, recipient, pin, choice)
            if code in subscriber.BAD_PIN_RESULTS and bad_pins < self.settings.channel_pin_retries:
                bad_pins += 1
                await self.agi.stream(self.prompts["invalid_pin"])
                continue
            return answer

    async def tell(self, answer: dict[str, Any], language: str | None, recipient: str) -> None:
        code = answer["result_code"]
        await self.agi.set_variable(RESULT_VARIABLE, str(code))
        if code == Result.SUCCESS.code:
            await self.agi.stream(self.prompts["success"])
            found = subscriber.first_balance(answer)
            if found is not None:
                said = await asyncio.to_thread(
                    subscriber.messages, self.rt, CHANNEL, recipient, language
                )
                whole = said.major_units(*found)
                await self.agi.set_variable(BALANCE_VARIABLE, str(whole))
                await self.agi.stream(self.prompts["new_balance"])
                await self.agi.say_number(whole)
        else:
            specific = self.prompts.get(f"result_{code}", _RESULT_PROMPT.format(code=code))
            if not await self.agi.stream(specific):
                await self.agi.stream(self.prompts["failed"])
        await self.agi.stream(self.prompts["goodbye"])

    async def run(self) -> int:
        env = self.agi.env
        caller = subscriber.msisdn_or_none(env.get("agi_callerid"))
        await self.agi.answer()
        recipient: str | None = None
        if caller is not None:
            choice = await self.choose("menu", "12")
            recipient = caller if choice == "1" else None
            if choice == "2":
                recipient = await self.other_number()
        else:
            recipient = await self.other_number()
        if recipient is None:
            answer = Result.INVALID_SUBSCRIBER.body()
            await self.tell(answer, env.get("agi_language"), "")
            return int(answer["result_code"])
        answer = await self.recharge(caller or recipient, recipient)
        await self.tell(answer, env.get("agi_language"), recipient)
        return int(answer["result_code"])


def prompts_of(rt: Runtime) -> dict[str, str]:
    """The default prompts with ``VOMS_AGI_PROMPTS`` applied; names are checked."""
    prompts = {**DEFAULT_PROMPTS, **rt.settings.agi_prompts}
    for key, sound in prompts.items():
        if key not in DEFAULT_PROMPTS and not re.fullmatch(r"result_\d{1,4}", key):
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
