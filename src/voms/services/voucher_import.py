"""Import of vouchers made elsewhere: a legacy system's CSV becomes one new batch.

The file is read twice. The first pass checks every line (fields, serial, PIN format,
length and check digit, voucher type, expiry, duplicates inside the file, serials and
PINs already issued, under any live lookup key and among archived vouchers) and
collects every bad line with its number and reason; if there is one, nothing is
written. The second pass writes the batch and its vouchers in one transaction (checking
the PINs again there), so an import is never half done. The imported batch starts inactive
(``generated``), like a generated one, and keeps the legacy serials, gaps included.

Legacy PINs must carry a valid Luhn check digit: every channel rejects a PIN whose
check digit is wrong (2002) before any lookup, so a voucher without one could never be
redeemed. Such lines are reported, not imported.
"""

import csv
import hashlib
from array import array
from bisect import bisect_right
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from typing import Any

from sqlalchemy import Connection, insert, select, text

from voms.db import bulk
from voms.db import tables as t
from voms.db.types import utcnow
from voms.domain.errors import Conflict, Forbidden, Invalid, NotFound
from voms.domain.pins import luhn_valid
from voms.domain.roles import Permission
from voms.domain.serials import format_serial, parse_serial
from voms.domain.states import BatchState, VoucherState
from voms.runtime import Runtime
from voms.services import audit, idempotency
from voms.services.auth import Principal
from voms.services.catalog import load_voucher_type
from voms.services.generation import issued_hashes
from voms.services.lifecycle import batch_view, record_event
from voms.services.sealing import VOUCHER_COLUMNS
from voms.services.uow import AnsweredBefore, UnitOfWork

LEGACY_COLUMNS = ("serial", "pin", "voucher_type", "expires_at")
CHECK_ROWS = 2_000  # lines checked against the database per query
WRITE_ROWS = 20_000  # vouchers written per bulk load

ReadLines = Callable[[], Iterable[str]]


@dataclass(frozen=True)
class BadLine:
    line: int
    reason: str


class ImportRefused(Invalid):
    """The file has bad lines; nothing was imported. ``bad_lines`` says which and why."""

    def __init__(self, bad_lines: list[BadLine]) -> None:
        super().__init__(f"{len(bad_lines)} bad line(s); nothing was imported")
        self.bad_lines = bad_lines


@dataclass(frozen=True)
class _Line:
    number: int
    serial: int
    pin: str


@dataclass
class _Batch:
    """What the first good line fixed: one import is one batch of one type and expiry."""

    voucher_type: dict[str, Any] | None = None
    expires_at: datetime | None = None
    first_line: int = 0


@dataclass
class _Scan:
    bad: dict[int, str] = field(default_factory=dict)
    good: int = 0
    serial_first: int | None = None
    serial_last: int | None = None
    file_sha256: str = ""


def _expiry(raw: str) -> datetime:
    """A date means the end of that day (UTC); a time without offset is UTC."""
    if len(raw) == 10:
        day = date.fromisoformat(raw)
        return datetime.combine(day + timedelta(days=1), time.min, UTC)
    moment = datetime.fromisoformat(raw)
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


class _Parser:
    """Checks one line at a time against the rules that need no database."""

    def __init__(self, conn: Connection, actor: Principal, width: int, now: datetime) -> None:
        self.conn = conn
        self.actor = actor
        self.width = width
        self.now = now
        self.types: dict[str, dict[str, Any] | str] = {}
        self.batch = _Batch()

    def _voucher_type(self, code: str) -> dict[str, Any] | str:
        """The voucher type, or why it cannot be used."""
        if code not in self.types:
            try:
                loaded = load_voucher_type(self.conn, code=code)
                self.actor.require(Permission.BATCH_WRITE, loaded["service_provider_id"])
                self.types[code] = loaded
            except NotFound:
                self.types[code] = f"unknown voucher type '{code}'"
            except Forbidden:
                self.types[code] = f"voucher type '{code}' belongs to another service provider"
        return self.types[code]

    def parse(self, number: int, record: list[str]) -> _Line | str:
        """The line's voucher, or the reason it is bad (never quoting the PIN)."""
        if len(record) != len(LEGACY_COLUMNS):
            return f"expected 4 fields ({', '.join(LEGACY_COLUMNS)}), found {len(record)}"
        raw_serial, raw_pin, code, raw_expiry = (value.strip() for value in record)
        try:
            serial = parse_serial(raw_serial, self.width)
        except Invalid as exc:
            return f"serial: {exc.detail}"
        vt = self._voucher_type(code)
        if isinstance(vt, str):
            return vt
        pin = raw_pin.replace(" ", "").replace("-", "")
        if not pin or not pin.isascii() or not pin.isdigit():
            return "PIN must be digits"
        if len(pin) != vt["pin_length"]:
            return f"PIN has {len(pin)} digits; voucher type {code} needs {vt['pin_length']}"
        if not luhn_valid(pin):
            return "PIN check digit (Luhn) is wrong"
        try:
            expires_at = _expiry(raw_expiry)
        except ValueError:
            return f"expiry {raw_expiry!r} is not an ISO 8601 date (2027-12-31) or time"
        if expires_at <= self.now:
            return f"expired on {expires_at.isoformat()}"
        batch = self.batch
        if batch.voucher_type is None:
            batch.voucher_type, batch.expires_at, batch.first_line = vt, expires_at, number
        elif vt["id"] != batch.voucher_type["id"]:
            return (
                f"voucher type {code} differs from {batch.voucher_type['code']} on line "
                f"{batch.first_line} (one import makes one batch)"
            )
        elif expires_at != batch.expires_at:
            return (
                f"expiry differs from line {batch.first_line}'s "
                "(one import makes one batch, with one expiry)"
            )
        return _Line(number, serial, pin)


def _records(lines: Iterable[str], digest: Any) -> Iterator[tuple[int, list[str]]]:
    """(line number, fields) of every non-blank line after an optional header."""

    def hashed() -> Iterator[str]:
        for line in lines:
            digest.update(line.encode())
            yield line

    reader = csv.reader(hashed())
    first = True
    for record in reader:
        if not any(value.strip() for value in record):
            continue
        if first and record and record[0].strip().lower() == LEGACY_COLUMNS[0]:
            first = False
            continue
        first = False
        yield reader.line_num, record


def _chunks(items: Iterator[tuple[int, list[str]]], size: int) -> Iterator[list[Any]]:
    chunk: list[Any] = []
    for item in items:
        chunk.append(item)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def _batch_ranges(conn: Connection) -> tuple[list[int], list[tuple[int, int, int]]]:
    """Existing batches' serial ranges, sorted, for bisecting."""
    b = t.batches
    ranges = [
        (row.serial_first, row.serial_last, row.id)
        for row in conn.execute(select(b.c.serial_first, b.c.serial_last, b.c.id))
    ]
    ranges.sort()
    return [first for first, _, _ in ranges], ranges


def _in_batch(serial: int, firsts: list[int], ranges: list[tuple[int, int, int]]) -> int | None:
    index = bisect_right(firsts, serial) - 1
    if index >= 0 and ranges[index][1] >= serial:
        return ranges[index][2]
    return None


def _check_against_database(
    rt: Runtime,
    conn: Connection,
    lines: list[_Line],
    batches: tuple[list[int], list[tuple[int, int, int]]],
    scan: _Scan,
) -> None:
    v = t.vouchers
    serials = [line.serial for line in lines]
    existing = set(conn.execute(select(v.c.serial).where(v.c.serial.in_(serials))).scalars())
    hashes = {h: line.number for line in lines for h in rt.keyring.lookup_hashes(line.pin)}
    # Under every live lookup key, and among archived vouchers too: a PIN is never reissued.
    issued = issued_hashes(conn, list(hashes))
    issued_lines = {hashes[h] for h in issued}
    for line in lines:
        batch_id = _in_batch(line.serial, *batches)
        if line.serial in existing:
            scan.bad[line.number] = f"serial already exists (batch {batch_id})"
        elif batch_id is not None:
            scan.bad[line.number] = f"serial lies within the serial range of batch {batch_id}"
        elif line.number in issued_lines:
            scan.bad[line.number] = "PIN already issued to another voucher"


def _duplicates(keys: "array[int]", numbers: "array[int]", what: str, scan: _Scan) -> None:
    """Mark every line that repeats the key of an earlier line."""
    previous: int | None = None
    first = 0
    for index in sorted(range(len(keys)), key=lambda i: (keys[i], numbers[i])):
        if keys[index] == previous:
            scan.bad.setdefault(numbers[index], f"duplicate {what} (first on line {first})")
        else:
            previous, first = keys[index], numbers[index]


def _scan(rt: Runtime, actor: Principal, read: ReadLines, now: datetime) -> tuple[_Scan, _Batch]:
    """First pass: every bad line with its reason; the batch the good lines make."""
    scan = _Scan()
    digest = hashlib.sha256()
    serials, serial_lines = array("q"), array("q")
    pin_keys, pin_lines = array("q"), array("q")
    with UnitOfWork(rt, read_only=True) as uow:
        conn = uow.conn
        parser = _Parser(conn, actor, rt.settings.serial_width, now)
        batches = _batch_ranges(conn)
        for chunk in _chunks(_records(read(), digest), CHECK_ROWS):
            good: list[_Line] = []
            for number, record in chunk:
                parsed = parser.parse(number, record)
                if isinstance(parsed, str):
                    scan.bad[number] = parsed
                else:
                    good.append(parsed)
            if not good:
                continue
            _check_against_database(rt, conn, good, batches, scan)
            for line in good:
                serials.append(line.serial)
                serial_lines.append(line.number)
                # 64 bits of the keyed hash identify a PIN inside one file; a false
                # match (odds 1 in 10^7 at ten million lines) only refuses the file.
                key = rt.keyring.lookup_hash(line.pin)[:8]
                pin_keys.append(int.from_bytes(key, "big", signed=True))
                pin_lines.append(line.number)
    _duplicates(serials, serial_lines, "serial", scan)
    _duplicates(pin_keys, pin_lines, "PIN", scan)
    good_serials = [s for s, n in zip(serials, serial_lines, strict=True) if n not in scan.bad]
    scan.good = len(good_serials)
    if good_serials:
        scan.serial_first, scan.serial_last = min(good_serials), max(good_serials)
    scan.file_sha256 = digest.hexdigest()
    return scan, parser.batch


def _write(
    rt: Runtime,
    conn: Connection,
    actor: Principal,
    read: ReadLines,
    batch_id: int,
    now: datetime,
    progress: Callable[[int], None] | None,
) -> str:
    """Second pass: the vouchers, bulk loaded; returns the SHA-256 of what was read."""
    digest = hashlib.sha256()
    parser = _Parser(conn, actor, rt.settings.serial_width, now)
    keyring = rt.keyring
    lookup_key = keyring.active_lookup_key_id
    written = 0
    for chunk in _chunks(_records(read(), digest), WRITE_ROWS):
        rows = []
        hashes: list[bytes] = []
        for number, record in chunk:
            parsed = parser.parse(number, record)
            if isinstance(parsed, str):
                raise Conflict(f"the file changed while it was imported (line {number})")
            encryption_key, ciphertext = keyring.encrypt(parsed.pin)
            hashes += keyring.lookup_hashes(parsed.pin)
            rows.append(
                (
                    parsed.serial,
                    batch_id,
                    keyring.lookup_hash(parsed.pin, lookup_key),
                    lookup_key,
                    ciphertext,
                    encryption_key,
                    VoucherState.AVAILABLE.value,
                )
            )
        # Checked again in the writing transaction: the UNIQUE hash guards the active
        # lookup key only, not older keys or the archive.
        if issued_hashes(conn, hashes):
            raise Conflict(
                "a voucher with one of these PINs was created or archived meanwhile; "
                "nothing was imported, try again"
            )
        try:
            bulk.load(conn, t.vouchers, VOUCHER_COLUMNS, rows)
        except bulk.DuplicateKey:
            raise Conflict(
                "a voucher with one of these serials or PINs was created meanwhile; "
                "nothing was imported, try again"
            ) from None
        written += len(rows)
        if progress is not None:
            progress(written)
    return digest.hexdigest()


def _refuse_overlap(conn: Connection, first: int, last: int, width: int) -> None:
    """Batches' serial ranges never overlap (history and range operations rely on it)."""
    b = t.batches
    other = conn.execute(
        select(b.c.id, b.c.serial_first, b.c.serial_last)
        .where(b.c.serial_first <= last, b.c.serial_last >= first)
        .limit(1)
    ).first()
    if other is not None:
        raise Invalid(
            f"the file's serials {format_serial(first, width)}-{format_serial(last, width)} "
            f"span batch {other.id} ({format_serial(other.serial_first, width)}-"
            f"{format_serial(other.serial_last, width)}); import the parts either side of it "
            "separately"
        )


def _refused(rt: Runtime, actor: Principal, scan: _Scan) -> ImportRefused:
    """Record the refusal (probing for issued PINs shows in the audit log) and say why."""
    issued = sum(1 for reason in scan.bad.values() if reason.startswith("PIN already issued"))
    with UnitOfWork(rt) as uow:
        conn = uow.conn
        audit.record(
            conn,
            actor,
            "batch.import_refused",
            "batch",
            "-",
            actor.service_provider_id,
            {"bad_lines": len(scan.bad), "good_lines": scan.good, "issued_pins": issued,
             "file_sha256": scan.file_sha256},
        )  # fmt: skip
        uow.commit()
    return ImportRefused([BadLine(n, reason) for n, reason in sorted(scan.bad.items())])


def _fingerprint(rt: Runtime, file_sha256: str) -> str:
    return idempotency.fingerprint(rt.keyring, "batch.import", {"file_sha256": file_sha256})


def _digest(read: ReadLines) -> str:
    digest = hashlib.sha256()
    for line in read():
        digest.update(line.encode())
    return digest.hexdigest()


def import_vouchers(
    rt: Runtime,
    actor: Principal,
    read: ReadLines,
    *,
    request_id: str | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> dict[str, Any]:
    """Import a legacy CSV (serial, pin, voucher_type, expires_at) as one new batch.

    ``read`` returns the file's lines and is called twice (check, then write). Raises
    :class:`ImportRefused` listing every bad line; on success returns the batch.
    """
    actor.require(Permission.BATCH_WRITE)
    try:
        if request_id is not None:  # a retry is answered before the file is checked again
            with UnitOfWork(rt, read_only=True) as uow:
                uow.idempotent(
                    idempotency.scope_of(actor), request_id, _fingerprint(rt, _digest(read))
                )
        return _import(rt, actor, read, request_id, progress)
    except AnsweredBefore as again:
        # The batch an earlier import with this request id made, as it is now.
        with UnitOfWork(rt, read_only=True) as uow:
            return batch_view(uow.conn, int(again.first.body["batch_id"]), rt.settings.serial_width)


def _import(
    rt: Runtime,
    actor: Principal,
    read: ReadLines,
    request_id: str | None,
    progress: Callable[[int, int], None] | None,
) -> dict[str, Any]:
    now = utcnow()
    width = rt.settings.serial_width
    scan, batch = _scan(rt, actor, read, now)
    if scan.bad:
        raise _refused(rt, actor, scan)
    if batch.voucher_type is None or scan.serial_first is None or scan.serial_last is None:
        raise Invalid("the file holds no vouchers")
    vt, expires_at = batch.voucher_type, batch.expires_at
    assert expires_at is not None
    with UnitOfWork(rt, read_only=True) as uow:
        conn = uow.conn
        _refuse_overlap(conn, scan.serial_first, scan.serial_last, width)
    fingerprint = _fingerprint(rt, scan.file_sha256)
    with UnitOfWork(rt) as uow:
        conn = uow.conn
        uow.idempotent(idempotency.scope_of(actor), request_id, fingerprint)
        # First move the serial counter past the imported serials (generation queues on
        # this row meanwhile), then make sure no batch took the range since the check.
        conn.execute(
            text(
                "UPDATE counters SET next_value = :next WHERE name = 'serial' "
                "AND next_value < :next"
            ),
            {"next": scan.serial_last + 1},
        )
        _refuse_overlap(conn, scan.serial_first, scan.serial_last, width)
        batch_id = conn.execute(
            insert(t.batches)
            .values(
                service_provider_id=vt["service_provider_id"],
                voucher_type_id=vt["id"],
                state=BatchState.GENERATED.value,
                count=scan.good,
                generated_count=scan.good,
                serial_first=scan.serial_first,
                serial_last=scan.serial_last,
                expires_at=expires_at,
                created_by=actor.name,
                created_at=now,
                updated_at=now,
                request_id=request_id,
            )
            .returning(t.batches.c.id)
        ).scalar_one()

        def advance(done: int) -> None:
            if progress is not None:
                progress(done, scan.good)

        if _write(rt, conn, actor, read, batch_id, now, advance) != scan.file_sha256:
            raise Conflict("the file changed while it was imported; nothing was imported")
        detail = {
            "voucher_type": vt["code"],
            "count": scan.good,
            "expires_at": expires_at.isoformat(),
            "file_sha256": scan.file_sha256,
        }
        record_event(
            conn,
            actor,
            "import",
            batch_id=batch_id,
            serial_from=scan.serial_first,
            serial_to=scan.serial_last,
            affected=scan.good,
            detail=detail,
            now=now,
        )
        audit.record(
            conn, actor, "batch.import", "batch", batch_id, vt["service_provider_id"], detail
        )
        uow.answer({"batch_id": batch_id}, 201)
        result = batch_view(conn, batch_id, width)
        uow.commit()
        return result
