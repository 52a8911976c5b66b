"""`voms promotion …` and `voms report rewards` as an operator runs them (real processes)."""

import csv
import io
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

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
    "balance_types": [
        {
            "code": "CASH",
            "name": "Cash",
            "unit": "cent",
            "currency": "KES",
            "service_provider": "ACME",
        }
    ],
    "product_types": [{"code": "GOLD", "name": "Gold", "service_provider": "ACME"}],
    "voucher_types": [
        {
            "code": "TOPUP10",
            "name": "Top-up 10",
            "service_provider": "ACME",
            "pin_length": 14,
            "scenarios": [
                {"number": 1, "name": "10", "credits": [{"balance_type": "CASH", "amount": 1000}]}
            ],
        }
    ],
}
PLAN = {
    "code": "GOLD10",
    "name": "Gold customers receive an additional 10 %",
    "service_provider": "ACME",
    "starts_at": "2026-01-01T00:00:00+00:00",
    "window": {"kind": "calendar_month"},
    "counter": "count",
    "eligible": {"product_types": ["GOLD"]},
    "target": 1,
    "repeat": True,
    "reward": {"percent_of_value": 10},
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


def test_an_operator_runs_a_plan_and_care_reads_the_counters(tmp_path: Path) -> None:
    (tmp_path / "catalog.json").write_text(json.dumps(CATALOG))
    (tmp_path / "plan.json").write_text(json.dumps(PLAN))
    for step in (("keys", "init"), ("db", "upgrade"), ("catalog", "import", "catalog.json")):
        assert _voms(*step, cwd=tmp_path).returncode == 0
    created = _voms("promotion", "create", "plan.json", cwd=tmp_path)
    assert (created.returncode, created.stdout.strip()) == (0, "created promotion GOLD10")
    again = _voms("promotion", "create", "plan.json", cwd=tmp_path)
    assert again.stdout.strip() == "already there: promotion GOLD10"
    (tmp_path / "other.json").write_text(json.dumps({**PLAN, "target": 2}))
    other = _voms("promotion", "create", "other.json", cwd=tmp_path)
    assert other.returncode == 1
    assert "target" in other.stderr
    assert [p["code"] for p in _json("promotion", "list", cwd=tmp_path)["items"]] == ["GOLD10"]

    batch = _json("batch", "generate", "--type", "TOPUP10", "--count", "1", cwd=tmp_path)
    assert _voms("batch", "activate", str(batch["batch_id"]), cwd=tmp_path).returncode == 0
    # A redemption (no CLI redeems: the service in this process, on the same files).
    rt = build_runtime(Settings(database_url=f"sqlite:///{tmp_path / 'voms.db'}"))
    wallet.create_subscriber(
        rt,
        CONSOLE,
        wallet.SubscriberIn(msisdn=MSISDN, service_provider="ACME", product_type="GOLD"),
    )
    with rt.engine.connect() as conn:
        blob, key = conn.execute(
            select(t.vouchers.c.pin_ciphertext, t.vouchers.c.encryption_key_id)
        ).one()
    done = redemption.redeem(
        rt,
        CONSOLE,
        redemption.RedemptionRequest(msisdn=MSISDN, pin=rt.keyring.decrypt(key, blob)),
    )
    rt.engine.dispose()
    assert done["rewards"][0]["credits"][0]["amount"] == 100

    (counter,) = _json("promotion", "counters", MSISDN, cwd=tmp_path)["items"]
    assert (counter["promotion"], counter["value"], counter["rewards"]) == ("GOLD10", 1, 1)
    report = _voms("report", "rewards", "--format", "csv", cwd=tmp_path)
    assert report.returncode == 0, report.stderr
    rows = list(csv.reader(io.StringIO(report.stdout)))
    assert rows[0] == ["period", "service_provider", "promotion", "count", "value", "currency"]
    assert rows[1][1:] == ["ACME", "GOLD10", "1", "100", "KES"]
    ended = _json("promotion", "end", "GOLD10", cwd=tmp_path)
    assert ended["ends_at"] is not None
    assert _voms("verify", cwd=tmp_path).returncode == 0
