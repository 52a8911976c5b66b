"""The `voms` command as a user runs it: real processes, real files, real sockets."""

import json
import os
import socket
import stat
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

VOMS = str(Path(sys.executable).with_name("voms"))


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


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
        self.port = _free_port()
        self.process = subprocess.Popen(
            [VOMS, "serve", "--port", str(self.port)],
            cwd=cwd,
            env=_env(**env),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.url = f"http://127.0.0.1:{self.port}"
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(f"server exited: {self.process.communicate()}")
            try:
                if httpx.get(f"{self.url}/healthz", timeout=1).status_code == 200:
                    return
            except httpx.TransportError:
                time.sleep(0.1)
        raise AssertionError("server did not start")

    def stop(self) -> tuple[str, str]:
        self.process.terminate()
        out, err = self.process.communicate(timeout=20)
        return out, err


def test_first_start_creates_database_keys_and_prints_an_admin_key_once(tmp_path: Path) -> None:
    server = Server(tmp_path)
    try:
        assert httpx.get(f"{server.url}/readyz").json() == {"status": "ready"}
    finally:
        out, _ = server.stop()
    key = out.split("shown only this once:")[1].split()[0]
    assert key.startswith("voms_")
    assert (tmp_path / "voms.db").exists()
    assert stat.S_IMODE((tmp_path / "voms-keys.json").stat().st_mode) == 0o600

    again = Server(tmp_path)
    try:
        listed = httpx.get(
            f"{again.url}/api/v1/service-providers", headers={"Authorization": f"Bearer {key}"}
        )
        assert listed.status_code == 200
    finally:
        out, _ = again.stop()
    assert "voms_" not in out


def test_json_logs_are_one_object_per_line(tmp_path: Path) -> None:
    server = Server(tmp_path, VOMS_LOG_FORMAT="json")
    httpx.get(f"{server.url}/healthz")
    _, err = server.stop()
    lines = [line for line in err.splitlines() if line.strip()]
    assert lines
    records = [json.loads(line) for line in lines]
    assert {"time", "level", "logger", "message"} <= set(records[0])


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


def test_the_example_catalog_of_the_readme_imports(tmp_path: Path) -> None:
    example = Path(__file__).resolve().parents[2] / "examples" / "catalog.json"
    _voms("keys", "init", cwd=tmp_path)
    _voms("db", "upgrade", cwd=tmp_path)
    result = _voms("catalog", "import", str(example), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "created voucher type COMBO50" in result.stdout
    generated = _voms("batch", "generate", "--type", "TOPUP10", "--count", "5", cwd=tmp_path)
    assert generated.returncode == 0, generated.stderr
