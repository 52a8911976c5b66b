"""`voms partner`, `voms export` and `voms import` as an operator runs them: real
processes, real gpg, on SQLite and PostgreSQL. Files are opened with `gpg --decrypt`."""

import csv
import io
import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from tests import factories
from tests.pgp import PartnerKeys
from voms.domain.pins import with_check_digit
from voms.runtime import Runtime

VOMS = str(Path(sys.executable).with_name("voms"))


@pytest.fixture
def workdir(rt: Runtime, tmp_path: Path, partner_keys: PartnerKeys) -> Path:
    factories.standard_catalog(rt)
    (tmp_path / "tmp").mkdir()
    for name in ("good", "expired", "revoked"):
        (tmp_path / f"{name}.asc").write_text(getattr(partner_keys, name))
    return tmp_path


def voms(rt: Runtime, cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("VOMS_")}
    env.update(
        VOMS_DATABASE_URL=rt.settings.database_url,
        VOMS_KEYS_FILE=str(rt.settings.keys_file),
        TMPDIR=str(cwd / "tmp"),  # where a careless export would leave plaintext
    )
    return subprocess.run(
        [VOMS, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=120
    )


def files_holding(folder: Path, secrets: list[str]) -> list[Path]:
    """Files under ``folder`` whose bytes contain one of ``secrets``."""
    found = []
    for root, _, names in os.walk(folder):  # os.walk skips folders deleted meanwhile
        for name in names:
            path = Path(root) / name
            try:
                content = path.read_bytes()
            except OSError:  # gone meanwhile, or a socket (gpg's)
                continue
            if any(secret.encode() in content for secret in secrets):
                found.append(path)
    return found


def test_an_operator_adds_a_partner_and_exports_a_file_gpg_opens(
    rt: Runtime, workdir: Path, partner_keys: PartnerKeys
) -> None:
    added = voms(rt, workdir, "partner", "add", "--name", "printshop", "--public-key", "good.asc",
                 "--contact", "ops@print.example")  # fmt: skip
    assert added.returncode == 0, added.stderr
    assert json.loads(added.stdout)["key_fingerprint"] == partner_keys.good_fingerprint
    vouchers = factories.active_batch(rt, count=3000)
    pins = [pin for _, pin in vouchers]

    # Watch the temporary folder for plaintext while the export runs.
    leaks: list[Path] = []
    done = threading.Event()

    def watch() -> None:
        while not done.is_set():
            leaks.extend(files_holding(workdir / "tmp", pins[:50]))

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        exported = voms(rt, workdir, "export", "--partner", "printshop",
                        "--voucher-type", "TOPUP10", "--output", "acme.csv.gpg")  # fmt: skip
    finally:
        done.set()
        watcher.join()
    assert exported.returncode == 0, exported.stderr
    assert "exporting" in exported.stderr  # the progress bar
    record = json.loads(exported.stdout)
    assert record["voucher_count"] == 3000
    assert "download_token" not in record

    ciphertext = (workdir / "acme.csv.gpg").read_bytes()
    text = partner_keys.decrypt(ciphertext).decode()
    assert text.startswith("serial,pin,voucher_type,expires_at,")
    rows = list(csv.DictReader(io.StringIO(text)))
    assert [(r["serial"], r["pin"]) for r in rows] == vouchers
    assert leaks == []
    assert files_holding(workdir, pins) == []  # nothing anywhere but inside the gpg file
    assert sorted(p.name for p in workdir.iterdir() if p.suffix == ".gpg") == ["acme.csv.gpg"]

    listed = voms(rt, workdir, "export", "list")
    assert [e["export_id"] for e in json.loads(listed.stdout)] == [record["export_id"]]


def test_exporting_the_same_vouchers_again_needs_reissue(rt: Runtime, workdir: Path) -> None:
    voms(rt, workdir, "partner", "add", "--name", "printshop", "--public-key", "good.asc")
    vouchers = factories.active_batch(rt, count=5)
    first, last = vouchers[0][0], vouchers[-1][0]
    args = ["export", "--partner", "printshop", "--serial-from", first, "--serial-to", last]
    assert voms(rt, workdir, *args, "--output", "one.gpg").returncode == 0
    again = voms(rt, workdir, *args, "--output", "two.gpg")
    assert again.returncode == 1
    assert "--reissue" in again.stderr
    assert not (workdir / "two.gpg").exists()
    assert not (workdir / "two.gpg.partial").exists()
    reissued = voms(rt, workdir, *args, "--reissue", "--format", "xlsx", "--output", "two.gpg")
    assert reissued.returncode == 0, reissued.stderr
    assert json.loads(reissued.stdout)["reissued_count"] == 5
    exists = voms(rt, workdir, *args, "--reissue", "--output", "two.gpg")
    assert "exists" in exists.stderr


@pytest.mark.parametrize(("key", "reason"), [("expired", "expired"), ("revoked", "revoked")])
def test_expired_and_revoked_keys_are_refused_at_the_console(
    rt: Runtime, workdir: Path, key: str, reason: str
) -> None:
    refused = voms(rt, workdir, "partner", "add", "--name", "x", "--public-key", f"{key}.asc")
    assert refused.returncode == 1
    assert reason in refused.stderr
    assert json.loads(voms(rt, workdir, "partner", "list").stdout) == []


def test_partners_are_shown_and_disabled(rt: Runtime, workdir: Path) -> None:
    voms(rt, workdir, "partner", "add", "--name", "printshop", "--public-key", "good.asc")
    assert json.loads(voms(rt, workdir, "partner", "show", "printshop").stdout)["state"] == "active"
    disabled = voms(rt, workdir, "partner", "disable", "printshop")
    assert json.loads(disabled.stdout)["state"] == "disabled"
    factories.active_batch(rt, count=2)
    refused = voms(rt, workdir, "export", "--partner", "printshop", "--voucher-type", "TOPUP10",
                   "--output", "x.gpg")  # fmt: skip
    assert refused.returncode == 1
    assert "disabled" in refused.stderr


def test_an_import_names_every_bad_line_then_imports_the_fixed_file(
    rt: Runtime, workdir: Path
) -> None:
    good = with_check_digit("4444444444444")
    bad_luhn = good[:-1] + str((int(good[-1]) + 1) % 10)
    legacy = workdir / "legacy.csv"
    legacy.write_text(
        "serial,pin,voucher_type,expires_at\n"
        f"700001,{good},TOPUP10,2099-12-31\n"
        f"700002,{bad_luhn},TOPUP10,2099-12-31\n"
        f"700003,{good},TOPUP10,2099-12-31\n"
    )
    refused = voms(rt, workdir, "import", "legacy.csv")
    assert refused.returncode == 1
    assert "legacy.csv:3: PIN check digit (Luhn) is wrong" in refused.stderr
    assert "legacy.csv:4: duplicate PIN (first on line 2)" in refused.stderr
    assert good not in refused.stderr + refused.stdout

    legacy.write_text(f"700001,{good},TOPUP10,2099-12-31\n")
    imported = voms(rt, workdir, "import", "legacy.csv")
    assert imported.returncode == 0, imported.stderr
    batch = json.loads(imported.stdout)
    assert (batch["state"], batch["count"]) == ("generated", 1)
