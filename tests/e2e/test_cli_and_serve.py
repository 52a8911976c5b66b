"""The `voms` command as a user runs it: real processes, real files, real sockets."""

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from tests.e2e.processes import start_http_server

VOMS = str(Path(sys.executable).with_name("voms"))


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("VOMS_")}
    env.update(extra)
    return env


def _voms(*args: str, cwd: Path, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [VOMS, *args], cwd=cwd, env=_env(**env), capture_output=True, text=True, timeout=60
    )


class Server:
    def __init__(self, cwd: Path, **env: str) -> None:
        self.process, self.url = start_http_server(
            lambda port: [VOMS, "serve", "--port", str(port)],
            cwd=cwd,
            env=_env(**env),
            log=lambda port: cwd / f"serve-{port}.log",
        )
        self.log = cwd / f"serve-{self.url.rsplit(':', 1)[1]}.log"

    def stop(self) -> str:
        """Stop the server; its output (stdout and stderr)."""
        self.process.terminate()
        self.process.wait(timeout=20)
        return self.log.read_text()


def test_first_start_creates_database_keys_and_prints_an_admin_key_once(tmp_path: Path) -> None:
    server = Server(tmp_path)
    try:
        assert httpx.get(f"{server.url}/readyz").json() == {"status": "ready"}
    finally:
        out = server.stop()
    # Standard output is a file here, not a terminal: the key went to a 0600 file.
    assert "voms_" not in out
    key_file = tmp_path / "voms-first-admin-key"
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    assert str(key_file) in out
    key = key_file.read_text().strip()
    assert key.startswith("voms_")
    assert stat.S_IMODE((tmp_path / "voms.db").stat().st_mode) == 0o600
    assert stat.S_IMODE((tmp_path / "voms-keys.json").stat().st_mode) == 0o600

    again = Server(tmp_path)
    try:
        listed = httpx.get(
            f"{again.url}/api/v1/service-providers", headers={"Authorization": f"Bearer {key}"}
        )
        assert listed.status_code == 200
    finally:
        out = again.stop()
    assert "voms_" not in out


def test_json_logs_are_one_object_per_line(tmp_path: Path) -> None:
    server = Server(tmp_path, VOMS_LOG_FORMAT="json")
    httpx.get(f"{server.url}/healthz")
    output = server.stop()
    # The first start also tells a person, on stdout, about the new keys and admin key.
    logged = [line for line in output.splitlines() if line.startswith("{")]
    assert len(logged) >= 3
    records = [json.loads(line) for line in logged]
    assert all({"time", "level", "logger", "message"} <= set(r) for r in records)
    assert any('"GET /healthz' in r["message"] for r in records)


def test_apikey_create_prints_the_key_as_its_last_line(tmp_path: Path) -> None:
    assert _voms("keys", "init", cwd=tmp_path).returncode == 0
    assert _voms("db", "upgrade", cwd=tmp_path).returncode == 0
    created = _voms("apikey", "create", "--name", "gw", "--role", "channel", cwd=tmp_path)
    assert created.returncode == 0, created.stderr
    assert created.stdout.strip().splitlines()[-1].startswith("voms_")
    duplicate = _voms("apikey", "create", "--name", "gw", "--role", "channel", cwd=tmp_path)
    assert duplicate.returncode == 1
    assert duplicate.stderr.strip() == "error: an API key named 'gw' already exists"
    assert "Traceback" not in duplicate.stderr
    assert stat.S_IMODE((tmp_path / "voms.db").stat().st_mode) == 0o600  # made by db upgrade


def test_apikey_create_gives_a_right_by_name(tmp_path: Path) -> None:
    assert _voms("keys", "init", cwd=tmp_path).returncode == 0
    assert _voms("db", "upgrade", cwd=tmp_path).returncode == 0
    shop = _voms(
        "apikey", "create", "--name", "shop", "--role", "channel",
        "--allow", "voucher-type-recharge", cwd=tmp_path,
    )  # fmt: skip
    assert shop.returncode == 0, shop.stderr
    assert "allowed voucher-type-recharge" in shop.stderr
    listed = json.loads(_voms("apikey", "list", cwd=tmp_path).stdout)
    assert listed[0]["allow"] == ["voucher-type-recharge"]
    unknown = _voms(
        "apikey", "create", "--name", "x", "--role", "care", "--allow", "mint", cwd=tmp_path
    )
    assert unknown.returncode == 1
    assert "unknown right 'mint'" in unknown.stderr


def test_keys_init_never_overwrites_keys(tmp_path: Path) -> None:
    assert _voms("keys", "init", cwd=tmp_path).returncode == 0
    before = (tmp_path / "voms-keys.json").read_text()
    again = _voms("keys", "init", cwd=tmp_path)
    assert again.returncode == 1
    assert "refusing to overwrite" in again.stderr
    assert (tmp_path / "voms-keys.json").read_text() == before


def test_catalog_import_creates_the_catalog(tmp_path: Path) -> None:
    _voms("keys", "init", cwd=tmp_path)
    _voms("db", "upgrade", cwd=tmp_path)
    catalog = tmp_path / "catalog.json"
    catalog.write_text(
        '{"service_providers": [{"code": "ACME", "name": "Acme"}],'
        ' "balance_types": [{"code": "CASH", "name": "Cash", "unit": "cent",'
        ' "service_provider": "ACME"}],'
        ' "voucher_types": [{"code": "T10", "name": "T10", "service_provider": "ACME",'
        ' "scenarios": [{"number": 1, "name": "10",'
        ' "credits": [{"balance_type": "CASH", "amount": 1000}]}]}]}'
    )
    result = _voms("catalog", "import", str(catalog), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    shown = _voms("catalog", "show", cwd=tmp_path)
    assert '"code": "T10"' in shown.stdout
    catalog.write_text('{"balance_types": [{"code": "X", "name": "X", "unit": "u"}]}')
    bad = _voms("catalog", "import", str(catalog), cwd=tmp_path)
    assert bad.returncode == 1
    assert "service_provider" in bad.stderr


@pytest.mark.postgres
def test_a_server_on_postgresql_without_keys_refuses_to_start(
    tmp_path: Path, postgres_url: str
) -> None:
    result = _voms(
        "serve",
        cwd=tmp_path,
        VOMS_DATABASE_URL=postgres_url,
        VOMS_KEYS_FILE=str(tmp_path / "missing.json"),
    )
    assert result.returncode == 1
    assert "voms keys init" in result.stderr
    assert not (tmp_path / "missing.json").exists()


def test_a_server_whose_threads_would_take_every_connection_refuses_to_start(
    tmp_path: Path,
) -> None:
    result = _voms(
        "serve",
        cwd=tmp_path,
        VOMS_REDEMPTION_THREADS="8",
        VOMS_DB_POOL_SIZE="4",
        VOMS_DB_MAX_OVERFLOW="4",
    )
    assert result.returncode == 1
    assert result.stderr.strip() == (
        "error: invalid input: VOMS_REDEMPTION_THREADS must be below VOMS_DB_POOL_SIZE +"
        " VOMS_DB_MAX_OVERFLOW: each redemption thread keeps a connection, and API keys and"
        " every other call need one too"
    )
    assert not (tmp_path / "voms.db").exists()


def test_the_example_catalog_of_the_readme_imports(tmp_path: Path) -> None:
    example = Path(__file__).resolve().parents[2] / "examples" / "catalog.json"
    _voms("keys", "init", cwd=tmp_path)
    _voms("db", "upgrade", cwd=tmp_path)
    result = _voms("catalog", "import", str(example), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "created voucher type COMBO50" in result.stdout
    generated = _voms("batch", "generate", "--type", "TOPUP10", "--count", "5", cwd=tmp_path)
    assert generated.returncode == 0, generated.stderr


@pytest.mark.parametrize("command", ["serve", "agi"])
def test_a_texts_file_that_cannot_fit_a_ussd_reply_stops_the_start_in_one_line(
    tmp_path: Path, command: str
) -> None:
    texts = tmp_path / "texts.json"
    texts.write_text(json.dumps({"default": {"texts": {"sw": {"ussd.menu": "Menyu " * 40}}}}))
    result = _voms(command, cwd=tmp_path, VOMS_TEXTS_FILE=str(texts))
    assert result.returncode == 1
    assert result.stderr.strip() == (
        f"error: VOMS_TEXTS_FILE: {texts}: default.texts.sw.ussd.menu: 240 characters without"
        " its values; a USSD reply holds 178 after CON/END"
    )
    assert "Traceback" not in result.stdout + result.stderr
