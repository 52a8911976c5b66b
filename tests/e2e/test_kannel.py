"""SMS end to end through the real Kannel from Debian, configured as the README says.

fakesmsc (Kannel's fake SMS centre) plays the subscriber's handset network: a message it
sends goes to bearerbox, to smsbox, to `voms serve`'s get-url; the reply comes back the
same way, and a notice to a recharged number leaves through smsbox's sendsms interface.
"""

import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests import factories
from tests.channel_support import MSISDN, OTHER, Shop, open_shop
from tests.e2e.processes import free_port

BEARERBOX = Path("/usr/sbin/bearerbox")
SMSBOX = Path("/usr/sbin/smsbox")
FAKESMSC = Path("/usr/lib/kannel/test/fakesmsc")
README = Path(__file__).resolve().parents[2] / "README.md"
VOMS = str(Path(sys.executable).with_name("voms"))
SECRET = "e2e-sms-secret"
USSD_SECRET = "e2e-ussd-secret"
SENDSMS_PASSWORD = "e2e-sendsms-password"
SHORT_CODE = "100"

pytestmark = pytest.mark.skipif(
    not all(p.exists() for p in (BEARERBOX, SMSBOX, FAKESMSC)),
    reason="Kannel is not installed (Debian packages kannel and kannel-extras; "
    "./scripts/bootstrap installs them when apt-get can run as root)",
)


def readme_kannel_conf() -> str:
    """The kannel.conf of the README, as an operator would copy it."""
    text = README.read_text(encoding="utf-8")
    found = re.search(r"```\n(# kannel\.conf for OpenVoMS\n.*?)```", text, re.DOTALL)
    assert found is not None, "README lost its Kannel configuration"
    return found.group(1)


@dataclass
class Ports:
    voms: int
    admin: int
    smsbox: int
    sendsms: int
    smsc: int


def kannel_conf(folder: Path, ports: Ports) -> str:
    conf = readme_kannel_conf()
    replacements = {
        "admin-port = 13000": f"admin-port = {ports.admin}",
        "smsbox-port = 13001": f"smsbox-port = {ports.smsbox}",
        "bearerbox-port = 13001": f"bearerbox-port = {ports.smsbox}",
        "sendsms-port = 13013": f"sendsms-port = {ports.sendsms}",
        "http://127.0.0.1:8000/": f"http://127.0.0.1:{ports.voms}/",
        "CHANGE-SMS-SECRET": SECRET,
        "CHANGE-SENDSMS-PASSWORD": SENDSMS_PASSWORD,
        "/var/log/kannel/": f"{folder}/",
    }
    for old, new in replacements.items():
        assert old in conf, f"README's kannel.conf has no {old!r}"
        conf = conf.replace(old, new)
    return (
        conf
        + f"""
group = smsc
smsc = fake
smsc-id = fake
port = {ports.smsc}
connect-allow-ip = 127.0.0.1
"""
    )


class Process:
    def __init__(self, name: str, args: list[str], log: Path, **popen: Any) -> None:
        self.name = name
        self.log = log
        self.handle = log.open("wb")
        self.process = subprocess.Popen(
            args,
            stdout=self.handle,
            stderr=subprocess.STDOUT,
            **popen,
        )

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=5)
        self.handle.close()


class FakeSmsc:
    """fakesmsc in interactive mode: a line on stdin is an MO message; replies on stdout."""

    def __init__(self, port: int, log: Path) -> None:
        self.log = log.open("w")
        self.process = subprocess.Popen(
            [str(FAKESMSC), "-H", "127.0.0.1", "-r", str(port)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        self.received: queue.Queue[str] = queue.Queue()
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.log.write(line)
            self.log.flush()
            found = re.search(r"Got message \d+: <(.*)>\s*$", line)
            if found:
                self.received.put(found.group(1))

    def send(self, sender: str, receiver: str, text: str) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write(f"{sender} {receiver} text {text}\n")
        self.process.stdin.flush()

    def expect(self, count: int, timeout: float = 60) -> list[str]:
        """The next ``count`` messages Kannel delivers to the fake SMS centre."""
        got = []
        deadline = time.monotonic() + timeout
        while len(got) < count:
            try:
                got.append(self.received.get(timeout=max(0.1, deadline - time.monotonic())))
            except queue.Empty:
                pytest.fail(f"Kannel delivered {got} and then nothing within {timeout} s")
        return got

    def stop(self) -> None:
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=5)
        self.reader.join(timeout=5)
        for pipe in (self.process.stdin, self.process.stdout):
            if pipe is not None:
                pipe.close()
        self.log.close()


@dataclass
class Gateway:
    folder: Path
    shop: Shop
    smsc: FakeSmsc
    voms_log: Path
    database_url: str
    voms: Process
    voms_url: str


def _wait_for_http(url: str, process: Process) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if process.process.poll() is not None:
            raise AssertionError(f"{process.name} exited: {process.log.read_text()}")
        try:
            httpx.get(url, timeout=1)
            return
        except httpx.TransportError:
            time.sleep(0.1)
    raise AssertionError(f"{process.name} did not answer at {url}")


@pytest.fixture
def gateway(tmp_path: Path, database_url: str) -> Iterator[Gateway]:
    keys = tmp_path / "voms-keys.json"
    rt = factories.new_installation(database_url, keys)
    shop = open_shop(rt)
    rt.engine.dispose()

    ports = Ports(*(free_port() for _ in range(5)))
    env = {k: v for k, v in os.environ.items() if not k.startswith("VOMS_")}
    env.update(
        VOMS_DATABASE_URL=database_url,
        VOMS_KEYS_FILE=str(keys),
        VOMS_LOG_LEVEL="DEBUG",
        VOMS_SCHEDULER_ENABLED="false",
        VOMS_SMS_SECRET=SECRET,
        VOMS_KANNEL_SENDSMS_URL=f"http://127.0.0.1:{ports.sendsms}/cgi-bin/sendsms",
        VOMS_KANNEL_SENDSMS_USERNAME="voms",
        VOMS_KANNEL_SENDSMS_PASSWORD=SENDSMS_PASSWORD,
        VOMS_KANNEL_SENDSMS_FROM=SHORT_CODE,
        VOMS_CONFIRMATION_SMS="true",
        VOMS_USSD_SECRET=USSD_SECRET,
    )
    conf = tmp_path / "kannel.conf"
    conf.write_text(kannel_conf(tmp_path, ports))

    started: list[Process | FakeSmsc] = []
    try:
        voms = Process(
            "voms serve",
            [VOMS, "serve", "--port", str(ports.voms)],
            tmp_path / "voms-serve.log",
            env=env,
            cwd=tmp_path,
        )
        started.append(voms)
        _wait_for_http(f"http://127.0.0.1:{ports.voms}/healthz", voms)
        # -v: each console as quiet as the README's log file of that box
        bearerbox = Process(
            "bearerbox", [str(BEARERBOX), "-v", "2", str(conf)], tmp_path / "bearerbox.out"
        )
        started.append(bearerbox)
        _wait_for_http(f"http://127.0.0.1:{ports.admin}/status", bearerbox)
        smsbox = Process("smsbox", [str(SMSBOX), "-v", "4", str(conf)], tmp_path / "smsbox.out")
        started.append(smsbox)
        _wait_for_http(f"http://127.0.0.1:{ports.sendsms}/", smsbox)
        smsc = FakeSmsc(ports.smsc, tmp_path / "fakesmsc.out")
        started.append(smsc)
        yield Gateway(
            tmp_path,
            shop,
            smsc,
            tmp_path / "voms-serve.log",
            database_url,
            voms,
            f"http://127.0.0.1:{ports.voms}",
        )
    finally:
        for process in reversed(started):
            process.stop()


def _message(sender: str, receiver: str, text: str) -> str:
    """A message as fakesmsc prints it."""
    return f"{sender} {receiver} text {text}"


def test_sms_commands_travel_through_kannel_and_back(gateway: Gateway) -> None:
    smsc, shop = gateway.smsc, gateway.shop
    pin, pin2 = shop.pins[0], shop.pins[1]

    smsc.send(MSISDN, SHORT_CODE, f"RCH {pin}")
    assert smsc.expect(1) == [
        _message(
            SHORT_CODE,
            MSISDN,
            f"Recharge of {MSISDN} successful: +10.00 KES, balance 10.00 KES.",
        )
    ]

    smsc.send(MSISDN, SHORT_CODE, f"rch {pin2} {OTHER}")
    delivered = sorted(smsc.expect(2))
    assert delivered == sorted(
        [
            _message(
                SHORT_CODE,
                MSISDN,
                f"Recharge of {OTHER} successful: +10.00 KES, balance 10.00 KES.",
            ),
            _message(
                SHORT_CODE,
                OTHER,
                f"Your number was recharged by {MSISDN}: +10.00 KES, balance 10.00 KES.",
            ),
        ]
    )

    smsc.send(MSISDN, SHORT_CODE, "BAL")
    assert smsc.expect(1) == [_message(SHORT_CODE, MSISDN, "Your balance: 10.00 KES.")]

    smsc.send(MSISDN, SHORT_CODE, f"RCH {pin}")
    assert smsc.expect(1) == [_message(SHORT_CODE, MSISDN, "This voucher has already been used.")]

    # Neither our log nor Kannel's (configured as the README says) holds a PIN or the
    # secrets, although voms serve logged at DEBUG and its access log saw each get-url.
    voms_log = gateway.voms_log.read_text(errors="replace")
    assert "GET /sms/kannel?secret=***" in voms_log
    kannel_logs = {
        name: (gateway.folder / name).read_text(errors="replace")
        for name in ("bearerbox.log", "smsbox.log", "access.log", "bearerbox.out", "smsbox.out")
    }
    assert "Receive SMS [SMSC:fake]" in kannel_logs["access.log"]
    for name, text in {"voms-serve.log": voms_log, **kannel_logs}.items():
        for secret in (pin, pin2, SECRET):
            assert secret not in text, f"{name} holds {secret!r}"
    assert SENDSMS_PASSWORD not in voms_log


def test_when_openvoms_is_down_kannel_answers_its_configured_reply_and_logs_no_pin(
    gateway: Gateway,
) -> None:
    smsc, shop = gateway.smsc, gateway.shop
    gateway.voms.stop()
    smsc.send(MSISDN, SHORT_CODE, f"RCH {shop.pins[0]}")
    assert smsc.expect(1) == [
        _message(SHORT_CODE, MSISDN, "Sorry, recharges are unavailable. Please try again later.")
    ]
    for name in ("bearerbox.log", "smsbox.log", "access.log", "bearerbox.out", "smsbox.out"):
        logged = (gateway.folder / name).read_text(errors="replace")
        for secret in (shop.pins[0], SECRET):
            assert secret not in logged, f"{name} holds {secret!r}"


def test_a_confirmation_sms_leaves_through_kannel_after_a_ussd_recharge(
    gateway: Gateway,
) -> None:
    smsc, shop = gateway.smsc, gateway.shop
    answer = httpx.post(
        f"{gateway.voms_url}/ussd",
        params={"secret": USSD_SECRET},
        data={
            "sessionId": "e2e-1",
            "serviceCode": "*140#",
            "phoneNumber": MSISDN,
            "text": f"1*{shop.pins[0]}",
        },
        timeout=30,
    )
    assert answer.text == f"END Recharge of {MSISDN} successful: +10.00 KES, balance 10.00 KES."
    serial = shop.serials[0]
    assert smsc.expect(1) == [
        _message(
            SHORT_CODE,
            MSISDN,
            f"Recharge of {MSISDN} confirmed: +10.00 KES, balance 10.00 KES. Serial {serial}.",
        )
    ]
    assert shop.pins[0] not in gateway.voms_log.read_text(errors="replace")
