"""The daily transaction feed for a data warehouse: one UTC day of transactions as
Parquet and CSV, with a manifest, under ``VOMS_EXPORT_DIR/transactions/YYYY-MM-DD/``.

Streamed from the ``at`` index in chunks (constant memory, any day's size). Files are
written under temporary names and renamed, the manifest last: a reader that finds a
manifest finds complete files. Transactions hold no PIN, and neither does the feed.
"""

import csv
import hashlib
import json
import os
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pyarrow as pa
import pyarrow.parquet as pq
from sqlalchemy import select, update

from voms.db import tables as t
from voms.db.types import utcnow
from voms.domain.errors import Invalid
from voms.runtime import Runtime
from voms.services.uow import UnitOfWork

if TYPE_CHECKING:  # the housekeeping registry imports this module to run it
    from voms.services.housekeeping.context import JobContext

JOB = "transaction_feed"
CHUNK = 50_000
_tx, _sp, _vt = t.transactions, t.service_providers, t.voucher_types

SCHEMA = pa.schema(
    [
        ("id", pa.string()),
        ("at", pa.timestamp("us", tz="UTC")),
        ("kind", pa.string()),
        ("channel", pa.string()),
        ("msisdn", pa.string()),
        ("recipient_msisdn", pa.string()),
        ("serial", pa.int64()),
        ("service_provider", pa.string()),
        ("voucher_type", pa.string()),
        ("scenario", pa.int16()),
        ("result_code", pa.int32()),
        ("credits", pa.string()),
        ("reservation_id", pa.string()),
        ("actor", pa.string()),
    ]
)
COLUMNS = SCHEMA.names

_QUERY = (
    select(
        _tx.c.id,
        _tx.c.at,
        _tx.c.kind,
        _tx.c.channel,
        _tx.c.msisdn,
        _tx.c.recipient_msisdn,
        _tx.c.serial,
        _sp.c.code.label("service_provider"),
        _vt.c.code.label("voucher_type"),
        _tx.c.scenario,
        _tx.c.result_code,
        _tx.c.credits,
        _tx.c.reservation_id,
        _tx.c.actor,
    )
    .select_from(
        _tx.outerjoin(_sp, _sp.c.id == _tx.c.service_provider_id).outerjoin(
            _vt, _vt.c.id == _tx.c.voucher_type_id
        )
    )
    .order_by(_tx.c.at, _tx.c.id)
)


def export_day(rt: Runtime, day: date, directory: Path | None = None) -> dict[str, Any]:
    """Write one day's feed (replacing an earlier one of that day); the manifest."""
    base = directory or rt.settings.export_dir
    if base is None:
        raise Invalid("set VOMS_EXPORT_DIR (or pass a directory) for the transaction feed")
    target = Path(base) / "transactions" / day.isoformat()
    target.mkdir(parents=True, exist_ok=True)
    start = datetime(day.year, day.month, day.day, tzinfo=UTC)
    stem = f"transactions-{day.isoformat()}"
    parquet_path, csv_path = target / f"{stem}.parquet", target / f"{stem}.csv"
    rows = 0
    with (
        pq.ParquetWriter(_partial(parquet_path), SCHEMA, compression="zstd") as parquet,
        open(_partial(csv_path), "w", newline="", encoding="utf-8") as csv_file,
        UnitOfWork(rt, read_only=True) as uow,
    ):
        conn = uow.conn
        writer = csv.writer(csv_file, lineterminator="\r\n")
        writer.writerow(COLUMNS)
        result = conn.execution_options(stream_results=True, yield_per=CHUNK).execute(
            _QUERY.where(_tx.c.at >= start, _tx.c.at < start + timedelta(days=1))
        )
        for chunk in result.partitions(CHUNK):
            records = [_record(row) for row in chunk]
            parquet.write_table(pa.Table.from_pylist(records, schema=SCHEMA))
            writer.writerows([[_csv_cell(record[name]) for name in COLUMNS] for record in records])
            rows += len(records)
    files = []
    for path in (parquet_path, csv_path):
        os.replace(_partial(path), path)
        files.append({"name": path.name, "rows": rows, **_digest(path)})
    manifest = {
        "feed": "transactions",
        "day": day.isoformat(),
        "generated_at": utcnow().isoformat(),
        "rows": rows,
        "columns": COLUMNS,
        "files": files,
    }
    manifest_path = target / "manifest.json"
    _partial(manifest_path).write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    os.replace(_partial(manifest_path), manifest_path)
    return {**manifest, "directory": str(target)}


def _partial(path: Path) -> Path:
    return path.with_name(path.name + ".partial")


def _record(row: Any) -> dict[str, Any]:
    record = dict(row._mapping)
    record["credits"] = json.dumps(record["credits"], separators=(",", ":"))
    return record


def _csv_cell(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat()
    return "" if value is None else value


def _digest(path: Path) -> dict[str, Any]:
    sha = hashlib.sha256()
    with open(path, "rb") as source:
        for block in iter(lambda: source.read(1 << 20), b""):
            sha.update(block)
    return {"sha256": sha.hexdigest(), "bytes": path.stat().st_size}


def export_days(ctx: "JobContext") -> int:
    """The transaction_feed job: every finished day since the last one exported (the
    day before yesterday's catch-up included), up to yesterday."""
    rt = ctx.rt
    if rt.settings.export_dir is None:
        ctx.detail["skipped"] = "VOMS_EXPORT_DIR is not set"
        return 0
    yesterday = ctx.now.date() - timedelta(days=1)
    c = t.job_cursors
    with UnitOfWork(rt, read_only=True) as uow:
        conn = uow.conn
        row = conn.execute(select(c.c.position).where(c.c.job == JOB)).first()
    day = date.fromordinal(row.position + 1) if row is not None else yesterday
    total, days = 0, []
    while day <= yesterday:
        written = export_day(rt, day)
        with UnitOfWork(rt) as uow:
            conn = uow.conn
            values = {"position": day.toordinal(), "detail": {"day": day.isoformat()}}
            values["updated_at"] = utcnow()
            if not conn.execute(update(c).where(c.c.job == JOB).values(**values)).rowcount:
                conn.execute(c.insert().values(job=JOB, **values))
            uow.commit()
        total += written["rows"]
        days.append(day.isoformat())
        ctx.chunk_done(written["rows"])
        day += timedelta(days=1)
    ctx.detail["days"] = days
    return total
