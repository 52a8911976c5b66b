"""A provider's billing configuration: engines, secret references, the key file's secrets."""

from datetime import UTC, datetime

import pytest
from pydantic import ValidationError

from voms.billing.config import SecretMissing, parse, resolve_secret
from voms.billing.ucip import parse_ucip_date, ucip_date
from voms.crypto import Keyring


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
