"""`voms reseller …` as an operator runs it (real processes, SQLite)."""

import csv
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

VOMS = str(Path(sys.executable).with_name("voms"))
CATALOG = Path(__file__).resolve().parents[2] / "examples" / "catalog.json"


def _voms(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("VOMS_")}
    return subprocess.run(
        [VOMS, *args], cwd=cwd, env=clean, capture_output=True, text=True, check=False
    )


def _ok(*args: str, cwd: Path) -> str:
    done = _voms(*args, cwd=cwd)
    assert done.returncode == 0, done.stderr
    return done.stdout


@pytest.fixture
def home(tmp_path: Path) -> Path:
    for command in (("keys", "init"), ("db", "upgrade"), ("catalog", "import", str(CATALOG))):
        _ok(*command, cwd=tmp_path)
    return tmp_path


def test_an_operator_sets_up_a_reseller_tree_and_reads_its_statement(home: Path) -> None:
    batch = json.loads(_ok("batch", "generate", "--type", "TOPUP10", "--count", "50", cwd=home))
    first, last = batch["serial_first"], batch["serial_last"]
    dist = json.loads(
        _ok(
            *("reseller", "create", "--code", "DIST", "--name", "Dist", "--service-provider"),
            *("ACME", "--credit-limit", "100000", "--commission-percent", "7.5"),
            cwd=home,
        )
    )
    assert (dist["currency"], dist["commission_percent"]) == ("KES", 7.5)
    _ok(
        *("reseller", "create", "--code", "SHOP", "--name", "Shop", "--service-provider"),
        *("ACME", "--credit-limit", "1000", "--commission-percent", "5", "--parent", "DIST"),
        cwd=home,
    )
    held = json.loads(
        _ok("reseller", "stock", "DIST", "--serial-from", first, "--serial-to", last, cwd=home)
    )
    assert held["on_hand"] == 50
    key = _ok(
        "apikey",
        "create",
        "--name",
        "shop-pos",
        "--role",
        "distributor",
        "--reseller",
        "SHOP",
        cwd=home,
    )
    assert key.strip().splitlines()[-1].startswith("voms_")
    _ok("reseller", "payment", "DIST", "--amount", "2500", "--reference", "bank 1", cwd=home)
    listed = json.loads(_ok("reseller", "list", cwd=home))
    assert [(r["code"], r["balance_due"]) for r in listed] == [("DIST", -2500), ("SHOP", 0)]

    statement = _ok("reseller", "statement", "DIST", "--format", "csv", cwd=home)
    rows = list(csv.reader(io.StringIO(statement)))
    assert rows[0][:3] == ["at", "kind", "amount"]
    assert ["payments", "2500"] in rows
    assert ["closing_balance", "-2500"] in rows
    _ok("reseller", "statement", "DIST", "--format", "pdf", "--output", "s.pdf", cwd=home)
    assert (home / "s.pdf").read_bytes().startswith(b"%PDF")
    through = json.loads(_ok("reseller", "sell-through", "DIST", cwd=home))
    assert through["totals"] == {"on_hand": 50, "sold": 0, "redeemed": 0}

    refused = _voms(
        "reseller", "stock", "SHOP", "--serial-from", last, "--serial-to", first, cwd=home
    )
    assert refused.returncode == 1
    assert refused.stderr.strip() == "error: serial_from must not be greater than serial_to"
    unknown = _voms("reseller", "show", "NOPE", cwd=home)
    assert unknown.stderr.strip() == "error: reseller 'NOPE' not found"
