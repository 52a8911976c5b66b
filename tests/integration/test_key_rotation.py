"""`voms keys rotate` + the key_reencryption job: PINs move to the new key, resumably."""

import shutil
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import select
from typer.testing import CliRunner

from tests import factories
from tests.events_support import SECRET, WebhookReceiver, run_cycle
from voms.cli import app
from voms.config import Settings
from voms.crypto import load_keyring
from voms.db import tables as t
from voms.runtime import Runtime, build_runtime
from voms.services import care, housekeeping, redemption
from voms.services.auth import CONSOLE
from voms.services.events import destinations
from voms.services.events.relay import Relay
from voms.services.housekeeping.reencryption import key_usage
from voms.services.redemption import RedemptionRequest

MSISDN = "254700000001"


@pytest.fixture
def own_keys(settings: Settings, tmp_path: Path) -> Iterator[Runtime]:
    """A runtime with a key file of its own (the session's is shared by every test)."""
    assert settings.keys_file is not None
    path = tmp_path / "own-keys.json"
    shutil.copyfile(settings.keys_file, path)
    path.chmod(0o600)
    runtime = build_runtime(settings.model_copy(update={"keys_file": path}))
    yield runtime
    runtime.engine.dispose()


def rotate(path: Path) -> None:
    result = CliRunner().invoke(app, ["keys", "rotate", "--keys-file", str(path)])
    assert result.exit_code == 0, result.output


def ciphertext_keys(rt: Runtime) -> list[int]:
    with rt.engine.connect() as conn:
        return list(conn.execute(select(t.vouchers.c.encryption_key_id)).scalars())


def test_rotation_reencrypts_every_pin_resumably_and_old_pins_still_work(
    own_keys: Runtime,
) -> None:
    rt = own_keys
    path = rt.settings.resolved_keys_file()
    factories.standard_catalog(rt)
    factories.subscriber(rt, MSISDN)
    pairs = factories.active_batch(rt, count=25)
    before = load_keyring(path)

    rotate(path)

    after = load_keyring(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert after.active_encryption_key_id == before.active_encryption_key_id + 1
    assert after.encryption_keys[1] == before.encryption_keys[1]  # old keys are kept
    assert after.lookup_keys == before.lookup_keys
    rt.settings = rt.settings.model_copy(update={"housekeeping_chunk_size": 10})

    calls = 0

    def stop_after_first_chunk(rows: int, total: int) -> None:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise RuntimeError("injected")

    first = housekeeping.run_job(rt, CONSOLE, "key_reencryption", progress=stop_after_first_chunk)
    assert (first["outcome"], first["rows_affected"]) == ("failed", 10)
    assert sorted(ciphertext_keys(rt)) == [1] * 15 + [2] * 10
    second = housekeeping.run_job(rt, CONSOLE, "key_reencryption")
    assert (second["outcome"], second["rows_affected"]) == ("succeeded", 15)
    assert second["detail"]["resumed_from"] == int(pairs[9][0])
    assert set(ciphertext_keys(rt)) == {2}
    assert housekeeping.run_job(rt, CONSOLE, "key_reencryption")["rows_affected"] == 0
    assert key_usage(rt.engine)["vouchers_per_encryption_key"] == {2: 25}

    # Every PIN decrypts to what it was, redeems, and is found by lookup.
    with rt.engine.connect() as conn:
        rows = conn.execute(
            select(
                t.vouchers.c.serial, t.vouchers.c.encryption_key_id, t.vouchers.c.pin_ciphertext
            ).order_by(t.vouchers.c.serial)
        ).all()
    assert [rt.keyring.decrypt(r.encryption_key_id, r.pin_ciphertext) for r in rows] == [
        pin for _, pin in pairs
    ]
    assert care.voucher_by_pin(rt, CONSOLE, pairs[3][1])["serial"] == pairs[3][0]
    done = redemption.redeem(rt, CONSOLE, RedemptionRequest(msisdn=MSISDN, pin=pairs[3][1]))
    assert done["result_code"] == 0


def test_keys_show_counts_vouchers_per_key(
    own_keys: Runtime, monkeypatch: pytest.MonkeyPatch
) -> None:
    rt = own_keys
    factories.standard_catalog(rt)
    factories.active_batch(rt, count=3)
    monkeypatch.setenv("VOMS_DATABASE_URL", rt.settings.database_url)
    from voms.config import get_settings

    get_settings.cache_clear()
    try:
        result = CliRunner().invoke(
            app, ["keys", "show", "--keys-file", str(rt.settings.resolved_keys_file())]
        )
    finally:
        get_settings.cache_clear()
    assert result.exit_code == 0, result.output
    assert '"vouchers_per_encryption_key": {\n    "1": 3' in result.output
    material = rt.keyring.to_json()
    assert all(
        line.split('"key": ')[1].strip('",') not in result.output
        for line in material.splitlines()
        if '"key": ' in line
    )


def test_rotation_reencrypts_webhook_secrets_and_a_running_relay_follows(
    own_keys: Runtime,
) -> None:
    rt = own_keys
    path = rt.settings.resolved_keys_file()
    factories.standard_catalog(rt)
    factories.subscriber(rt, MSISDN)
    (_, pin), *_ = factories.active_batch(rt, count=1)
    relay_rt = build_runtime(rt.settings)  # a relay started before the rotation
    with WebhookReceiver() as receiver:
        destinations.add_webhook(
            rt,
            CONSOLE,
            destinations.WebhookIn(url=receiver.url, secret=SECRET, events=["voucher.redeemed"]),
        )
        rotate(path)
        done = housekeeping.run_job(rt, CONSOLE, "key_reencryption")
        assert done["detail"]["webhook_secrets"] == 1
        with rt.engine.connect() as conn:
            keys = conn.execute(select(t.event_destinations.c.secret_key_id)).scalars().all()
        assert keys == [2]
        redemption.redeem(rt, CONSOLE, RedemptionRequest(msisdn=MSISDN, pin=pin))
        run_cycle(Relay(relay_rt))
        assert receiver.bad_signatures == 0
        assert len(receiver.ids()) == 1
    relay_rt.engine.dispose()
