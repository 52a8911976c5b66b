import stat
from pathlib import Path

import pytest

from voms.crypto import Keyring, KeyringError, load_keyring, write_keyring


def test_the_lookup_hash_is_keyed() -> None:
    a, b = Keyring.new(), Keyring.new()
    assert a.lookup_hash("12345678901234") == a.lookup_hash("12345678901234")
    assert a.lookup_hash("12345678901234") != b.lookup_hash("12345678901234")


def test_encryption_round_trips_and_uses_a_fresh_nonce() -> None:
    keyring = Keyring.new()
    kid, one = keyring.encrypt("12345678901234")
    _, two = keyring.encrypt("12345678901234")
    assert one != two
    assert b"12345678901234" not in one
    assert keyring.decrypt(kid, one) == "12345678901234"


def test_a_rotated_keyring_still_decrypts_old_ciphertexts() -> None:
    old = Keyring.new()
    kid, blob = old.encrypt("99999999999999")
    new = old.with_new_encryption_key()
    assert new.active_encryption_key_id == kid + 1
    assert new.decrypt(kid, blob) == "99999999999999"


def test_the_key_file_is_private_and_never_overwritten(tmp_path: Path) -> None:
    path = tmp_path / "keys.json"
    keyring = Keyring.new()
    write_keyring(path, keyring)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert load_keyring(path) == keyring
    with pytest.raises(KeyringError, match="refusing to overwrite"):
        write_keyring(path, Keyring.new())


def test_a_missing_or_broken_key_file_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(KeyringError, match="not found"):
        load_keyring(tmp_path / "absent.json")
    (tmp_path / "bad.json").write_text("{}")
    with pytest.raises(KeyringError, match="malformed"):
        load_keyring(tmp_path / "bad.json")
