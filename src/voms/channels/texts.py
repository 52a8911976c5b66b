"""What subscribers read and hear: one text per result code, menu step and IVR prompt.

English defaults live here; each other language ships as ``locales/<code>.json`` (Swahili
now). An operator overrides any text, per service provider and per language, in a JSON
file named by ``VOMS_TEXTS_FILE`` (docs/channels.md)::

    {"default": {"language": "en", "texts": {"sw": {"result.2009": "Vocha imetumika."}}},
     "service_providers": {"ACME": {"language": "sw",
                                    "texts": {"en": {"balance_type.SMS": "messages"}}}}}

The language is the subscriber's choice, else their provider's ``language``, else the
default profile's, else ``VOMS_CHANNEL_LANGUAGE``. A text is looked up in the provider's
overrides, the default profile's, then the shipped locale, in that language first and
then in English. The file is checked when the app starts: unknown keys, placeholders the
default does not offer, and texts that cannot fit a USSD reply are refused; texts a
language lacks are reported (English is said instead). A changed file is read again
without a restart (:class:`TextsFile`, checked at most once a second); a broken new
version is refused the same way, logged, and the texts in use stay. No text ever
carries a PIN: none of them has a placeholder for one.
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
from functools import cache
from pathlib import Path
from typing import Any

from voms.domain.money import minor_unit, split
from voms.domain.results import Result

LOCALES = Path(__file__).with_name("locales")
ENGLISH = "en"
# A USSD reply holds 182 characters, "CON " or "END " included; an SMS text must fit
# one USSD reply too, as both channels share result texts.
MAX_SCREEN_CHARS = 182 - len("END ")

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
    Result.SUBSCRIBER_NOT_FOUND: "This number has no account.",
    Result.SUBSCRIBER_NOT_ACTIVE: "This account is not active. Please call customer care.",
    Result.SUBSCRIBER_BLACKLISTED: "Too many wrong PINs. Please try again later.",
    Result.BALANCE_LIMIT_EXCEEDED: "Recharge refused: the balance limit would be exceeded.",
    Result.VOUCHER_TYPE_NOT_FOUND: "This voucher cannot be used. Please call customer care.",
    Result.REQUEST_ID_REUSED: "Sorry, recharges are unavailable. Please try again later.",
    Result.TOO_MANY_REQUESTS: "Too many attempts. Please wait a minute and try again.",
    Result.RECHARGE_LIMIT_REACHED: "Recharge limit reached for this number. Try again later.",
    Result.SUBSCRIBER_FROZEN: "This account is frozen. Please call customer care.",
    Result.CHARGING_UNAVAILABLE: "Recharge not confirmed yet. Please check your balance later.",
}

DEFAULTS: dict[str, str] = {
    **{f"result.{result.code}": text for result, text in RESULT_TEXTS.items()},
    # the language's own name, in lists of languages to choose from
    "language.name": "English",
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
    "ussd.menu": "1 Recharge my number\n2 Recharge another number\n3 My balance\n4 Language",
    "ussd.enter_pin": "Enter the voucher PIN:",
    "ussd.enter_pin_again": "{problem}\nEnter the PIN again ({left} left):",
    "ussd.enter_number": "Enter the number to recharge:",
    "ussd.invalid_number": "Invalid number. Enter the number to recharge:",
    "ussd.unknown_number": "{msisdn} has no account. Enter the number to recharge:",
    "ussd.confirm_number": "Recharge {msisdn}?\n1 Yes\n2 No",
    "ussd.more": "0 More",
    "ussd.invalid_choice": "Invalid choice.",
    "ussd.cancelled": "Cancelled. No voucher was used.",
    "ussd.expired": "Your session has expired. Please dial again.",
    "ussd.too_long": "Your input is too long. Please dial again.",
    "ussd.choose_language": "Choose your language:",
    "ussd.language_set": "Messages will be in English.",
    # SMS replies ({recharge}, {balance}, {language} are the configured keywords)
    "sms.help": (
        "To recharge send {recharge} PIN. Another number: {recharge} PIN NUMBER. "
        "Balance: {balance}. Language: {language} {languages}."
    ),
    "sms.choose_scenario": "Offers: {choices}. Send {command} and the offer number.",
    "sms.language_set": "Messages will be in English.",
    # SMS to a number recharged by someone else, and the confirmation to the recharger
    "notice.recharged": "Your number was recharged by {msisdn}: {credits}.",
    "notice.confirmation": "Recharge of {msisdn} confirmed: {credits}. Serial {serial}.",
    # alerts by SMS (docs/alerts.md)
    "alert.low_balance": "Your {balance_type} balance is low: {balance} {balance_type}.",
    "alert.balance_expiry": (
        "Your {balance} {balance_type} expire on {date}. Recharge to keep them."
    ),
    "alert.account_expiry": "Your account expires on {date}. Recharge to keep it.",
    "alert.reward": "Bonus from {promotion}: {credits}.",
    # the mobile web page
    "web.title": "Recharge",
    "web.msisdn": "Your phone number",
    "web.recipient": "Number to recharge (if another)",
    "web.pin": "Voucher PIN",
    "web.submit": "Recharge",
    "web.choose_scenario": "Choose an offer and enter the PIN again:",
    "web.again": "Recharge again",
    "web.retry_after": "Please try again in {seconds} seconds.",
    # IVR: what Asterisk plays, as sound files (Asterisk picks the language's directory)
    # and {placeholders}; a number is said with SAY NUMBER in the call's language.
    "ivr.menu": "voms/menu",
    "ivr.enter_number": "voms/enter-number",
    "ivr.you_entered": "voms/you-entered",
    "ivr.confirm_number": "voms/confirm-number",
    "ivr.enter_pin": "voms/enter-pin",
    "ivr.invalid_pin": "voms/invalid-pin",
    "ivr.invalid_choice": "voms/invalid-choice",
    "ivr.choose_offer": "voms/choose-offer",
    "ivr.offer": "voms/for {credits} voms/press {number}",
    "ivr.success": "voms/recharge-successful",
    "ivr.credit": "{amount} voms/added voms/your-new-balance-is {balance}",
    "ivr.and": "voms/and",
    "ivr.amount": "{major} voms/unit-{unit}",
    "ivr.amount_minor": "{major} voms/unit-{unit} voms/and {minor} voms/minor-{unit}",
    "ivr.balance": "voms/your-balance-is {balances}",
    "ivr.balance.entry": "{amount}",
    "ivr.balance.empty": "voms/no-balance",
    "ivr.balance.unknown": "voms/no-account",
    "ivr.failed": "voms/recharge-failed",
    "ivr.goodbye": "voms/goodbye",
}

# Texts never shown on a USSD screen or in an SMS (the page and the IVR's sound files).
_NOT_ON_A_SCREEN = ("web.", "ivr.")
_BALANCE_TYPE_KEY = re.compile(r"^balance_type\.[A-Za-z0-9_.-]{1,32}$")
_LANGUAGE = re.compile(r"^[A-Za-z]{2,8}([-_][A-Za-z0-9]{1,8})*$")
_SOUND = re.compile(r"^[A-Za-z0-9_./{}-]{1,200}$")
_FORMATTER = string.Formatter()


class TextsError(ValueError):
    """The texts file is unreadable or names what it may not."""


def placeholders(text: str) -> set[str]:
    """The ``{names}`` a text uses."""
    try:
        return {name for _, name, _, _ in _FORMATTER.parse(text) if name is not None}
    except ValueError as exc:
        raise TextsError(f"malformed placeholder in {text!r}: {exc}") from None


def fixed_length(text: str) -> int:
    """The characters of a text without its placeholders: what no value can shorten."""
    return sum(len(literal) for literal, _, _, _ in _FORMATTER.parse(text))


# --- the texts of one installation ---------------------------------------------------------


@dataclass(frozen=True)
class Profile:
    """The overrides of the default profile or of one service provider."""

    texts: Mapping[str, Mapping[str, str]] = field(default_factory=dict)  # language → key → text
    decimals: Mapping[str, int] = field(default_factory=dict)  # balance type → minor digits
    language: str | None = None  # its subscribers' language when they chose none


@dataclass(frozen=True)
class Texts:
    """Every text of an installation; :meth:`messages` binds a provider and language."""

    language: str = ENGLISH
    default: Profile = field(default_factory=Profile)
    service_providers: Mapping[str, Profile] = field(default_factory=dict)
    shipped: Mapping[str, Mapping[str, str]] = field(default_factory=lambda: _shipped())

    def languages(self) -> list[str]:
        """The languages texts exist in, the default first."""
        found = {self.language, ENGLISH, *self.shipped}
        for profile in (self.default, *self.service_providers.values()):
            found.update(profile.texts)
        first = self.default.language or self.language
        return [first, *sorted(found - {first})]

    def language_of(self, service_provider: str | None, chosen: str | None = None) -> str:
        """The language to speak: the subscriber's choice, else their provider's default."""
        if chosen and chosen in self.languages():
            return chosen
        own = self.service_providers.get(service_provider or "")
        return (own and own.language) or self.default.language or self.language

    def messages(
        self,
        service_provider: str | None = None,
        language: str | None = None,
        currencies: Mapping[str, str | None] | None = None,
    ) -> "Messages":
        """The texts for a subscriber of ``service_provider`` who reads ``language``.

        ``currencies`` (balance type code → ISO currency) shows amounts as money.
        """
        own = self.service_providers.get(service_provider or "", Profile())
        speak = language or self.language_of(service_provider)
        chain: list[Mapping[str, str]] = []
        for lang in dict.fromkeys((speak, ENGLISH)):
            chain += [
                own.texts.get(lang, {}),
                self.default.texts.get(lang, {}),
                self.shipped.get(lang, {}),
            ]
        decimals = {**self.default.decimals, **own.decimals}
        return Messages(speak, tuple(chain), decimals, dict(currencies or {}))

    def missing(self) -> dict[str, list[str]]:
        """Per language other than English, the texts it lacks (said in English instead)."""
        gaps: dict[str, list[str]] = {}
        for lang in self.languages():
            if lang == ENGLISH:
                continue
            have = {*self.shipped.get(lang, {}), *self.default.texts.get(lang, {})}
            lacking = sorted(set(DEFAULTS) - have)
            if lacking:
                gaps[lang] = lacking
        return gaps

    def report(self) -> list[str]:
        """One line per language lacking texts, for the log at load."""
        return [
            f"texts: {lang} lacks {len(keys)} text(s), said in English: {', '.join(keys)}"
            for lang, keys in self.missing().items()
        ]


@dataclass(frozen=True)
class Messages:
    """Texts for one provider and language, and the wording of results and amounts."""

    language: str = ENGLISH
    chain: tuple[Mapping[str, str], ...] = ()
    decimals: Mapping[str, int] = field(default_factory=dict)
    currencies: Mapping[str, str | None] = field(default_factory=dict)

    def template(self, key: str) -> str:
        """The text of ``key`` as written, placeholders unfilled."""
        found = next((found[key] for found in self.chain if key in found), None)
        if found is None:
            return DEFAULTS.get(key, key.removeprefix("balance_type."))
        return found

    def text(self, key: str, **values: object) -> str:
        """The text of ``key`` with its placeholders filled in."""
        return self.template(key).format_map(_Lenient(values))

    def balance_type(self, code: str) -> str:
        """What subscribers call a balance type: its name in the texts, its currency, its code."""
        key = f"balance_type.{code}"
        if any(key in found for found in self.chain):
            return self.text(key)
        return self.currencies.get(code) or code

    def digits(self, balance_type: str) -> int:
        """Decimals of a balance type: the texts file's, else its currency's minor unit."""
        if balance_type in self.decimals:
            return self.decimals[balance_type]
        return minor_unit(self.currencies.get(balance_type))

    def amount(self, balance_type: str, minor_units: int) -> str:
        """An amount in the balance type's minor units, shown as money: 1000 KES → 10.00."""
        return split(minor_units, self.digits(balance_type)).shown()

    def major_units(self, balance_type: str, minor_units: int) -> int:
        """Whole units (what IVR says): 1550 cents of a 2-decimal type are 15."""
        return split(minor_units, self.digits(balance_type)).major

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

    # --- what the IVR says -------------------------------------------------------------

    def sounds(self, key: str, **values: "Sayable | list[Sayable] | str") -> list["Sayable"]:
        """An IVR prompt as sound files and numbers, its placeholders said in order.

        A placeholder that is a whole word is a number or a list of sounds; inside a word
        (``voms/unit-{unit}``) it names a sound file.
        """
        said: list[Sayable] = []
        for word in self.template(key).split():
            name = word[1:-1] if word.startswith("{") and word.endswith("}") else None
            value = values.get(name) if name is not None else None
            if isinstance(value, list):
                said += value
            elif isinstance(value, Sayable):
                said.append(value)
            else:
                said.append(Sayable(word.format_map(_Lenient(values))))
        return said

    def said_amount(self, balance_type: str, minor_units: int) -> list["Sayable"]:
        """An amount in words: "ten shillings", "ten shillings and fifty cents"."""
        amount = split(minor_units, self.digits(balance_type))
        unit = self.currencies.get(balance_type) or balance_type
        key = "ivr.amount_minor" if amount.minor else "ivr.amount"
        return self.sounds(
            key, major=Sayable.number(amount.major), minor=Sayable.number(amount.minor), unit=unit
        )


@dataclass(frozen=True)
class Sayable:
    """One thing the IVR says: a sound file, or a number (``SAY NUMBER``)."""

    sound: str = ""
    spoken_number: int | None = None

    @classmethod
    def number(cls, value: int) -> "Sayable":
        return cls(spoken_number=value)


class _Lenient(dict[str, object]):
    """Leaves an unknown placeholder as it is instead of failing a reply."""

    def __missing__(self, key: str) -> str:
        return "{" + key + "}"


# --- the texts file --------------------------------------------------------------------


def _check_text(path: str, key: str, text: object) -> str:
    if not isinstance(text, str):
        raise TextsError(f"{path}: expected a string")
    if key in DEFAULTS:
        extra = placeholders(text) - placeholders(DEFAULTS[key])
        if extra:
            offered = ", ".join(sorted(placeholders(DEFAULTS[key]))) or "none"
            raise TextsError(f"{path}: unknown placeholder(s) {sorted(extra)}; offered: {offered}")
        if key.startswith("ivr."):
            bad = [word for word in text.split() if not _SOUND.match(word)]
            if bad or not text.split():
                raise TextsError(f"{path}: {bad[0] if bad else text!r} is not a sound file name")
        elif not key.startswith(_NOT_ON_A_SCREEN) and fixed_length(text) > MAX_SCREEN_CHARS:
            raise TextsError(
                f"{path}: {fixed_length(text)} characters without its values; a USSD reply "
                f"holds {MAX_SCREEN_CHARS} after CON/END"
            )
    elif _BALANCE_TYPE_KEY.match(key):
        if placeholders(text):
            raise TextsError(f"{path}: a balance type name has no placeholders")
    else:
        raise TextsError(f"{path}: unknown text key")
    return text


def _check_texts(where: str, texts: object) -> dict[str, dict[str, str]]:
    if not isinstance(texts, dict):
        raise TextsError(f"{where}.texts: expected an object of languages")
    checked: dict[str, dict[str, str]] = {}
    for language, entries in texts.items():
        if not _LANGUAGE.match(language):
            raise TextsError(f"{where}.texts: {language!r} is not a language code")
        if not isinstance(entries, dict):
            raise TextsError(f"{where}.texts.{language}: expected an object of texts")
        checked[language] = {
            key: _check_text(f"{where}.texts.{language}.{key}", key, text)
            for key, text in entries.items()
        }
    return checked


def _profile(where: str, raw: object) -> Profile:
    if not isinstance(raw, dict):
        raise TextsError(f"{where}: expected an object")
    unknown = set(raw) - {"texts", "decimals", "language"}
    if unknown:
        raise TextsError(f"{where}: unknown key(s) {sorted(unknown)}")
    decimals = raw.get("decimals", {})
    if not isinstance(decimals, dict) or not all(
        isinstance(v, int) and not isinstance(v, bool) and 0 <= v <= 6 for v in decimals.values()
    ):
        raise TextsError(f"{where}.decimals: expected balance type codes with 0 to 6")
    language = raw.get("language")
    if language is not None and not (isinstance(language, str) and _LANGUAGE.match(language)):
        raise TextsError(f"{where}.language: {language!r} is not a language code")
    return Profile(
        texts=_check_texts(where, raw.get("texts", {})),
        decimals=dict(decimals),
        language=language,
    )


def _shipped() -> dict[str, dict[str, str]]:
    return shipped_locales()


@cache
def shipped_locales() -> dict[str, dict[str, str]]:
    """The languages shipped with OpenVoMS (``locales/*.json``), checked as a texts file's."""
    found: dict[str, dict[str, str]] = {}
    for path in sorted(LOCALES.glob("*.json")):
        content = json.loads(path.read_text(encoding="utf-8"))
        found.update(_check_texts(f"{path.name}", content))
    return found


def parse(content: object, language: str = ENGLISH) -> Texts:
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


def load(path: Path | None, language: str = ENGLISH) -> Texts:
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
        self._texts = self._load()
        self._checked_at = clock()

    def _load(self) -> Texts:
        texts = load(self._path, self._language)
        for gap in texts.report():
            log.warning("%s", gap)
        return texts

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
                    self._texts = self._load()
                except TextsError as exc:
                    log.error("texts file not reloaded, the texts in use stay: %s", exc)
                else:
                    log.info("texts file %s reloaded", self._path)
        return self._texts
