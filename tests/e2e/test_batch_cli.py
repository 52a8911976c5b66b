"""`voms batch …` and `voms voucher …` as an operator runs them (real processes, SQLite)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

VOMS = str(Path(sys.executable).with_name("voms"))
CATALOG = {
    "service_providers": [{"code": "ACME", "name": "Acme Mobile"}],
    "balance_types": [{"code": "CASH", "name": "Cash", "unit": "cent", "service_provider": "ACME"}],
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


@pytest.fixture
def home(tmp_path: Path) -> Path:
    (tmp_path / "catalog.json").write_text(json.dumps(CATALOG))
    assert _voms("keys", "init", cwd=tmp_path).returncode == 0
    assert _voms("db", "upgrade", cwd=tmp_path).returncode == 0
    assert _voms("catalog", "import", "catalog.json", cwd=tmp_path).returncode == 0
    return tmp_path


def _voms(*args: str, cwd: Path, **env: str) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("VOMS_")}
    return subprocess.run(
        [VOMS, *args],
        cwd=cwd,
        env={**clean, "VOMS_GENERATION_CHUNK_SIZE": "1000", **env},
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_an_operator_generates_lists_and_activates_a_batch(home: Path) -> None:
    made = _voms("batch", "generate", "--type", "TOPUP10", "--count", "5000", cwd=home)
    assert made.returncode == 0, made.stderr
    batch = json.loads(made.stdout)
    assert batch["state"] == "generated"
    assert batch["generated_count"] == 5000
    assert "generating" in made.stderr  # the progress bar, on stderr
    assert "100000000001-100000005000" in made.stderr
    listed = json.loads(_voms("batch", "list", cwd=home).stdout)
    assert [b["batch_id"] for b in listed["items"]] == [batch["batch_id"]]
    active = _voms("batch", "activate", str(batch["batch_id"]), cwd=home)
    assert json.loads(active.stdout)["state"] == "active"
    frozen = _voms(
        "voucher", "freeze", "100000000010", "100000000019", "--reason", "stolen", cwd=home
    )
    assert json.loads(frozen.stdout)["affected"] == 10
    shown = json.loads(_voms("voucher", "show", "100000000012", cwd=home).stdout)
    assert shown["state"] == "frozen"
    assert shown["history"][-1]["reason"] == "stolen"
    assert "pin" not in shown
    again = _voms("batch", "activate", str(batch["batch_id"]), cwd=home)
    assert again.returncode == 1
    assert again.stderr.strip() == "error: cannot activate a batch that is active"


def test_errors_are_one_clear_line(home: Path) -> None:
    cases = [
        (("batch", "generate", "--type", "NOPE", "--count", "5"), "voucher type 'NOPE' not found"),
        (("batch", "generate", "--type", "TOPUP10", "--count", "0"), "count"),
        (
            (
                "batch",
                "generate",
                "--type",
                "TOPUP10",
                "--count",
                "5",
                "--expires-at",
                "2030-01-01",
            ),
            "UTC offset",
        ),
        (("batch", "show", "42"), "batch 42 not found"),
        (("batch", "list", "--state", "bogus"), "unknown batch state"),
        (("voucher", "show", "12ab"), "digits"),
    ]
    for args, message in cases:
        result = _voms(*args, cwd=home)
        assert result.returncode != 0, args
        assert message in result.stderr, (args, result.stderr)
        assert "Traceback" not in result.stderr


def test_four_eyes_applies_to_the_console_operator(home: Path) -> None:
    made = _voms("batch", "generate", "--type", "TOPUP10", "--count", "3", cwd=home)
    batch_id = str(json.loads(made.stdout)["batch_id"])
    refused = _voms("batch", "activate", batch_id, cwd=home, VOMS_REQUIRE_APPROVAL="true")
    assert refused.returncode == 1
    assert "four-eyes" in refused.stderr
