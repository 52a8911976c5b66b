"""`voms agi` as an operator runs it: a real process that Asterisk reaches over TCP."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests import factories
from tests.agi_client import FakeAsterisk
from tests.channel_support import balance, open_shop
from tests.e2e.processes import free_port
from voms.crypto import Keyring, write_keyring

VOMS = str(Path(sys.executable).with_name("voms"))


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("VOMS_")}
    env.update(extra)
    return env


def _interruptible() -> None:
    """In the child: Ctrl-C as a terminal delivers it. A suite started in the background
    by a non-interactive shell passes SIGINT on ignored, and Python then never turns it
    into KeyboardInterrupt: `voms agi` would go on serving."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _listening(port: int, process: subprocess.Popen[str], log: Path) -> None:
    deadline = time.monotonic() + 30
    while "FastAGI listening" not in log.read_text():
        if process.poll() is not None:
            raise AssertionError(f"voms agi exited: {log.read_text()}")
        if time.monotonic() > deadline:
            raise AssertionError(f"voms agi did not listen on {port}: {log.read_text()}")
        time.sleep(0.1)


def test_voms_agi_serves_a_call_and_stops_on_interrupt(tmp_path: Path, database_url: str) -> None:
    keys = tmp_path / "voms-keys.json"
    rt = factories.new_installation(database_url, keys)
    shop = open_shop(rt)

    port = free_port()
    log = tmp_path / "agi.log"
    with log.open("w") as output:
        process = subprocess.Popen(
            [VOMS, "agi", "--host", "127.0.0.1", "--port", str(port)],
            env=_env(VOMS_DATABASE_URL=database_url, VOMS_KEYS_FILE=str(keys)),
            stdout=output,
            stderr=subprocess.STDOUT,
            text=True,
            preexec_fn=_interruptible,
        )
        try:
            _listening(port, process, log)
            asterisk = FakeAsterisk(port, {"voms/menu": ["1"], "voms/enter-pin": [shop.pins[0]]})
            asterisk.call()
            assert asterisk.variables == {"VOMS_RESULT": "0", "VOMS_BALANCE": "10"}
        finally:
            process.send_signal(signal.SIGINT)
            try:
                code = process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()  # not left running into the next tests
                process.wait()
                raise
    assert code == 0
    assert balance(rt) == 1000
    text = log.read_text()
    assert "ivr: call 1764000000.17 ended with result 0" in text
    assert shop.pins[0] not in text
    rt.engine.dispose()


def test_voms_agi_refuses_an_unmigrated_database(tmp_path: Path) -> None:
    keys = tmp_path / "voms-keys.json"
    write_keyring(keys, Keyring.new())
    result = subprocess.run(
        [VOMS, "agi", "--port", str(free_port())],
        env=_env(VOMS_DATABASE_URL=f"sqlite:///{tmp_path}/empty.db", VOMS_KEYS_FILE=str(keys)),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 1
    assert "voms db upgrade" in result.stderr


@pytest.mark.parametrize(
    ("setting", "complaint"),
    [
        ({"VOMS_AGI_ALLOWED_CLIENTS": "asterisk.example"}, "VOMS_AGI_ALLOWED_CLIENTS"),
        ({"VOMS_AGI_PROMPTS": '{"menu": "a b"}'}, "not a sound file name"),
    ],
)
def test_voms_agi_names_a_bad_setting(
    tmp_path: Path, setting: dict[str, str], complaint: str
) -> None:
    keys = tmp_path / "voms-keys.json"
    url = f"sqlite:///{tmp_path}/voms.db"
    factories.new_installation(url, keys).engine.dispose()
    result = subprocess.run(
        [VOMS, "agi", "--port", str(free_port())],
        env=_env(VOMS_DATABASE_URL=url, VOMS_KEYS_FILE=str(keys), **setting),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 1
    assert complaint in result.stderr
