"""What subscribers read: one text per result code and per menu step.

English defaults live here. An operator overrides any of them, per service provider and
per language, in a JSON file named by ``VOMS_TEXTS_FILE`` (README "Subscriber texts")::

    {"default": {"texts": {"sw": {"result.2009": "Vocha hii imeshatumika."}},
                 "decimals": {"CASH": 2}},
     "service_providers": {"ACME": {"texts": {"en": {"balance_type.CASH": "KES"}}}}}

A text is looked up in the subscriber's provider and language first, then the default
profile in that language, then both in ``VOMS_CHANNEL_LANGUAGE``, then the English
default. The file is checked when the app starts: unknown keys and placeholders that the
default does not offer are refused, so a typo cannot break a reply at run time. A changed
file is read again without a restart (:class:`TextsFile`, checked at most once a second);
a broken new version is refused the same way, logged, and the texts in use stay.
No text ever carries a PIN: none of them has a placeholder for one.
"""

import json
import logging
import os
import re
import string
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from voms.domain.results import Result

log = logging.getLogger("voms.channels.texts")

# How often a texts file is looked at for changes (one stat call).
CHECK_INTERVAL_S = 1.0

# --- the English defaults -----------------------------------------------------------------

RESULT_TEXTS: dict[Result, str] = {
    Result.SUCCESS: "Recharge of {msisdn} successful: {credits}.",
    Result.BATCH_NOT_ACTIVE: "This voucher cannot be used. Please call customer care.",
    Result.INVALID_VOUCHER_NUMBER: "Wrong PIN. Please check the number on your voucher.",
    Result.INVALID_SERIAL_NUMBER: "The serial number does not match this voucher.",
    Result.VOUCHER_NOT_FOUND: "Wrong PIN. Please check the number on your voucher.",
    Result.RESERVATION_NOT_FOUND: "This recharge is no longer pending.",
    Result.NOT_VALID_FOR_PRODUCT_TYPE: "This voucher is not valid for your tariff.",
    Result.SCENARIO_REQUIRED: "Choose an offer:",
    Result.ALREADY_REDEEMED: "This voucher has already been used.",
    Result.ALREADY_RESERVED: "This voucher is being used. Please try again later.",
    Result.NOT_YET_ACTIVE: "This voucher is not active yet. Please try again later.",
    Result.FROZEN: "This voucher is blocked. Please call customer care.",
    Result.DELETED: "This voucher is no longer valid.",
    Result.EXPIRED: "This voucher has expired.",
    Result.SYSTEM_ERROR: "Sorry, recharges are unavailable. Please try again later.",
    Result.SERVICE_PROVIDER_NOT_FOUND: "This service is not available for your number.",
    Result.INVALID_VOUCHER_NUMBER_LENGTH: "Wrong PIN length. Please check your voucher.",
    Result.INVALID_SCENARIO_NUMBER: "Invalid choice.",
    Result.INVALID_SUBSCRIBER: "Invalid phone number.",
    Result.MISSING_VOUCHER_NUMBER: "Please enter the PIN of your voucher.",
    Result.INVALID_PARAMETER: "Invalid request.",
    Result.SUBSCRIBER_NOT_FOUND: "This number cannot be recharged with this voucher.",
    Result.SUBSCRIBER_NOT_ACTIVE: "This account is not active. Please call customer care.",
    Result.SUBSCRIBER_BLACKLISTED: "Too many wrong PINs. Please try again later.",
    Result.BALANCE_LIMIT_EXCEEDED: "Recharge refused: the balance limit would be exceeded.",
    Result.VOUCHER_TYPE_NOT_FOUND: "This voucher cannot be used. Please call customer care.",
    Result.REQUEST_ID_REUSED: "Sorry, recharges are unavailable. Please try again later.",
    Result.TOO_MANY_REQUESTS: "Too many attempts. Please wait a minute and try again.",
}

DEFAULTS: dict[str, str] = {
    **{f"result.{result.code}": text for result, text in RESULT_TEXTS.items()},
    # one credit of a successful recharge, and how they are joined
    "credit": "+{amount} {balance_type}, balance {balance} {balance_type}",
    "credit.separator": "; ",
    # "my balance"
    "balance": "Your balance: {balances}.",
    "balance.entry": "{amount} {balance_type}",
    "balance.separator": ", ",
    "balance.empty": "You have no balance yet.",
    "balance.unknown": "This number has no account.",
    # an offer (scenario) in a list of choices
    "scenario": "{number} {name}",
    # USSD menus (each reply holds at most 182 characters)
    "ussd.menu": "1 Recharge my number\n2 Recharge another number\n3 My balance",
    "ussd.enter_pin": "Enter the voucher PIN:",
    "ussd.enter_pin_again": "{problem}\nEnter the PIN again ({left} left):",
    "ussd.enter_number": "Enter the number to recharge:",
    "ussd.invalid_number": "Invalid number. Enter the number to recharge:",
    "ussd.confirm_number": "Recharge {msisdn}?\n1 Yes\n2 No",
    "ussd.more": "0 More",
    "ussd.invalid_choice": "Invalid choice.",
    "ussd.cancelled": "Cancelled. No voucher was used.",
    "ussd.expired": "Your session has expired. Please dial again.",
    # SMS replies ({recharge} and {balance} are the configured keywords)
    "sms.help": (
        "To recharge send {recharge} PIN. Another number: {recharge} PIN NUMBER. "
        "Balance: {balance}."
    ),
    "sms.choose_scenario": "Offers: {choices}. Send {command} and the offer number.",
    # SMS to a number recharged by someone else (through Kannel's sendsms)
    "notice.recharged": "Your number was recharged by {msisdn}: {credits}.",
    # the mobile web page
    "web.title": "Recharge",
    "web.msisdn": "Your phone number",
    "web.recipient": "Number to recharge (if another)",
    "web.pin": "Voucher PIN",
    "web.submit": "Recharge",
    "web.choose_scenario": "Choose an offer and enter the PIN again:",
    "web.again": "Recharge again",
}

_BALANCE_TYPE_KEY = re.compile(r"^balance_type\.[A-Za-z0-9_.-]{1,32}$")
_LANGUAGE = re.compile(r"^[A-Za-z]{2,8}([-_][A-Za-z0-9]{1,8})*$")
_FORMATTER = string.Formatter()


class TextsError(ValueError):
    """The texts file is unreadable or names what it may not."""


def placeholders(text: str) -> set[str]:
    """The ``{names}`` a text uses."""
    try:
        return {name for _, name, _, _ in _FORMATTER.parse(text) if name is not None}
    except ValueError as exc:
        raise TextsError(f"malformed placeholder in {text!r}: {exc}") from None


# --- the texts of one installation ---------------------------------------------------------


@dataclass(frozen=True)
class Profile:
    """The overrides of the default profile or of one service provider."""

    texts: Mapping[str, Mapping[str, str]] = field(default_factory=dict)  # language → key → text
    decimals: Mapping[str, int] = field(default_factory=dict)  # balance type → minor digits


@dataclass(frozen=True)
class Texts:
    """Every override of an installation; :meth:`messages` binds a provider and language."""

    language: str = "en"
    default: Profile = field(default_factory=Profile)
    service_providers: Mapping[str, Profile] = field(default_factory=dict)

    def languages(self) -> list[str]:
        """The languages texts exist in, the default first."""
        found = {self.language}
        for profile in (self.default, *self.service_providers.values()):
            found.update(profile.texts)
        return [self.language, *sorted(found - {self.language})]

    def messages(
        self, service_provider: str | None = None, language: str | None = None
    ) -> "Messages":
        """The texts for a subscriber of ``service_provider`` who reads ``language``."""
        own = self.service_providers.get(service_provider or "", Profile())
        languages = [lang for lang in (language, self.language) if lang]
        chain: list[Mapping[str, str]] = []
        for lang in dict.fromkeys(languages):
            chain += [own.texts.get(lang, {}), self.default.texts.get(lang, {})]
        decimals = {**self.default.decimals, **own.decimals}
        return Messages(tuple(chain), decimals)


@dataclass(frozen=True)
class Messages:
    """Texts for one provider and language, and the wording of results and amounts."""

    chain: tuple[Mapping[str, str], ...] = ()
    decimals: Mapping[str, int] = field(default_factory=dict)

    def text(self, key: str, **values: object) -> str:
        """The text of ``key`` with its placeholders filled in."""
        template = next((found[key] for found in self.chain if key in found), None)
        if template is None:
            template = DEFAULTS.get(key, key.removeprefix("balance_type."))
        return template.format_map(_Lenient(values))

    def balance_type(self, code: str) -> str:
        """What subscribers call a balance type ("KES" for CASH); its code by default."""
        return self.text(f"balance_type.{code}")

    def amount(self, balance_type: str, minor_units: int) -> str:
        """An amount in the balance type's minor units, shown with its decimals."""
        digits = self.decimals.get(balance_type, 0)
        if digits == 0:
            return str(minor_units)
        sign = "-" if minor_units < 0 else ""
        major, minor = divmod(abs(minor_units), 10**digits)
        return f"{sign}{major}.{minor:0{digits}d}"

    def major_units(self, balance_type: str, minor_units: int) -> int:
        """Whole units (what IVR says): 1550 cents of a 2-decimal type are 15."""
        return int(minor_units // 10 ** self.decimals.get(balance_type, 0))

    def credits(self, credits: Iterable[Mapping[str, Any]]) -> str:
        parts = [
            self.text(
                "credit",
                amount=self.amount(c["balance_type"], int(c["amount"])),
                balance=(
                    self.amount(c["balance_type"], int(c["balance"]))
                    if c.get("balance") is not None
                    else ""
                ),
                balance_type=self.balance_type(c["balance_type"]),
            )
            for c in credits
        ]
        return self.text("credit.separator").join(parts)

    def balances(self, balances: Iterable[Mapping[str, Any]]) -> str:
        entries = [
            self.text(
                "balance.entry",
                amount=self.amount(b["balance_type"], int(b["amount"])),
                balance_type=self.balance_type(b["balance_type"]),
            )
            for b in balances
        ]
        if not entries:
            return self.text("balance.empty")
        return self.text("balance", balances=self.text("balance.separator").join(entries))

    def scenario(self, scenario: Mapping[str, Any]) -> str:
        return self.text("scenario", number=scenario["number"], name=scenario["name"])

    def result(self, response: Mapping[str, Any]) -> str:
        """The sentence for a redemption response (success or failure)."""
        code = response.get("result_code")
        key = f"result.{code}"
        if key not in DEFAULTS:
            key = f"result.{Result.SYSTEM_ERROR.code}"
        if code == Result.SUCCESS.code:
            return self.text(
                key,
                msisdn=response.get("recipient_msisdn") or response.get("msisdn") or "",
                credits=self.credits(response.get("credits", [])),
                serial=response.get("serial") or "",
            )
        return self.text(key)


class _Lenient(dict[str, object]):
    """Leaves an unknown placeholder as it is instead of failing a reply."""

    def __missing__(self, key: str) -> str:
        return "{" + key + "}"


# --- the texts file --------------------------------------------------------------------


def _check_texts(where: str, texts: object) -> dict[str, dict[str, str]]:
    if not isinstance(texts, dict):
        raise TextsError(f"{where}.texts: expected an object of languages")
    checked: dict[str, dict[str, str]] = {}
    for language, entries in texts.items():
        if not _LANGUAGE.match(language):
            raise TextsError(f"{where}.texts: {language!r} is not a language code")
        if not isinstance(entries, dict):
            raise TextsError(f"{where}.texts.{language}: expected an object of texts")
        for key, text in entries.items():
            path = f"{where}.texts.{language}.{key}"
            if not isinstance(text, str):
                raise TextsError(f"{path}: expected a string")
            if key in DEFAULTS:
                extra = placeholders(text) - placeholders(DEFAULTS[key])
                if extra:
                    offered = ", ".join(sorted(placeholders(DEFAULTS[key]))) or "none"
                    raise TextsError(
                        f"{path}: unknown placeholder(s) {sorted(extra)}; offered: {offered}"
                    )
            elif _BALANCE_TYPE_KEY.match(key):
                if placeholders(text):
                    raise TextsError(f"{path}: a balance type name has no placeholders")
            else:
                raise TextsError(f"{path}: unknown text key")
        checked[language] = dict(entries)
    return checked


def _profile(where: str, raw: object) -> Profile:
    if not isinstance(raw, dict):
        raise TextsError(f"{where}: expected an object")
    unknown = set(raw) - {"texts", "decimals"}
    if unknown:
        raise TextsError(f"{where}: unknown key(s) {sorted(unknown)}")
    decimals = raw.get("decimals", {})
    if not isinstance(decimals, dict) or not all(
        isinstance(v, int) and not isinstance(v, bool) and 0 <= v <= 6 for v in decimals.values()
    ):
        raise TextsError(f"{where}.decimals: expected balance type codes with 0 to 6")
    return Profile(texts=_check_texts(where, raw.get("texts", {})), decimals=dict(decimals))


def parse(content: object, language: str = "en") -> Texts:
    """Texts from the decoded JSON of a texts file; :class:`TextsError` names what is wrong."""
    if not isinstance(content, dict):
        raise TextsError("expected a JSON object with 'default' and/or 'service_providers'")
    unknown = set(content) - {"default", "service_providers"}
    if unknown:
        raise TextsError(f"unknown key(s) {sorted(unknown)}")
    providers = content.get("service_providers", {})
    if not isinstance(providers, dict):
        raise TextsError("service_providers: expected an object of provider codes")
    return Texts(
        language=language,
        default=_profile("default", content.get("default", {})),
        service_providers={
            code: _profile(f"service_providers.{code}", profile)
            for code, profile in providers.items()
        },
    )


def load(path: Path | None, language: str = "en") -> Texts:
    """The texts of a file (or the defaults alone when there is none)."""
    if path is None:
        return Texts(language=language)
    try:
        content = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise TextsError(f"cannot read {path}: {exc.strerror}") from None
    except ValueError as exc:
        raise TextsError(f"{path}: not JSON: {exc}") from None
    try:
        return parse(content, language)
    except TextsError as exc:
        raise TextsError(f"{path}: {exc}") from None


class TextsFile:
    """The texts of ``VOMS_TEXTS_FILE`` as they are now: the file is read at start (a
    broken one raises :class:`TextsError`), then again whenever its modification time or
    size changed, looked at no more than once every ``CHECK_INTERVAL_S``. A broken new
    version is logged once and the texts in use stay until the file changes again."""

    def __init__(
        self,
        path: Path | None,
        language: str = "en",
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._path = path
        self._language = language
        self._clock = clock
        self._lock = threading.Lock()
        self._seen = self._signature()
        self._texts = load(path, language)
        self._checked_at = clock()

    def _signature(self) -> tuple[int, int] | None:
        if self._path is None:
            return None
        try:
            found = os.stat(self._path)
        except OSError:
            return None
        return found.st_mtime_ns, found.st_size

    def current(self) -> Texts:
        """The texts in use, read again first when the file changed."""
        if self._path is None or self._clock() - self._checked_at < CHECK_INTERVAL_S:
            return self._texts
        with self._lock:
            if self._clock() - self._checked_at < CHECK_INTERVAL_S:
                return self._texts  # another thread has just looked
            self._checked_at = self._clock()
            signature = self._signature()
            if signature != self._seen:
                self._seen = signature
                try:
                    self._texts = load(self._path, self._language)
                except TextsError as exc:
                    log.error("texts file not reloaded, the texts in use stay: %s", exc)
                else:
                    log.info("texts file %s reloaded", self._path)
        return self._texts
