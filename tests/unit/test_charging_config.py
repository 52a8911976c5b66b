"""A provider's billing configuration: engines, secret references, the key file's secrets."""

from datetime import UTC, datetime
from pathlib import Path

import pytest
from pydantic import ValidationError
from typer.testing import CliRunner

from voms.billing.config import SecretMissing, parse, resolve_secret
from voms.billing.ucip import parse_ucip_date, ucip_date
from voms.cli import app
from voms.crypto import Keyring, load_keyring, write_keyring


def test_no_configuration_is_the_builtin_wallet_and_others_are_checked() -> None:
    assert parse(None).engine == "builtin"
    ucip = parse({"engine": "ucip", "url": "http://air:10010/Air", "password": "keys:air"})
    assert (ucip.engine, ucip.timeout_ms, ucip.origin_host) == ("ucip", 3000, "voms")
    for bad in (
        {"engine": "http", "url": "http://ocs/x", "secret": "the-secret-itself"},
        {"engine": "http", "url": "http://user:pw@ocs/x", "secret": "env:X"},
        {"engine": "ucip", "url": "http://air/Air", "timeout_ms": 0},
        {"engine": "diameter", "url": "http://air/Air"},
    ):
        with pytest.raises(ValidationError):
            parse(bad)


def test_secret_references_resolve_from_the_environment_or_the_key_file(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("VOMS_TEST_AIR", "from-env")
    assert resolve_secret("env:VOMS_TEST_AIR", {}) == "from-env"
    assert resolve_secret("keys:air", {"air": "from-file"}) == "from-file"
    with pytest.raises(SecretMissing):
        resolve_secret("keys:ocs", {"air": "from-file"})
    with pytest.raises(SecretMissing):
        resolve_secret("env:VOMS_TEST_UNSET_VARIABLE", {})


def test_the_key_file_keeps_its_secrets_through_a_rotation() -> None:
    keyring = Keyring.new()
    text = keyring.to_json().replace('"version": 1,', '"version": 1, "secrets": {"air": "pw"},')
    rotated = Keyring.from_json(text).with_new_encryption_key()
    assert Keyring.from_json(rotated.to_json()).secrets == {"air": "pw"}
    assert "secrets" not in keyring.to_json()


def test_ucip_dates_carry_their_offset() -> None:
    moment = datetime(2027, 1, 31, 12, 30, tzinfo=UTC)
    assert ucip_date(moment).value == "20270131T12:30:00+0000"
    assert parse_ucip_date(ucip_date(moment)) == moment
    assert parse_ucip_date("20270131T12:30:00") == moment
    assert parse_ucip_date("yesterday") is None


def test_voms_keys_secret_stores_a_named_secret_read_from_stdin(tmp_path: Path) -> None:
    path = tmp_path / "voms-keys.json"
    write_keyring(path, Keyring.new())
    done = CliRunner().invoke(
        app, ["keys", "secret", "air-password", "--keys-file", str(path)], input="s3cret\n"
    )
    assert done.exit_code == 0, done.output
    assert "s3cret" not in done.output
    assert "keys:air-password" in done.output
    assert load_keyring(path).secrets == {"air-password": "s3cret"}
    assert (path.stat().st_mode & 0o777) == 0o600
    refused = CliRunner().invoke(app, ["keys", "secret", "bad name", "--keys-file", str(path)])
    assert refused.exit_code != 0
