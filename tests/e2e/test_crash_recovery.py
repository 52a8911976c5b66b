"""`kill -9` of a real `voms serve` during a stream of redemptions loses and doubles nothing.

Clients retry what got no answer with the same request id, as API.md asks of them; after
the restart `voms verify` must find every invariant intact, on SQLite and PostgreSQL.
"""

import json
import os
import queue
import signal
import subprocess
import sys
import threading
from pathlib import Path

import httpx
import pytest

from tests import factories
from tests.e2e.processes import start_http_server
from tests.redeemed_once import assert_each_redeemed_once
from voms.config import Settings
from voms.runtime import Runtime

VOMS = str(Path(sys.executable).with_name("voms"))
VOUCHERS = 150
CLIENTS = 8
KILL_AFTER = 40  # successes before the kill
SUBSCRIBERS = [f"25470000{n:04d}" for n in range(4)]


def _env(settings: Settings) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("VOMS_")}
    env["VOMS_DATABASE_URL"] = settings.database_url
    env["VOMS_KEYS_FILE"] = str(settings.keys_file)
    return env


def _serve(settings: Settings, cwd: Path) -> tuple[subprocess.Popen[bytes], str]:
    return start_http_server(
        lambda port: [VOMS, "serve", "--port", str(port)],
        cwd=cwd,
        env=_env(settings),
        log=lambda port: cwd / f"serve-{port}.log",
    )


def _redeem(url: str, key: str, serial: str, pin: str, index: int) -> int | None:
    """The result code, or None when the server gave no answer."""
    try:
        answer = httpx.post(
            f"{url}/api/v1/redemptions",
            headers={"Authorization": f"Bearer {key}"},
            json={
                "msisdn": SUBSCRIBERS[index % len(SUBSCRIBERS)],
                "pin": pin,
                "request_id": f"crash-{serial}",
            },
            timeout=10,
        )
    except httpx.TransportError:
        return None
    return int(answer.json()["result_code"])


def _stream(
    url: str,
    key: str,
    work: "queue.Queue[tuple[int, str, str]]",
    stop_after: int | None,
    outcome: dict[str, int | None],
    killed: threading.Event,
) -> None:
    """Redeem from ``work`` with CLIENTS threads; set ``killed`` after enough successes."""
    lock = threading.Lock()
    successes = [0]

    def client() -> None:
        while True:
            try:
                index, serial, pin = work.get_nowait()
            except queue.Empty:
                return
            code = _redeem(url, key, serial, pin, index)
            with lock:
                outcome[serial] = code
                if code == 0:
                    successes[0] += 1
                    if stop_after is not None and successes[0] == stop_after:
                        killed.set()

    threads = [threading.Thread(target=client) for _ in range(CLIENTS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)


@pytest.mark.slow
def test_kill_9_during_redemptions_then_restart_leaves_every_invariant_intact(
    rt: Runtime, settings: Settings, tmp_path: Path
) -> None:
    factories.standard_catalog(rt)
    for msisdn in SUBSCRIBERS:
        factories.subscriber(rt, msisdn)
    pins = factories.active_batch(rt, count=VOUCHERS)
    key = factories.api_key(rt, "channel")

    process, url = _serve(settings, tmp_path)
    work: queue.Queue[tuple[int, str, str]] = queue.Queue()
    for index, (serial, pin) in enumerate(pins):
        work.put((index, serial, pin))
    outcome: dict[str, int | None] = {}
    killed = threading.Event()

    def killer() -> None:
        killed.wait(timeout=120)
        os.kill(process.pid, signal.SIGKILL)

    murderer = threading.Thread(target=killer)
    murderer.start()
    _stream(url, key, work, KILL_AFTER, outcome, killed)
    murderer.join()
    process.wait(timeout=10)
    assert process.returncode == -signal.SIGKILL
    assert sum(code == 0 for code in outcome.values()) >= KILL_AFTER

    process, url = _serve(settings, tmp_path)
    try:
        # Retries of the unanswered, then whatever was never sent, all with their request ids.
        redo: queue.Queue[tuple[int, str, str]] = queue.Queue()
        for index, (serial, pin) in enumerate(pins):
            if outcome.get(serial) is None:
                redo.put((index, serial, pin))
        _stream(url, key, redo, None, outcome, threading.Event())
    finally:
        process.terminate()
        process.wait(timeout=20)
    assert [serial for serial, code in outcome.items() if code != 0] == []
    assert len(outcome) == VOUCHERS

    checked = subprocess.run(
        [VOMS, "verify"], env=_env(settings), capture_output=True, text=True, timeout=120
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert checked.stdout.startswith("OK")
    swept = subprocess.run(
        [VOMS, "housekeeping", "run", "--job", "reservation_timeouts"],
        env=_env(settings),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert swept.returncode == 0, swept.stderr
    assert json.loads(swept.stdout)["rows_affected"] == 0  # no reservation left behind

    assert_each_redeemed_once(rt.engine, pins, 1000)
