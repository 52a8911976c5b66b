"""`voms blacklist …`, `voms transaction reverse` and the range commands, run as processes."""

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from voms.config import Settings
from voms.db import tables as t
from voms.runtime import build_runtime
from voms.services import redemption, wallet
from voms.services.auth import CONSOLE

VOMS = str(Path(sys.executable).with_name("voms"))
MSISDN = "254700000001"
CATALOG = {
    "service_providers": [{"code": "ACME", "name": "Acme Mobile"}],
    "balance_types": [{"code": "CASH", "name": "Cash", "unit": "cent", "service_provider": "ACME"}],
    "product_types": [{"code": "GOLD", "name": "Gold", "service_provider": "ACME"}],
    "voucher_types": [
        {
            "code": "TOPUP10",
            "name": "Top-up 10",
            "service_provider": "ACME",
            "pin_length": 14,
            "scenarios": [
                {
                    "number": 1,
                    "name": "10",
                    "default": True,
                    "credits": [{"balance_type": "CASH", "amount": 1000}],
                }
            ],
        }
    ],
}


def _voms(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("VOMS_")}
    return subprocess.run(
        [VOMS, *args], cwd=cwd, env=clean, capture_output=True, text=True, timeout=120
    )


def _json(*args: str, cwd: Path) -> Any:
    done = _voms(*args, cwd=cwd)
    assert done.returncode == 0, (args, done.stderr)
    return json.loads(done.stdout)


@pytest.fixture
def home(tmp_path: Path) -> Path:
    (tmp_path / "catalog.json").write_text(json.dumps(CATALOG))
    for step in (("keys", "init"), ("db", "upgrade"), ("catalog", "import", "catalog.json")):
        assert _voms(*step, cwd=tmp_path).returncode == 0
    return tmp_path


def test_care_commands_as_an_operator_runs_them(home: Path) -> None:
    batch = _json("batch", "generate", "--type", "TOPUP10", "--count", "20", cwd=home)
    first = batch["serial_first"]
    last = str(int(first) + 9)
    activated = _json("voucher", "activate", first, last, "--reason", "sold", cwd=home)
    assert (activated["affected"], activated["batches"][0]["count"]) == (10, 10)
    amended = _json(
        "voucher", "amend", first, "--expires-at", "2031-01-01T00:00:00+00:00", cwd=home
    )
    assert amended["affected"] == 1
    missing = _voms("voucher", "amend", first, cwd=home)
    assert missing.returncode != 0
    assert "--expires-at" in missing.stderr

    blocked = _json("blacklist", "add", MSISDN, "--reason", "fraud case 9", cwd=home)
    assert (blocked["reason"], blocked["until"]) == ("manual", None)
    listed = _json("blacklist", "list", cwd=home)
    assert [i["msisdn"] for i in listed["items"]] == [MSISDN]
    assert _json("blacklist", "release", MSISDN, cwd=home)["was_blocked"] is True
    again = _voms("blacklist", "release", MSISDN, cwd=home)
    assert again.returncode == 1
    assert "not on the blacklist" in again.stderr

    # A redemption to reverse (no CLI redeems: the service in this process, same files).
    rt = build_runtime(Settings(database_url=f"sqlite:///{home / 'voms.db'}"))
    wallet.create_subscriber(
        rt,
        CONSOLE,
        wallet.SubscriberIn(msisdn=MSISDN, service_provider="ACME", product_type="GOLD"),
    )
    with rt.engine.connect() as conn:
        blob, key = conn.execute(
            select(t.vouchers.c.pin_ciphertext, t.vouchers.c.encryption_key_id).where(
                t.vouchers.c.serial == int(first) + 1
            )
        ).one()
    pin = rt.keyring.decrypt(key, blob)
    done = redemption.redeem(rt, CONSOLE, redemption.RedemptionRequest(msisdn=MSISDN, pin=pin))
    rt.engine.dispose()
    reversed_ = _json(
        "transaction",
        "reverse",
        done["transaction_id"],
        "--reason",
        "wrong number",
        "--reactivate-voucher",
        cwd=home,
    )
    assert reversed_["credits"][0]["amount"] == -1000
    assert _json("voucher", "show", str(int(first) + 1), cwd=home)["state"] == "active"
    assert _voms("verify", cwd=home).returncode == 0
    attempts = _json("voucher", "attempts", first, cwd=home)
    assert attempts == {"items": [], "next_cursor": None}
