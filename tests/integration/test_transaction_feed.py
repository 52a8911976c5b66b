"""The daily transaction feed: Parquet and CSV with a manifest, read back with pyarrow."""

import contextlib
import csv
import hashlib
import json
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from sqlalchemy import update

from tests import factories
from voms.db import tables as t
from voms.domain.errors import Invalid, ResultError
from voms.runtime import Runtime
from voms.services import redemption
from voms.services.auth import CONSOLE
from voms.services.housekeeping import runner
from voms.services.redemption import RedemptionRequest
from voms.services.reports import feed

MSISDN = "254700000001"
DAY = date(2026, 3, 10)


def _transactions_on(rt: Runtime, day: date) -> list[str]:
    """Two successes and a failure, moved to ``day``; one more on the day after."""
    factories.standard_catalog(rt)
    factories.subscriber(rt, MSISDN)
    pins = [pin for _, pin in factories.active_batch(rt, count=4)]
    for pin, channel in ((pins[0], "ussd"), (pins[1], "sms"), (pins[0], "ivr"), (pins[2], "rest")):
        request = RedemptionRequest(msisdn=MSISDN, pin=pin, channel=channel)
        with contextlib.suppress(ResultError):  # the second use of pins[0]: 2009, recorded
            redemption.redeem(rt, CONSOLE, request)
    start = datetime(day.year, day.month, day.day, 8, tzinfo=UTC)
    tx = t.transactions
    with rt.engine.begin() as conn:
        ids = [row.id for row in conn.execute(tx.select().order_by(tx.c.at, tx.c.id))]
        for n, each in enumerate(ids):
            moment = start + timedelta(hours=n) if n < 3 else start + timedelta(days=1)
            conn.execute(update(tx).where(tx.c.id == each).values(at=moment))
    return pins


def test_a_day_is_written_as_parquet_and_csv_with_a_manifest(rt: Runtime, tmp_path: Path) -> None:
    pins = _transactions_on(rt, DAY)
    written = feed.export_day(rt, DAY, tmp_path)
    folder = tmp_path / "transactions" / "2026-03-10"
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["rows"] == written["rows"] == 3
    assert [f["name"] for f in manifest["files"]] == [
        "transactions-2026-03-10.parquet",
        "transactions-2026-03-10.csv",
    ]
    for entry in manifest["files"]:
        data = (folder / entry["name"]).read_bytes()
        assert hashlib.sha256(data).hexdigest() == entry["sha256"]
        assert len(data) == entry["bytes"]
    table = pq.read_table(folder / "transactions-2026-03-10.parquet")
    assert table.schema.names == feed.COLUMNS
    rows = table.to_pylist()
    assert [(r["channel"], r["result_code"], r["voucher_type"]) for r in rows] == [
        ("ussd", 0, "TOPUP10"),
        ("sms", 0, "TOPUP10"),
        ("ivr", 2009, "TOPUP10"),
    ]
    assert rows[0]["at"] == datetime(2026, 3, 10, 8, tzinfo=UTC)
    assert json.loads(rows[0]["credits"])[0]["amount"] == 1000
    with open(folder / "transactions-2026-03-10.csv", newline="") as source:
        lines = list(csv.reader(source))
    assert lines[0] == feed.COLUMNS
    assert [line[3] for line in lines[1:]] == ["ussd", "sms", "ivr"]
    everything = b"".join(p.read_bytes() for p in folder.iterdir())
    for pin in pins:  # no PIN anywhere in the feed
        assert pin.encode() not in everything
    assert not list(folder.glob("*.partial"))


def test_the_job_exports_each_finished_day_once(rt: Runtime, tmp_path: Path) -> None:
    _transactions_on(rt, DAY)
    rt.settings = rt.settings.model_copy(update={"export_dir": tmp_path})
    first = runner.run(rt, "transaction_feed", now=datetime(2026, 3, 11, 0, 20, tzinfo=UTC))
    assert first["outcome"] == "succeeded"
    assert first["rows_affected"] == 3
    second = runner.run(rt, "transaction_feed", now=datetime(2026, 3, 12, 0, 20, tzinfo=UTC))
    assert second["detail"]["days"] == ["2026-03-11"]
    assert second["rows_affected"] == 1
    assert (tmp_path / "transactions" / "2026-03-11" / "manifest.json").exists()


def test_without_a_directory_the_feed_refuses_and_the_job_skips(rt: Runtime) -> None:
    with pytest.raises(Invalid):
        feed.export_day(rt, DAY)
    run = runner.run(rt, "transaction_feed")
    assert run["outcome"] == "succeeded"
    assert run["detail"]["skipped"] == "VOMS_EXPORT_DIR is not set"
