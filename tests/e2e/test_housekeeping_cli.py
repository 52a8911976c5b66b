"""`voms housekeeping …` and `voms keys rotate` as an operator runs them (real processes)."""

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

from voms.services.housekeeping.registry import JOBS

VOMS = str(Path(sys.executable).with_name("voms"))


def _voms(*args: str, cwd: Path, **env: str) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("VOMS_")}
    return subprocess.run(
        [VOMS, *args], cwd=cwd, env={**clean, **env}, capture_output=True, text=True, timeout=120
    )


def test_an_operator_lists_and_runs_jobs_and_rotates_keys(tmp_path: Path) -> None:
    assert _voms("keys", "init", cwd=tmp_path).returncode == 0
    assert _voms("db", "upgrade", cwd=tmp_path).returncode == 0

    listed = _voms("housekeeping", "list", cwd=tmp_path)
    assert listed.returncode == 0, listed.stderr
    assert "voucher_archive" in listed.stdout
    assert "30 2 * * *" in listed.stdout

    ran = _voms("housekeeping", "run", "--job", "blacklist_release", cwd=tmp_path)
    assert ran.returncode == 0, ran.stderr
    assert json.loads(ran.stdout)["outcome"] == "succeeded"
    every = _voms("housekeeping", "run", cwd=tmp_path)
    assert every.returncode == 0, every.stderr
    assert every.stdout.count('"outcome": "succeeded"') == len(JOBS)

    unknown = _voms("housekeeping", "run", "--job", "nope", cwd=tmp_path)
    assert unknown.returncode == 1
    assert "unknown job: nope" in unknown.stderr
    bad = _voms("housekeeping", "list", cwd=tmp_path, VOMS_JOB_SCHEDULES='{"voucher_archive": "x"}')
    assert bad.returncode == 1
    assert "not a 5-field cron expression" in bad.stderr

    rotated = _voms("keys", "rotate", cwd=tmp_path)
    assert rotated.returncode == 0, rotated.stderr
    assert "encryption key 2 added" in rotated.stdout
    assert stat.S_IMODE((tmp_path / "voms-keys.json").stat().st_mode) == 0o600
    shown = json.loads(_voms("keys", "show", cwd=tmp_path).stdout)
    assert shown["encryption_keys"] == [1, 2]
    assert shown["active_encryption_key"] == 2
