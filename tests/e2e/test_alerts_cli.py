"""`voms alerts set|show|list` and the alert jobs run by `voms housekeeping run`, as processes."""

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.test_care_cli import CATALOG

VOMS = str(Path(sys.executable).with_name("voms"))


def _voms(*args: str, cwd: Path, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("VOMS_")}
    return subprocess.run(
        [VOMS, *args], cwd=cwd, env=clean, capture_output=True, text=True, timeout=120, input=stdin
    )


def _json(*args: str, cwd: Path, stdin: str | None = None) -> Any:
    done = _voms(*args, cwd=cwd, stdin=stdin)
    assert done.returncode == 0, (args, done.stderr)
    return json.loads(done.stdout)


@pytest.fixture
def home(tmp_path: Path) -> Path:
    (tmp_path / "catalog.json").write_text(json.dumps(CATALOG))
    for step in (("keys", "init"), ("db", "upgrade"), ("catalog", "import", "catalog.json")):
        assert _voms(*step, cwd=tmp_path).returncode == 0
    return tmp_path


def test_alert_settings_from_the_command_line(home: Path) -> None:
    body = '{"low_balance": {"CASH": 1000}, "quiet_hours": {"from": "22:00", "until": "07:00"}}'
    changed = _json("alerts", "set", "ACME", body, cwd=home)
    assert changed["low_balance"] == {"CASH": 1000}
    assert changed["quiet_hours"] == {"from": "22:00", "until": "07:00"}
    from_stdin = _json(
        "alerts", "set", "ACME", "-", cwd=home, stdin='{"voucher_stock": {"TOPUP10": 5}}'
    )
    assert from_stdin["voucher_stock"] == {"TOPUP10": 5}
    assert _json("alerts", "show", "ACME", cwd=home) == from_stdin

    bad = _voms("alerts", "set", "ACME", '{"low_balance": {"NOPE": 1}}', cwd=home)
    assert bad.returncode == 1
    assert "unknown balance types of this service provider: NOPE" in bad.stderr
    assert "Traceback" not in bad.stderr
    assert _voms("alerts", "set", "ACME", "{", cwd=home).returncode == 1

    # No voucher in stock: the detection job records the alert once (no SMTP: not sent).
    for _ in range(2):
        ran = _voms(
            "housekeeping", "run", "--job", "alert_detection", "--job", "alert_delivery", cwd=home
        )
        assert ran.returncode == 0, ran.stderr
    listed = _json("alerts", "list", cwd=home)
    assert [(a["kind"], a["state"], a["amount"]) for a in listed["items"]] == [
        ("voucher_stock", "skipped", 0)
    ]
    assert "VOMS_SMTP_HOST" in listed["items"][0]["error"]
