"""Distribution: partners with OpenPGP keys, encrypted voucher exports, their downloads.

An export is first registered (state ``exporting``) in a short transaction. The matching
vouchers are then claimed in serial order, a chunk at a time (a primary-key range): each
chunk is marked as the export's in voucher_exports with one bulk statement, read back and
counted into the export's progress in a transaction of its own, so no export holds the
database's write lock (SQLite has one) for more than a chunk. The PINs are decrypted in
memory and piped through gpg's stdin; claiming runs on its own thread, so the database
works on the next chunk while gpg encrypts the last. The ciphertext goes to the caller's
file (CLI) or into the database for a time-limited download link (API; large exports run
in the background there, as generation does). The export becomes ``exported`` only once
the whole file is written; a failure anywhere undoes its marks (a reissue gets its
vouchers' earlier marks back), so a voucher is never left marked for an incomplete file,
and no plaintext PIN is ever written to disk.
"""

import hashlib
import hmac
import logging
import queue
import secrets
import tempfile
import threading
from collections.abc import Callable, Generator, Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum
from typing import IO, Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, model_validator
from sqlalchemy import (
    Connection,
    Integer,
    Row,
    Table,
    and_,
    delete,
    exists,
    func,
    insert,
    literal,
    or_,
    select,
    update,
)
from sqlalchemy.exc import DBAPIError, IntegrityError

from voms import openpgp, xlsx
from voms.db import tables as t
from voms.db.types import utcnow
from voms.domain.distribution import (
    EXPORT_COLUMNS,
    EXPORTABLE_BATCH_STATES,
    EXPORTABLE_VOUCHER_STATES,
    XLSX_MAX_VOUCHERS,
    LinkExpired,
)
from voms.domain.errors import Conflict, Forbidden, Invalid, NotFound, VomsError
from voms.domain.roles import Permission
from voms.domain.serials import format_serial, parse_serial_range
from voms.runtime import Runtime
from voms.services import audit, idempotency
from voms.services.auth import Principal, service_provider_id_by_code
from voms.services.lifecycle import record_event
from voms.services.uow import AnsweredBefore, UnitOfWork

PartnerName = Annotated[
    str, StringConstraints(strip_whitespace=True, pattern=r"^[^/\\\x00-\x1f\x7f]{1,100}$")
]
Code = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_.-]{1,32}$")]
SerialText = Annotated[str, StringConstraints(strip_whitespace=True, max_length=18)] | int
Format = Literal["csv", "xlsx"]

CLAIM_ROWS = 5_000  # vouchers claimed, read back, decrypted and formatted per step
QUEUE_CHUNKS = 4  # claimed chunks waiting for gpg: bounds the memory
FILE_CHUNK_BYTES = 1 << 20  # encrypted file kept in the database in pieces of this size
SPOOL_BYTES = 8 << 20  # ciphertext up to this size stays in memory before the database
FILE_CHUNKS_PER_TRANSACTION = 16  # pieces of the file stored per transaction
UNDO_ROWS = 50_000  # marks undone per transaction when an export fails
# An export steps (commits a chunk) many times a second; one silent this long was left
# by a process that died, and is failed by fail_stalled_exports.
STALLED_AFTER = timedelta(minutes=10)

log = logging.getLogger("voms.distribution")


class _Input(BaseModel):
    model_config = ConfigDict(extra="forbid")


class PartnerIn(_Input):
    name: PartnerName
    public_key: str = Field(
        max_length=openpgp.MAX_KEY_CHARS, description="ASCII-armored OpenPGP public key"
    )
    contact: Annotated[str, StringConstraints(strip_whitespace=True, max_length=200)] | None = None
    service_provider: Code | None = Field(
        None, description="Limit the partner to one provider (default: the key's scope, or any)"
    )


class ExportIn(_Input):
    partner: PartnerName
    batch_id: Annotated[int, Field(gt=0)] | None = None
    serial_from: SerialText | None = None
    serial_to: SerialText | None = None
    voucher_type: Code | None = None
    format: Format = "csv"
    reissue: bool = Field(False, description="Export vouchers that were exported before, again")
    request_id: Annotated[str, StringConstraints(min_length=1, max_length=100)] | None = Field(
        None, description="A retry with the same id exports nothing more (a new link)"
    )

    @model_validator(mode="after")
    def _one_filter_at_least(self) -> "ExportIn":
        if (self.serial_from is None) != (self.serial_to is None):
            raise ValueError("serial_from and serial_to go together")
        if self.batch_id is None and self.serial_from is None and self.voucher_type is None:
            raise ValueError("give batch_id, a serial range (serial_from, serial_to), or a type")
        return self


# --- partners ----------------------------------------------------------------------


def _partner_query() -> Any:
    p, sp = t.partners, t.service_providers
    return select(p, sp.c.code.label("sp_code")).select_from(
        p.outerjoin(sp, sp.c.id == p.c.service_provider_id)
    )


def _partner_public(row: Row[Any]) -> dict[str, Any]:
    return {
        "name": row.name,
        "contact": row.contact,
        "service_provider": row.sp_code,
        "key_fingerprint": row.key_fingerprint,
        "key_user_ids": list(row.key_user_ids),
        "key_expires_at": row.key_expires_at,
        "state": row.state,
        "created_by": row.created_by,
        "created_at": row.created_at,
        "disabled_at": row.disabled_at,
    }


def _load_partner(conn: Connection, actor: Principal, name: str) -> Row[Any]:
    row = conn.execute(_partner_query().where(t.partners.c.name == name)).first()
    if row is None:
        raise NotFound(f"partner '{name}' not found")
    actor.require(Permission.EXPORT, row.service_provider_id)
    return row


def _inspect(rt: Runtime, armored: str) -> openpgp.PublicKey:
    try:
        return openpgp.inspect_public_key(armored, rt.settings.gpg_binary)
    except openpgp.KeyRefused as exc:
        raise Invalid(f"public key refused: {exc}") from None


def create_partner(rt: Runtime, actor: Principal, body: PartnerIn) -> dict[str, Any]:
    """Add a partner; its key must be one valid, encryption-capable OpenPGP public key."""
    actor.require(Permission.EXPORT)
    key = _inspect(rt, body.public_key)
    with UnitOfWork(rt) as uow:
        conn = uow.conn
        sp_id = (
            service_provider_id_by_code(conn, body.service_provider)
            if body.service_provider
            else actor.service_provider_id
        )
        actor.require_scope(sp_id)
        try:
            with conn.begin_nested():
                partner_id = conn.execute(
                    insert(t.partners)
                    .values(
                        name=body.name,
                        contact=body.contact,
                        service_provider_id=sp_id,
                        public_key=body.public_key.strip() + "\n",
                        key_fingerprint=key.fingerprint,
                        key_user_ids=list(key.user_ids),
                        key_expires_at=key.expires_at,
                        state="active",
                        created_by=actor.name,
                        created_at=utcnow(),
                    )
                    .returning(t.partners.c.id)
                ).scalar_one()
        except IntegrityError:
            raise Conflict(f"partner '{body.name}' already exists") from None
        audit.record(
            conn,
            actor,
            "partner.create",
            "partner",
            partner_id,
            sp_id,
            {"name": body.name, "contact": body.contact, "key_fingerprint": key.fingerprint},
        )
        result = _partner_public(_load_partner(conn, actor, body.name))
        uow.commit()
        return result


def list_partners(
    rt: Runtime,
    actor: Principal,
    *,
    after: str | None = None,
    limit: int | None = None,
    state: str | None = None,
    name_prefix: str | None = None,
) -> list[dict[str, Any]]:
    """Partners the caller may export to (a scoped key: its provider's and shared ones),
    by name; ``after`` (a name) and ``limit`` page through them; ``state`` (active,
    disabled) and ``name_prefix`` (names starting with it) filter."""
    actor.require(Permission.EXPORT)
    query = _partner_query().order_by(t.partners.c.name).limit(limit)
    if after is not None:
        query = query.where(t.partners.c.name > after)
    if state is not None:
        query = query.where(t.partners.c.state == state)
    if name_prefix:
        # Compared as is (not LIKE: no wildcard to escape, the same case rule on both
        # databases); partners are few, each provider's a handful.
        query = query.where(func.substr(t.partners.c.name, 1, len(name_prefix)) == name_prefix)
    if actor.service_provider_id is not None:
        query = query.where(
            (t.partners.c.service_provider_id == actor.service_provider_id)
            | t.partners.c.service_provider_id.is_(None)
        )
    with UnitOfWork(rt, read_only=True) as uow:
        conn = uow.conn
        return [_partner_public(row) for row in conn.execute(query)]


def get_partner(rt: Runtime, actor: Principal, name: str) -> dict[str, Any]:
    with UnitOfWork(rt, read_only=True) as uow:
        conn = uow.conn
        return _partner_public(_load_partner(conn, actor, name))


def disable_partner(rt: Runtime, actor: Principal, name: str) -> dict[str, Any]:
    """Stop all further exports to a partner (past exports stay recorded)."""
    with UnitOfWork(rt) as uow:
        conn = uow.conn
        row = _load_partner(conn, actor, name)
        if row.service_provider_id is None:
            actor.require_unscoped()
        if row.state != "disabled":
            conn.execute(
                update(t.partners)
                .where(t.partners.c.id == row.id)
                .values(state="disabled", disabled_at=utcnow())
            )
            audit.record(conn, actor, "partner.disable", "partner", row.id, row.service_provider_id)
        result = _partner_public(_load_partner(conn, actor, name))
        uow.commit()
        return result


class PartnerKeyIn(_Input):
    public_key: str = Field(
        max_length=openpgp.MAX_KEY_CHARS, description="ASCII-armored OpenPGP public key"
    )


def replace_partner_key(
    rt: Runtime, actor: Principal, name: str, body: PartnerKeyIn
) -> dict[str, Any]:
    """Give a partner a new key (rotation, or the old one expired); checked as on import."""
    key = _inspect(rt, body.public_key)
    with UnitOfWork(rt) as uow:
        conn = uow.conn
        row = _load_partner(conn, actor, name)
        if row.service_provider_id is None:
            actor.require_unscoped()
        conn.execute(
            update(t.partners)
            .where(t.partners.c.id == row.id)
            .values(
                public_key=body.public_key.strip() + "\n",
                key_fingerprint=key.fingerprint,
                key_user_ids=list(key.user_ids),
                key_expires_at=key.expires_at,
            )
        )
        audit.record(
            conn,
            actor,
            "partner.key",
            "partner",
            row.id,
            row.service_provider_id,
            {"from": row.key_fingerprint, "to": key.fingerprint},
        )
        result = _partner_public(_load_partner(conn, actor, name))
        uow.commit()
        return result


# --- exports: what to export --------------------------------------------------------


@dataclass(frozen=True)
class _Slice:
    """The part of one batch an export covers: a serial range and the batch's columns."""

    batch_id: int
    serial_from: int
    serial_to: int
    dense: bool  # one voucher per serial (generated); imported batches may have gaps
    csv_suffix: str  # ",voucher_type,expires_at,value,currency,batch\n"
    xlsx_suffix: str  # the same cells as spreadsheet XML, closing the row


def _face_values(conn: Connection, voucher_type_ids: set[int]) -> dict[int, tuple[int, str]]:
    """Per voucher type: the default scenario's credit in a currency (value, currency)."""
    sc, cr, bt = t.scenarios, t.scenario_credits, t.balance_types
    rows = conn.execute(
        select(sc.c.voucher_type_id, cr.c.amount, bt.c.currency)
        .join(cr, cr.c.scenario_id == sc.c.id)
        .join(bt, bt.c.id == cr.c.balance_type_id)
        .where(
            sc.c.voucher_type_id.in_(voucher_type_ids),
            sc.c.is_default.is_(True),
            bt.c.currency.is_not(None),
        )
        .order_by(sc.c.voucher_type_id, cr.c.id)
    )
    values: dict[int, tuple[int, str]] = {}
    for row in rows:
        values.setdefault(row.voucher_type_id, (row.amount, row.currency))
    return values


def _select_slices(
    conn: Connection, actor: Principal, body: ExportIn, width: int, now: datetime
) -> tuple[int, list[_Slice]]:
    """The service provider and the exportable batch slices that match the filters."""
    b, vt = t.batches, t.voucher_types
    query = (
        select(
            b.c.id,
            b.c.service_provider_id,
            b.c.voucher_type_id,
            b.c.serial_first,
            b.c.serial_last,
            b.c.expires_at,
            b.c.count,
            vt.c.code,
        )
        .join(vt, vt.c.id == b.c.voucher_type_id)
        .where(
            b.c.state.in_([s.value for s in EXPORTABLE_BATCH_STATES]),
            b.c.expires_at > now,
        )
        .order_by(b.c.serial_first)
    )
    if body.batch_id is not None:
        batch = conn.execute(
            select(b.c.service_provider_id, b.c.state).where(b.c.id == body.batch_id)
        ).first()
        if batch is None:
            raise NotFound(f"batch {body.batch_id} not found")
        actor.require(Permission.EXPORT, batch.service_provider_id)
        if batch.state not in EXPORTABLE_BATCH_STATES:
            raise Conflict(f"batch {body.batch_id} is {batch.state}; its vouchers are not exported")
        # With its parts (range operations split them off, voms.services.ranges).
        query = query.where(or_(b.c.id == body.batch_id, b.c.parent_batch_id == body.batch_id))
    if body.voucher_type is not None:
        vt_row = conn.execute(
            select(vt.c.id, vt.c.service_provider_id).where(vt.c.code == body.voucher_type)
        ).first()
        if vt_row is None:
            raise NotFound(f"voucher type '{body.voucher_type}' not found")
        actor.require(Permission.EXPORT, vt_row.service_provider_id)
        query = query.where(b.c.voucher_type_id == vt_row.id)
    low, high = 0, 10**18
    if body.serial_from is not None and body.serial_to is not None:
        try:
            low, high = parse_serial_range(body.serial_from, body.serial_to, width)
        except Invalid as exc:
            raise Invalid(f"serial range: {exc.detail}") from None
        query = query.where(b.c.serial_first <= high, b.c.serial_last >= low)
    if actor.service_provider_id is not None:
        query = query.where(b.c.service_provider_id == actor.service_provider_id)
    batches = conn.execute(query).all()
    if not batches:
        raise Invalid("no exportable vouchers match these filters")
    providers = {row.service_provider_id for row in batches}
    if len(providers) > 1:
        raise Invalid(
            "the serial range covers several service providers; add voucher_type or batch_id"
        )
    values = _face_values(conn, {row.voucher_type_id for row in batches})
    slices = []
    for row in batches:
        value, currency = values.get(row.voucher_type_id, (None, None))
        tail: list[xlsx.Cell] = [
            row.code,
            row.expires_at.isoformat(timespec="seconds"),
            value,
            currency,
            row.id,
        ]
        slices.append(
            _Slice(
                batch_id=row.id,
                serial_from=max(low, row.serial_first),
                serial_to=min(high, row.serial_last),
                dense=row._mapping["count"] == row.serial_last - row.serial_first + 1,
                csv_suffix=",".join(_csv_cell(v) for v in ["", *tail]) + "\n",
                xlsx_suffix="".join(xlsx.cell(v) for v in tail) + "</row>",
            )
        )
    return providers.pop(), slices


def _in_slice(piece: _Slice, low: int | None = None, high: int | None = None) -> Any:
    v = t.vouchers
    return and_(
        v.c.serial.between(
            piece.serial_from if low is None else low, piece.serial_to if high is None else high
        ),
        # "+ 0": a check, not an access path. Given the batch index, both databases
        # would scan the whole batch for every chunk; the serial range (primary key) is
        # the way in, as batches' serial ranges never overlap.
        v.c.batch_id + 0 == piece.batch_id,
        v.c.state.in_([s.value for s in EXPORTABLE_VOUCHER_STATES]),
        # A voucher sold as an electronic PIN (its batch's part, voms.services.ranges) is
        # never printed.
        ~exists().where(t.sale_vouchers.c.serial == v.c.serial),
    )


def _with_marks() -> Any:
    """Vouchers with the export each went to, if any."""
    v, e = t.vouchers, t.voucher_exports
    return v.outerjoin(e, e.c.serial == v.c.serial)


def _totals(conn: Connection, slices: list[_Slice], reissue: bool) -> tuple[int, int]:
    """How many vouchers match, and how many of them were exported before (counted only
    to refuse an export without reissue; a reissue counts them as it goes)."""
    e = t.voucher_exports
    total = exported = 0
    for piece in slices:
        total += conn.execute(select(func.count()).where(_in_slice(piece))).scalar_one()
        if reissue:
            continue
        # One index probe answers the usual case: nothing in this range went out yet.
        marked = conn.execute(
            select(e.c.serial)
            .where(e.c.serial.between(piece.serial_from, piece.serial_to))
            .limit(1)
        ).first()
        if marked is not None:
            exported += conn.execute(
                select(func.count())
                .select_from(_with_marks())
                .where(_in_slice(piece), e.c.serial.is_not(None))
            ).scalar_one()
    return total, exported


class ExportState(StrEnum):
    EXPORTING = "exporting"  # claiming its vouchers, a chunk per transaction
    EXPORTED = "exported"  # complete: every claimed voucher is in the file
    FAILED = "failed"  # stopped; its marks were undone


@dataclass
class _Progress:
    rows: int = 0
    serial_first: int | None = None
    serial_last: int | None = None
    finished: bool = False


_END = object()


class _TakenMeanwhile(Exception):
    """Some vouchers were marked by another export after the export began."""


@dataclass(frozen=True)
class _Job:
    """An export registered in state exporting, with what running it needs."""

    export_id: int
    service_provider_id: int
    partner: Row[Any]
    body: ExportIn
    slices: list[_Slice]
    total: int  # vouchers that matched when it was registered
    filters: dict[str, Any]
    token: str | None  # the download link's token (API); None when written to a file
    scope: str

    @property
    def envelope(self) -> tuple[int, int]:
        """The serials its marks can lie in."""
        return self.slices[0].serial_from, self.slices[-1].serial_to


class _Claimer:
    """Claims the vouchers for the export in chunks, in serial order, on a thread of
    its own: each chunk is marked and read back (with the encrypted PINs) in a short
    transaction of its own that also counts the export's progress, while this process
    decrypts the previous chunk and gpg encrypts it. A small queue bounds the memory.
    """

    def __init__(self, rt: Runtime, job: _Job) -> None:
        self._rt = rt
        self._job = job
        self._queue: queue.Queue[object] = queue.Queue(maxsize=QUEUE_CHUNKS)
        self._stopping = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(
            target=self._run, name=f"export-{job.export_id}", daemon=True
        )
        self.claimed = 0
        self.reissued = 0  # of the claimed vouchers, those exported before
        self.per_slice: list[tuple[_Slice, int]] = []

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        """Wait until the thread has stopped claiming (at once after the end)."""
        self._stopping.set()
        self._thread.join()

    def chunks(self) -> Iterator[tuple[_Slice, list[tuple[int, bytes, int]]]]:
        while True:
            item = self._queue.get()
            if item is _END:
                if self._error is not None:
                    raise self._error
                return
            yield item  # type: ignore[misc]

    def _put(self, item: object) -> bool:
        while not self._stopping.is_set():
            try:
                self._queue.put(item, timeout=0.2)
                return True
            except queue.Full:
                continue
        return False

    def _run(self) -> None:
        try:
            for piece in self._job.slices:
                count = 0
                for rows in self._claim(piece):
                    count += len(rows)
                    self.claimed += len(rows)
                    if not self._put((piece, rows)):
                        return
                if count:
                    self.per_slice.append((piece, count))
        except BaseException as exc:  # handed to the consumer, raised there
            self._error = exc
        finally:
            self._put(_END)

    def _claim(self, piece: _Slice) -> Iterator[list[tuple[int, bytes, int]]]:
        """The slice's vouchers, a chunk at a time, each chunk marked as this export's.

        Marking and reading see one snapshot (REPEATABLE READ on PostgreSQL; SQLite has
        one writer), so each chunk's marks are exactly its rows in the file. The write
        lock is held for one chunk at a time, never for the whole export.
        """
        v = t.vouchers
        low = piece.serial_from
        while low <= piece.serial_to:
            if self._stopping.is_set():
                return
            with UnitOfWork(self._rt, snapshot=True) as uow:
                conn = uow.conn
                if piece.dense:
                    high = min(low + CLAIM_ROWS - 1, piece.serial_to)
                else:
                    # An imported batch may have gaps: find where CLAIM_ROWS vouchers end.
                    bound = conn.execute(
                        select(v.c.serial)
                        .where(v.c.serial.between(low, piece.serial_to))
                        .order_by(v.c.serial)
                        .offset(CLAIM_ROWS - 1)
                        .limit(1)
                    ).scalar()
                    high = piece.serial_to if bound is None else int(bound)
                reissued = self._mark(conn, piece, low, high)
                rows = conn.execute(
                    select(v.c.serial, v.c.pin_ciphertext, v.c.encryption_key_id)
                    .where(_in_slice(piece, low, high))
                    .order_by(v.c.serial)
                ).all()
                _step(conn, self._job.export_id, len(rows))
                uow.commit()
            self.reissued += reissued
            if rows:
                yield [(row[0], row[1], row[2]) for row in rows]
            low = high + 1

    def _mark(self, conn: Connection, piece: _Slice, low: int, high: int) -> int:
        """Record this export as the latest of each matching voucher from low to high:
        set-based statements, nothing travels to this process. The primary keys on the
        serial make a concurrent export of the same vouchers fail, not hand them out
        twice. A reissue keeps the marks it replaces, to put them back if it fails.
        Returns how many of these vouchers had been exported before."""
        v, e, d = t.vouchers, t.voucher_exports, t.export_displaced_marks
        job = self._job
        matching = select(v.c.serial).where(_in_slice(piece, low, high))
        reissued = 0
        try:
            if job.body.reissue:
                # Kept marks of reissues that completed are no longer needed.
                done = select(t.exports.c.id).where(t.exports.c.state == ExportState.EXPORTED)
                conn.execute(
                    delete(d).where(d.c.serial.between(low, high), d.c.export_id.in_(done))
                )
                conn.execute(
                    insert(d).from_select(
                        ["serial", "export_id", "previous_export_id", "previous_partner_id"],
                        select(
                            e.c.serial,
                            literal(job.export_id, Integer),
                            e.c.export_id,
                            e.c.partner_id,
                        ).where(e.c.serial.between(low, high), e.c.serial.in_(matching)),
                    )
                )
                reissued = conn.execute(
                    delete(e).where(e.c.serial.between(low, high), e.c.serial.in_(matching))
                ).rowcount
            conn.execute(
                insert(e).from_select(
                    ["serial", "export_id", "partner_id"],
                    select(
                        v.c.serial,
                        literal(job.export_id, Integer),
                        literal(job.partner.id, Integer),
                    ).where(_in_slice(piece, low, high)),
                )
            )
        except IntegrityError:
            raise _TakenMeanwhile() from None
        return int(reissued)


def _step(conn: Connection, export_id: int, claimed: int) -> None:
    """Count a chunk into the export's progress; refuse if it stopped exporting."""
    x = t.exports
    still_exporting = conn.execute(
        update(x)
        .where(x.c.id == export_id, x.c.state == ExportState.EXPORTING)
        .values(exported_count=x.c.exported_count + claimed, updated_at=utcnow())
    ).rowcount
    if not still_exporting:
        raise Conflict(f"export {export_id} was stopped meanwhile")


Chunk = tuple[_Slice, list[tuple[int, bytes, int]]]  # (slice, [(serial, ciphertext, key id)])


def _tracked(chunks: Iterator[Chunk], state: _Progress) -> Generator[Chunk, None, None]:
    for piece, rows in chunks:
        if state.serial_first is None:
            state.serial_first = rows[0][0]
        state.serial_last = rows[-1][0]
        state.rows += len(rows)
        yield piece, rows


# The formatters decrypt each PIN inside the one expression that writes its line: one
# pass per chunk, and the plaintext lives only in that chunk's string.


def _csv_cell(value: object) -> str:
    """A CSV cell a spreadsheet shows as text: one starting with = + - @ would be run as
    a formula (a voucher type code made before codes had to start with a letter or
    digit, say), so it gets a leading apostrophe."""
    text = "" if value is None else str(value)
    return "'" + text if text[:1] in ("=", "+", "-", "@") else text


def _csv(
    chunks: Iterator[Chunk], rt: Runtime, progress: Callable[[], None]
) -> Generator[bytes, None, None]:
    decrypt = rt.keyring.pin_decryptor()
    width = rt.settings.serial_width
    yield (",".join(EXPORT_COLUMNS) + "\n").encode()
    for piece, rows in chunks:
        tail = piece.csv_suffix
        yield "".join(
            [f"{serial:0{width}d},{decrypt(key, blob)}{tail}" for serial, blob, key in rows]
        ).encode()
        progress()


def _xlsx(
    chunks: Iterator[Chunk], rt: Runtime, progress: Callable[[], None]
) -> Generator[bytes, None, None]:
    decrypt = rt.keyring.pin_decryptor()
    width = rt.settings.serial_width

    def sheet_rows() -> Iterator[str]:
        yield xlsx.row(EXPORT_COLUMNS)
        for piece, rows in chunks:
            tail = piece.xlsx_suffix
            # Serials and PINs are digits: no XML escaping needed.
            yield "".join(
                [
                    f'<row><c t="inlineStr"><is><t>{serial:0{width}d}</t></is></c>'
                    f'<c t="inlineStr"><is><t>{decrypt(key, blob)}</t></is></c>{tail}'
                    for serial, blob, key in rows
                ]
            )
            progress()

    return xlsx.stream_xlsx(sheet_rows(), sheet_name="vouchers")


class _Ciphertext:
    """Where gpg's output goes: the caller's file or a spool, hashed on the way."""

    def __init__(self, output: IO[bytes] | None) -> None:
        self.digest = hashlib.sha256()
        self.size = 0
        # Ciphertext only, so it may overflow into a temporary file.
        self.spool: IO[bytes] | None = (
            None if output is not None else tempfile.SpooledTemporaryFile(max_size=SPOOL_BYTES)  # noqa: SIM115
        )
        self.target: IO[bytes] = output or self.spool  # type: ignore[assignment]

    def write(self, chunk: bytes) -> None:
        self.digest.update(chunk)
        self.size += len(chunk)
        self.target.write(chunk)


def _store_file(rt: Runtime, export_id: int, spool: IO[bytes]) -> None:
    """The encrypted file into the database, a few pieces per transaction."""
    spool.seek(0)
    seq = 0
    while True:
        with UnitOfWork(rt) as uow:
            conn = uow.conn
            for _ in range(FILE_CHUNKS_PER_TRANSACTION):
                chunk = spool.read(FILE_CHUNK_BYTES)
                if not chunk:
                    uow.commit()
                    return
                conn.execute(
                    insert(t.export_file_chunks).values(export_id=export_id, seq=seq, data=chunk)
                )
                seq += 1
            uow.commit()


def _token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def _fingerprint(rt: Runtime, body: ExportIn) -> str:
    return idempotency.fingerprint(
        rt.keyring, "export.create", body.model_dump(exclude={"request_id"}, mode="json")
    )


def _replay_or_register(
    rt: Runtime, actor: Principal, body: ExportIn, *, keep_file: bool
) -> dict[str, Any] | _Job:
    """The export an earlier request with this id made, or a new one, registered."""
    actor.require(Permission.EXPORT)
    purge_export_files(rt)
    try:
        return _register(rt, actor, body, _fingerprint(rt, body), keep_file=keep_file)
    except AnsweredBefore as again:
        return _replay(rt, actor, int(again.first.body["export_id"]))


def create_export(
    rt: Runtime,
    actor: Principal,
    body: ExportIn,
    *,
    output: IO[bytes] | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> dict[str, Any]:
    """Export matching vouchers encrypted to the partner's key, now; record it and mark them.

    With ``output`` the encrypted file is written there (CLI); without, it is kept for
    a download link whose one-time token is returned as ``download_token`` (API).
    ``progress(done, total)`` is called as vouchers are written. A failure undoes
    everything, the export's record included.
    """
    job = _replay_or_register(rt, actor, body, keep_file=output is None)
    if not isinstance(job, _Job):
        return job
    return _run(rt, actor, job, output, progress, keep_failed=False)


def order_export(rt: Runtime, actor: Principal, body: ExportIn) -> dict[str, Any]:
    """POST /exports: export now up to VOMS_BACKGROUND_EXPORT_THRESHOLD vouchers; above
    it, answer the export in state exporting and run it in a daemon thread (GET shows its
    progress; a failure leaves it failed, with the reason)."""
    job = _replay_or_register(rt, actor, body, keep_file=True)
    if not isinstance(job, _Job):
        return job
    if job.total <= rt.settings.background_export_threshold:
        return _run(rt, actor, job, None, None, keep_failed=False)
    with UnitOfWork(rt, read_only=True) as uow:
        record = _export_public(uow.conn, job.export_id, rt.settings.serial_width)
    record["download_token"] = job.token
    _in_background(rt, actor, job)
    return record


def _in_background(rt: Runtime, actor: Principal, job: _Job) -> threading.Thread:
    def run() -> None:
        try:
            _run(rt, actor, job, None, None, keep_failed=True)
        except Exception:  # already recorded on the export and logged by _run
            return

    thread = threading.Thread(target=run, name=f"export-run-{job.export_id}", daemon=True)
    thread.start()
    return thread


def _register(
    rt: Runtime, actor: Principal, body: ExportIn, fingerprint: str, *, keep_file: bool
) -> _Job:
    """Check the export and record it in state exporting (one short transaction)."""
    scope = idempotency.scope_of(actor)
    with UnitOfWork(rt) as uow:
        conn, now = uow.conn, uow.started_at
        uow.idempotent(scope, body.request_id, fingerprint)
        partner = _load_partner(conn, actor, body.partner)
        if partner.state != "active":
            raise Conflict(f"partner '{body.partner}' is disabled")
        sp_id, slices = _select_slices(conn, actor, body, rt.settings.serial_width, now)
        if partner.service_provider_id not in (None, sp_id):
            raise Forbidden(f"partner '{body.partner}' does not serve this service provider")
        total, exported_before = _totals(conn, slices, body.reissue)
        if total == 0:
            raise Invalid("no exportable vouchers match these filters")
        if exported_before and not body.reissue:
            raise Conflict(
                f"{exported_before} of the {total} matching vouchers were exported before; "
                "export them again with reissue (CLI: --reissue), or narrow the filters"
            )
        if body.format == "xlsx" and total > XLSX_MAX_VOUCHERS:
            raise Invalid(f"a spreadsheet holds at most {XLSX_MAX_VOUCHERS} vouchers; use csv")
        filters = {
            "batch_id": body.batch_id,
            "serial_from": None if body.serial_from is None else str(body.serial_from),
            "serial_to": None if body.serial_to is None else str(body.serial_to),
            "voucher_type": body.voucher_type,
        }
        token = secrets.token_urlsafe(32) if keep_file else None
        export_id = conn.execute(
            insert(t.exports)
            .values(
                service_provider_id=sp_id,
                partner_id=partner.id,
                format=body.format,
                filters=filters,
                reissue=body.reissue,
                voucher_count=total,
                reissued_count=0,
                # Until it is exported: the serials its marks can lie in.
                serial_first=slices[0].serial_from,
                serial_last=slices[-1].serial_to,
                key_fingerprint=partner.key_fingerprint,
                file_name="",
                sha256="",
                size_bytes=0,
                download_token_hash=None if token is None else _token_hash(token),
                created_by=actor.name,
                created_at=now,
                state=ExportState.EXPORTING,
                exported_count=0,
                updated_at=now,
            )
            .returning(t.exports.c.id)
        ).scalar_one()
        uow.answer({"export_id": export_id}, 201)
        uow.commit()
    return _Job(export_id, sp_id, partner, body, slices, total, filters, token, scope)


def _run(
    rt: Runtime,
    actor: Principal,
    job: _Job,
    output: IO[bytes] | None,
    progress: Callable[[int, int], None] | None,
    *,
    keep_failed: bool,
) -> dict[str, Any]:
    """Write the file of a registered export; on any failure undo its marks, and keep
    its record as failed (``keep_failed``) or delete it."""
    try:
        try:
            return _write(rt, actor, job, output, progress)
        except _TakenMeanwhile:
            raise Conflict(
                "another export took some of these vouchers meanwhile; try again"
            ) from None
        except DBAPIError as exc:
            # REPEATABLE READ on PostgreSQL: a concurrent export changed the same marks.
            if getattr(exc.orig, "sqlstate", None) in ("40001", "40P01"):
                raise Conflict("a concurrent export got in the way; try again") from None
            raise
    except BaseException as exc:
        reason = exc.detail if isinstance(exc, VomsError) else type(exc).__name__
        log.error("export %s failed: %s", job.export_id, reason)
        _abandon(rt, actor, job, reason, keep_record=keep_failed)
        raise


def _write(
    rt: Runtime,
    actor: Principal,
    job: _Job,
    output: IO[bytes] | None,
    progress: Callable[[int, int], None] | None,
) -> dict[str, Any]:
    body, export_id = job.body, job.export_id
    state = _Progress()

    def advance() -> None:
        if progress is not None:
            progress(state.rows, job.total)

    claimer = _Claimer(rt, job)
    rows = _tracked(claimer.chunks(), state)
    formatter = _csv if body.format == "csv" else _xlsx
    plaintext = formatter(rows, rt, advance)

    def completed() -> Iterator[bytes]:
        yield from plaintext
        state.finished = True

    file_name = f"voms-export-{export_id}.{body.format}"
    sink = _Ciphertext(output)
    try:
        claimer.start()
        try:
            key = openpgp.encrypt_stream(
                job.partner.public_key,
                completed(),
                sink.write,
                filename=file_name,
                gpg_binary=rt.settings.gpg_binary,
                compress=body.format == "csv",  # an XLSX file is a zip already
            )
        except openpgp.KeyRefused as exc:
            raise Conflict(
                f"partner '{body.partner}': {exc}; give it a new key (voms partner set-key)"
            ) from None
        finally:
            claimer.stop()
            plaintext.close()
            rows.close()
        claimed = claimer.claimed
        if claimed == 0:
            raise Conflict("the matching vouchers changed meanwhile; nothing was exported")
        if not state.finished or state.rows != claimed:
            raise openpgp.EncryptionFailed(f"wrote {state.rows} of {claimed} vouchers")
        if sink.spool is not None:
            _store_file(rt, export_id, sink.spool)
        now = utcnow()
        x = t.exports
        with UnitOfWork(rt) as uow:
            conn = uow.conn
            done = conn.execute(
                update(x)
                .where(x.c.id == export_id, x.c.state == ExportState.EXPORTING)
                .values(
                    state=ExportState.EXPORTED,
                    voucher_count=claimed,
                    exported_count=claimed,
                    reissued_count=claimer.reissued,
                    serial_first=state.serial_first,
                    serial_last=state.serial_last,
                    key_fingerprint=key.fingerprint,
                    file_name=file_name + ".gpg",
                    sha256=sink.digest.hexdigest(),
                    size_bytes=sink.size,
                    download_expires_at=None
                    if job.token is None
                    else now + timedelta(minutes=rt.settings.export_link_minutes),
                    updated_at=now,
                )
            ).rowcount
            if not done:
                raise Conflict(f"export {export_id} was stopped meanwhile")
            for piece, count in claimer.per_slice:
                record_event(
                    conn,
                    actor,
                    "reissue" if body.reissue else "export",
                    batch_id=piece.batch_id,
                    serial_from=piece.serial_from,
                    serial_to=piece.serial_to,
                    affected=count,
                    detail={"export_id": export_id, "partner": job.partner.name},
                    now=now,
                )
            audit.record(
                conn,
                actor,
                "export.reissue" if body.reissue else "export.create",
                "export",
                export_id,
                job.service_provider_id,
                {
                    "partner": body.partner,
                    "filters": job.filters,
                    "format": body.format,
                    "count": claimed,
                    "reissued_count": claimer.reissued,
                    "sha256": sink.digest.hexdigest(),
                },
            )
            record = _export_public(conn, export_id, rt.settings.serial_width)
            uow.commit()
        if body.reissue:
            _drop_displaced(rt, job)
        record["download_token"] = job.token
        return record
    finally:
        if sink.spool is not None:
            sink.spool.close()


# --- exports: undoing one that failed ------------------------------------------------


def _drop_displaced(rt: Runtime, job: _Job) -> None:
    """Forget the marks a complete reissue replaced. Best effort: the export is complete
    already, and a later reissue of these vouchers drops what is left."""
    try:
        _in_steps(rt, t.export_displaced_marks, *job.envelope, _dropper(job.export_id))
    except Exception as exc:
        name = type(exc).__name__
        log.warning("export %s: its replaced marks stay for now (%s)", job.export_id, name)


Step = Callable[[Connection, int, int], None]


def _in_steps(rt: Runtime, table: Table, low: int, high: int, step: Step) -> None:
    """``step(conn, a, b)`` over [low, high], each piece holding at most UNDO_ROWS rows of
    ``table`` (keyed by serial) and done in a transaction of its own."""
    while low <= high:
        with UnitOfWork(rt) as uow:
            conn = uow.conn
            bound = conn.execute(
                select(table.c.serial)
                .where(table.c.serial.between(low, high))
                .order_by(table.c.serial)
                .offset(UNDO_ROWS - 1)
                .limit(1)
            ).scalar()
            top = high if bound is None else int(bound)
            step(conn, low, top)
            uow.commit()
        low = top + 1


def _dropper(export_id: int) -> Step:
    d = t.export_displaced_marks

    def drop(conn: Connection, low: int, high: int) -> None:
        conn.execute(delete(d).where(d.c.serial.between(low, high), d.c.export_id == export_id))

    return drop


def _undoer(export_id: int, reissue: bool) -> Step:
    """Take an export's marks off its vouchers, and give a reissue's back their earlier."""
    e, d = t.voucher_exports, t.export_displaced_marks

    def undo(conn: Connection, low: int, high: int) -> None:
        conn.execute(delete(e).where(e.c.serial.between(low, high), e.c.export_id == export_id))
        if reissue:
            conn.execute(
                insert(e).from_select(
                    ["serial", "export_id", "partner_id"],
                    select(d.c.serial, d.c.previous_export_id, d.c.previous_partner_id).where(
                        d.c.serial.between(low, high), d.c.export_id == export_id
                    ),
                )
            )
            _dropper(export_id)(conn, low, high)

    return undo


def _stop(rt: Runtime, export_id: int, reason: str, before: datetime | None = None) -> bool:
    """exporting → failed (an export stepping later finds it stopped); False if it was not
    exporting, or (``before``) stepped since."""
    x = t.exports
    condition = [x.c.id == export_id, x.c.state == ExportState.EXPORTING]
    if before is not None:
        condition.append(x.c.updated_at < before)
    with UnitOfWork(rt) as uow:
        conn = uow.conn
        changed = conn.execute(
            update(x)
            .where(*condition)
            .values(
                state=ExportState.FAILED,
                error=reason[:500],
                updated_at=utcnow(),
            )
        ).rowcount
        uow.commit()
        return bool(changed)


def _undo(rt: Runtime, export_id: int, reissue: bool, low: int, high: int) -> None:
    _in_steps(rt, t.voucher_exports, low, high, _undoer(export_id, reissue))
    with UnitOfWork(rt) as uow:
        conn = uow.conn
        conn.execute(
            delete(t.export_file_chunks).where(t.export_file_chunks.c.export_id == export_id)
        )
        uow.commit()


def _abandon(rt: Runtime, actor: Principal, job: _Job, reason: str, *, keep_record: bool) -> None:
    """Stop a failed export and undo its marks; keep its record as failed, or delete it
    with its request id (the caller got the error: as if it had never been)."""
    try:
        if not _stop(rt, job.export_id, reason):
            return  # not exporting any more: fail_stalled_exports has undone it already
        _undo(rt, job.export_id, job.body.reissue, *job.envelope)
        with UnitOfWork(rt) as uow:
            conn = uow.conn
            if keep_record:
                audit.record(
                    conn,
                    actor,
                    "export.failed",
                    "export",
                    job.export_id,
                    job.service_provider_id,
                    {"partner": job.body.partner, "filters": job.filters, "error": reason},
                )
                uow.commit()
                return
            conn.execute(delete(t.exports).where(t.exports.c.id == job.export_id))
            if job.body.request_id is not None:
                k = t.idempotency_keys
                conn.execute(
                    delete(k).where(k.c.scope == job.scope, k.c.request_id == job.body.request_id)
                )
            uow.commit()
    except Exception as exc:
        # The export stays exporting, or failed with marks left: fail_stalled_exports
        # finishes the undo once it has not stepped for STALLED_AFTER.
        log.error("export %s: undoing it failed (%s)", job.export_id, type(exc).__name__)


def fail_stalled_exports(rt: Runtime, now: datetime | None = None) -> list[int]:
    """Mark failed, and undo, the exports still exporting without a step for
    STALLED_AFTER: the process running them died (each chunk is a step)."""
    before = (now or utcnow()) - STALLED_AFTER
    x = t.exports
    with UnitOfWork(rt, read_only=True) as uow:
        conn = uow.conn
        stalled = conn.execute(
            select(x.c.id, x.c.reissue, x.c.serial_first, x.c.serial_last).where(
                x.c.state == ExportState.EXPORTING, x.c.updated_at < before
            )
        ).all()
    failed = []
    for row in stalled:
        # Conditional again: an export that stepped meanwhile is alive and left alone.
        if _stop(rt, row.id, "stalled", before):
            _undo(rt, row.id, row.reissue, row.serial_first, row.serial_last)
            log.warning("export %s marked failed: it had stopped", row.id)
            failed.append(row.id)
    return failed


def _replay(rt: Runtime, actor: Principal, export_id: int) -> dict[str, Any]:
    """The export an earlier request with this id made, as it is now, with a new
    download token when its file is (or will be) kept: the first answer, and so its
    token, may have been lost."""
    with UnitOfWork(rt) as uow:
        conn, now = uow.conn, uow.started_at
        row = _load_export(conn, actor, export_id)
        token = None
        running = row.state == ExportState.EXPORTING and row.download_token_hash is not None
        if running or (row.download_expires_at is not None and row.download_expires_at > now):
            token = secrets.token_urlsafe(32)
            conn.execute(
                update(t.exports)
                .where(t.exports.c.id == export_id)
                .values(download_token_hash=_token_hash(token))
            )
        record = _export_public_row(row, rt.settings.serial_width)
        uow.commit()
    record["download_token"] = token
    return record


# --- exports: records and downloads -------------------------------------------------


def _export_query() -> Any:
    e, p, sp = t.exports, t.partners, t.service_providers
    return (
        select(e, p.c.name.label("partner_name"), sp.c.code.label("sp_code"))
        .join(p, p.c.id == e.c.partner_id)
        .join(sp, sp.c.id == e.c.service_provider_id)
    )


def _export_public_row(row: Row[Any], width: int) -> dict[str, Any]:
    return {
        "export_id": row.id,
        "partner": row.partner_name,
        "service_provider": row.sp_code,
        "format": row.format,
        "filters": row.filters,
        "reissue": row.reissue,
        "voucher_count": row.voucher_count,
        "reissued_count": row.reissued_count,
        "serial_first": None
        if row.serial_first is None
        else format_serial(row.serial_first, width),
        "serial_last": None if row.serial_last is None else format_serial(row.serial_last, width),
        "key_fingerprint": row.key_fingerprint,
        "file_name": row.file_name,
        "sha256": row.sha256,
        "size_bytes": row.size_bytes,
        "download_expires_at": row.download_expires_at,
        "created_by": row.created_by,
        "created_at": row.created_at,
        "state": row.state,
        "exported_count": row.exported_count,
        "updated_at": row.updated_at,
        "error": row.error,
    }


def _export_public(conn: Connection, export_id: int, width: int) -> dict[str, Any]:
    return _export_public_row(
        conn.execute(_export_query().where(t.exports.c.id == export_id)).one(), width
    )


def _load_export(conn: Connection, actor: Principal, export_id: int) -> Row[Any]:
    row = conn.execute(_export_query().where(t.exports.c.id == export_id)).first()
    if row is None:
        raise NotFound(f"export {export_id} not found")
    actor.require(Permission.EXPORT, row.service_provider_id)
    return row


def get_export(rt: Runtime, actor: Principal, export_id: int) -> dict[str, Any]:
    with UnitOfWork(rt, read_only=True) as uow:
        conn = uow.conn
        return _export_public_row(_load_export(conn, actor, export_id), rt.settings.serial_width)


def list_exports(
    rt: Runtime,
    actor: Principal,
    *,
    partner: str | None = None,
    before_id: int | None = None,
    limit: int = 100,
) -> list[dict[str, Any]]:
    """Exports, newest first, optionally to one partner; ``before_id`` pages on."""
    actor.require(Permission.EXPORT)
    query = _export_query().order_by(t.exports.c.id.desc()).limit(max(1, min(limit, 1000)))
    if before_id is not None:
        query = query.where(t.exports.c.id < before_id)
    if partner is not None:
        query = query.where(t.partners.c.name == partner)
    if actor.service_provider_id is not None:
        query = query.where(t.exports.c.service_provider_id == actor.service_provider_id)
    with UnitOfWork(rt, read_only=True) as uow:
        conn = uow.conn
        return [_export_public_row(row, rt.settings.serial_width) for row in conn.execute(query)]


@dataclass(frozen=True)
class ExportFile:
    file_name: str
    size_bytes: int
    sha256: str
    chunks: Iterator[bytes]


def open_export_file(rt: Runtime, actor: Principal, export_id: int, token: str) -> ExportFile:
    """The encrypted file behind a download link: right role and provider, valid token,
    link not expired. Each download is audited."""
    now = utcnow()
    with UnitOfWork(rt) as uow:
        conn = uow.conn
        row = _load_export(conn, actor, export_id)
        if row.download_token_hash is None:
            raise NotFound(f"export {export_id} was written to a file; it has no download link")
        if not hmac.compare_digest(_token_hash(token), row.download_token_hash):
            raise Forbidden("invalid download token")
        if row.state != ExportState.EXPORTED:
            raise Conflict(f"export {export_id} is {row.state}; it has no file to download")
        if row.download_expires_at is None or row.download_expires_at <= now:
            raise LinkExpired(f"the download link of export {export_id} has expired")
        chunk_count = conn.execute(
            select(func.count()).where(t.export_file_chunks.c.export_id == export_id)
        ).scalar_one()
        if chunk_count == 0:
            raise LinkExpired(f"the file of export {export_id} is no longer kept")
        audit.record(
            conn, actor, "export.download", "export", export_id, row.service_provider_id, {}
        )
        uow.commit()

    def chunks() -> Iterator[bytes]:
        c = t.export_file_chunks
        for seq in range(chunk_count):
            with UnitOfWork(rt, read_only=True) as uow:
                conn = uow.conn
                yield conn.execute(
                    select(c.c.data).where(c.c.export_id == export_id, c.c.seq == seq)
                ).scalar_one()

    return ExportFile(row.file_name, row.size_bytes, row.sha256, chunks())


def purge_export_files(rt: Runtime, now: datetime | None = None) -> int:
    """Delete the kept files of exports whose download link has expired, and fail the
    exports that stalled (:func:`fail_stalled_exports`).

    Returns the number of file chunks deleted.
    """
    fail_stalled_exports(rt, now)
    expired = select(t.exports.c.id).where(t.exports.c.download_expires_at <= (now or utcnow()))
    with UnitOfWork(rt) as uow:
        conn = uow.conn
        result = conn.execute(
            delete(t.export_file_chunks).where(t.export_file_chunks.c.export_id.in_(expired))
        )
        uow.commit()
    return int(result.rowcount)
