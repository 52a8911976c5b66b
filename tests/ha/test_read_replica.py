"""VOMS_READ_DATABASE_URL: lists, lookups and reports read a real streaming standby (one
of a Patroni cluster's); redemptions and changes go to the primary.

The standby's replay is paused, so what is written meanwhile is on the primary only:
a read that shows it came from the primary, one that does not from the standby.
"""

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from tests import factories
from tests.ha.cluster import Node, PatroniCluster, patroni_cluster, wait_until
from voms.config import Settings
from voms.domain.errors import NotFound
from voms.runtime import Runtime, build_runtime
from voms.services import care, generation, lifecycle, redemption, transactions
from voms.services.auth import CONSOLE
from voms.services.redemption import RedemptionRequest

MSISDN = "254720000001"


@pytest.fixture
def cluster() -> Iterator[PatroniCluster]:
    with patroni_cluster() as running:
        yield running


def _caught_up(primary: Node, standby: Node) -> bool:
    with primary.connect() as p, standby.connect() as s:
        row = p.execute("SELECT pg_current_wal_lsn()::text").fetchone()
        assert row is not None
        caught = s.execute("SELECT pg_last_wal_replay_lsn() >= %s::pg_lsn", (row[0],)).fetchone()
        return bool(caught and caught[0])


def _replay(standby: Node, *, paused: bool) -> None:
    with standby.connect() as conn:
        conn.execute("SELECT pg_wal_replay_pause()" if paused else "SELECT pg_wal_replay_resume()")


def _batch_ids(rt: Runtime) -> set[int]:
    return {item["batch_id"] for item in lifecycle.list_batches(rt, CONSOLE)["items"]}


def _redeem(rt: Runtime, pin: str) -> dict[str, Any]:
    return redemption.redeem(rt, CONSOLE, RedemptionRequest(msisdn=MSISDN, pin=pin))


@pytest.mark.slow
def test_reads_go_to_the_standby_and_writes_to_the_primary(
    cluster: PatroniCluster, tmp_path: Path
) -> None:
    setup = factories.new_installation(cluster.url(), tmp_path / "voms-keys.json")
    factories.standard_catalog(setup)
    factories.subscriber(setup, MSISDN)
    pins = factories.active_batch(setup, count=5)
    first_batch = _batch_ids(setup)
    setup.engine.dispose()
    primary = cluster.primary()
    assert primary is not None
    standby = cluster.standbys()[0]
    wait_until("the standby to catch up", lambda: _caught_up(primary, standby), 30)

    read_url = f"postgresql://postgres@127.0.0.1:{standby.proxy_port}/voms"
    rt = build_runtime(
        Settings(
            database_url=cluster.url(),
            read_database_url=read_url,
            keys_file=tmp_path / "voms-keys.json",
        )
    )
    try:
        assert rt.read_engine is not None
        with rt.read_engine.connect() as conn:  # it is a standby indeed
            assert conn.exec_driver_sql("SELECT pg_is_in_recovery()").scalar_one() is True
        cluster.maintenance(True)
        _replay(standby, paused=True)
        time.sleep(1.5)
        with standby.connect() as conn:
            assert conn.execute("SELECT pg_is_wal_replay_paused()").fetchone() == (True,)

        # Changes and redemptions go to the primary (the standby could take neither).
        batch = generation.generate_batch(rt, CONSOLE, voucher_type="TOPUP10", count=3)
        serial, pin = pins[0]
        assert _redeem(rt, pin)["result_code"] == 0

        # Lists and lookups read the standby, which has not seen them yet.
        assert _batch_ids(rt) == first_batch
        with pytest.raises(NotFound):
            lifecycle.get_batch(rt, CONSOLE, batch["batch_id"])
        assert care.voucher_by_serial(rt, CONSOLE, serial)["state"] == "active"
        assert transactions.list_transactions(rt, CONSOLE)["transactions"] == []
        # The primary has them (a unit of work for changes reads there).
        with psycopg.connect(f"postgresql://postgres@127.0.0.1:{primary.pg_port}/voms") as conn:
            row = conn.execute(
                "SELECT state FROM vouchers WHERE serial = %s", (int(serial),)
            ).fetchone()
            assert row == ("redeemed",)

        _replay(standby, paused=False)
        wait_until("the standby to catch up", lambda: _caught_up(primary, standby), 30)
        assert _batch_ids(rt) == first_batch | {batch["batch_id"]}
        assert care.voucher_by_serial(rt, CONSOLE, serial)["state"] == "redeemed"
        assert len(transactions.list_transactions(rt, CONSOLE)["transactions"]) == 1
        # A redemption is never served by the standby, even for a voucher it knows.
        assert _redeem(rt, pins[1][1])["result_code"] == 0
    finally:
        _replay(standby, paused=False)
        cluster.maintenance(False)
        rt.engine.dispose()
        if rt.read_engine is not None:
            rt.read_engine.dispose()
