"""`voms report …` and `voms feed` as an operator runs them (real processes)."""

import csv
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq

VOMS = str(Path(sys.executable).with_name("voms"))


def _voms(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("VOMS_")}
    return subprocess.run(
        [VOMS, *args], cwd=cwd, env=clean, capture_output=True, text=True, timeout=120
    )


def test_an_operator_prints_and_writes_reports_and_the_feed(tmp_path: Path) -> None:
    assert _voms("keys", "init", cwd=tmp_path).returncode == 0
    assert _voms("db", "upgrade", cwd=tmp_path).returncode == 0

    printed = _voms("report", "liability", "--format", "csv", cwd=tmp_path)
    assert printed.returncode == 0, printed.stderr
    assert next(csv.reader(io.StringIO(printed.stdout))) == [
        "service_provider",
        "currency",
        "count",
        "value",
    ]
    answer = _voms("report", "redemptions", "--since", "2026-01-01T00:00:00+00:00", cwd=tmp_path)
    assert answer.returncode == 0, answer.stderr
    body = json.loads(answer.stdout)
    assert (body["report"], body["since"], body["rows"]) == (
        "redemptions",
        "2026-01-01T00:00:00+00:00",
        [],
    )

    pdf = tmp_path / "summary.pdf"
    written = _voms(
        "report",
        "summary",
        "--month",
        "2026-11",
        "--format",
        "pdf",
        "--output",
        str(pdf),
        cwd=tmp_path,
    )
    assert written.returncode == 0, written.stderr
    assert pdf.read_bytes().startswith(b"%PDF-")

    binary = _voms("report", "inventory", "--format", "xlsx", cwd=tmp_path)
    assert binary.returncode == 1
    assert "give --output FILE" in binary.stderr
    for wrong in (
        ["nonsense"],
        ["failures", "--since", "yesterday"],
        ["failures", "--format", "doc"],
    ):
        refused = _voms("report", *wrong, cwd=tmp_path)
        assert refused.returncode == 1
        assert refused.stderr.startswith("error: ")
        assert "Traceback" not in refused.stderr

    fed = _voms("feed", "--day", "2026-11-30", "--directory", str(tmp_path / "feeds"), cwd=tmp_path)
    assert fed.returncode == 0, fed.stderr
    manifest = json.loads(fed.stdout)
    assert manifest["rows"] == 0
    folder = Path(manifest["directory"])
    assert pq.read_table(folder / "transactions-2026-11-30.parquet").num_rows == 0
    no_dir = _voms("feed", "--day", "2026-11-30", cwd=tmp_path)
    assert no_dir.returncode == 1
    assert "VOMS_EXPORT_DIR" in no_dir.stderr
