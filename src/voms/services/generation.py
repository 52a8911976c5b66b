"""Voucher generation: a serial range, PINs born secret, chunks streamed into the database.

A batch row (state ``generating``) and its serial range are committed first. Chunks of
vouchers (PIN → keyed hash + AES-GCM ciphertext; the PIN itself is dropped at once) are
made in worker processes for large batches and written in large transactions, each
committing the batch's progress with the vouchers it counts. Only a batch whose every
voucher is written becomes ``generated``; any error marks it ``failed``. Neither a
generating nor a failed batch can ever be activated, so their vouchers are never
redeemable or exportable.
"""

import importlib.util
import logging
import os
import sys
import threading
from collections import deque
from collections.abc import Callable, Generator, Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from contextlib import closing, contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta
from multiprocessing import get_context
from typing import Annotated, Any

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, StringConstraints
from sqlalchemy import (
    BigInteger,
    Connection,
    LargeBinary,
    any_,
    bindparam,
    delete,
    func,
    insert,
    literal,
    select,
    text,
    union_all,
    update,
)
from sqlalchemy.dialects.postgresql import ARRAY

from voms.db import bulk
from voms.db import tables as t
from voms.db.types import utcnow
from voms.domain.errors import Conflict, Invalid, VomsError
from voms.domain.roles import Permission
from voms.domain.states import BatchAction, BatchState, next_batch_state
from voms.runtime import Runtime
from voms.services import archive, audit, idempotency
from voms.services.auth import Principal
from voms.services.catalog import load_voucher_type
from voms.services.lifecycle import batch_size, batch_view, load_batch, record_event
from voms.services.sealing import (
    VOUCHER_COLUMNS,
    RandomBytes,
    Sealed,
    SealedCopy,
    Sealer,
    VoucherRow,
    ready,
    seal_copy,
    seal_copy_in_worker,
    seal_in_worker,
)
from voms.services.uow import AnsweredBefore, UnitOfWork

log = logging.getLogger("voms.generation")

MAX_BATCH_COUNT = 10_000_000
# A batch may use at most this share of its PIN space, so that drawing unique PINs
# stays cheap (at 10 %, one draw in ten collides at the very end of such a batch).
MAX_SPACE_SHARE = 10
MAX_WRITE_ATTEMPTS = 50
# Chunks made ahead of the writer per worker: enough to keep both busy, little memory.
CHUNKS_AHEAD_PER_WORKER = 2
# While no worker chunk is ready, the writer seals pieces this much smaller itself.
PIECES_A_CHUNK = 8

Progress = Callable[[int], None]


class BatchIn(BaseModel):
    """POST /api/v1/batches."""

    model_config = ConfigDict(extra="forbid")

    voucher_type: Annotated[str, StringConstraints(min_length=1, max_length=32)]
    count: Annotated[int, Field(ge=1, le=MAX_BATCH_COUNT)]
    expires_at: AwareDatetime | None = None
    request_id: Annotated[str, StringConstraints(min_length=1, max_length=100)] | None = None


def default_workers() -> int:
    """Crypto worker processes: one per core beside the one that writes."""
    return max(1, min(4, (os.cpu_count() or 2) - 1))


def workers_for(count: int, chunk_size: int) -> int:
    """How many crypto workers :func:`fill_batch` uses for ``count`` vouchers (0: none)."""
    return default_workers() if count > 2 * chunk_size else 0


class Workers:
    """Crypto worker processes, started at once: they take a moment to start, which the
    caller may spend on something else (``voms batch generate`` creates the batch)."""

    def __init__(self, count: int) -> None:
        self.count = count
        self.pool = ProcessPoolExecutor(max_workers=count, mp_context=get_context("spawn"))
        with _light_spawn():  # each first task starts a process
            for _ in range(count):
                self.pool.submit(ready)

    def close(self) -> None:
        self.pool.shutdown(wait=True, cancel_futures=True)


@contextmanager
def started_workers(count: int) -> Iterator[Workers | None]:
    """``count`` crypto workers for :func:`fill_batch` (none for 0), stopped at the end."""
    workers = Workers(count) if count else None
    try:
        yield workers
    finally:
        if workers is not None:
            workers.close()


def _chunks(
    sealer: Sealer,
    spans: list[tuple[int, int]],
    chunk_size: int,
    workers: Workers | None,
    randbytes: RandomBytes,
    binary: bool = False,
) -> Generator[Sealed | SealedCopy, None, None]:
    """The rows of the serial ranges ``spans`` (first, last), chunk by chunk; at most a
    few chunks in memory. A chunk never spans two ranges.

    Worker processes seal ahead of the writer. Whenever the next worker chunk is not
    ready (the workers take a moment to start), this process seals a small piece itself
    rather than wait: the database is kept busy from the start, and idles for no longer
    than a piece takes. With ``binary``, chunks come as binary COPY streams
    (:class:`SealedCopy`). Chunks may come out of serial order.
    """
    left = deque(spans)
    position = end = 0

    def next_span() -> None:
        nonlocal position, end
        if left:
            first, last = left.popleft()
            position, end = first, last + 1

    def take(size: int) -> tuple[int, int]:
        nonlocal position
        start, position = position, min(end, position + size)
        taken = position - start
        if position == end:
            next_span()
        return start, taken

    next_span()

    def here(size: int) -> Sealed | SealedCopy:
        start, size = take(size)
        if binary:
            return seal_copy(sealer, range(start, start + size), randbytes)
        return sealer.seal_chunk(range(start, start + size), randbytes=randbytes)

    if workers is None:
        while position < end:
            yield here(chunk_size)
        return
    in_worker = seal_copy_in_worker if binary else seal_in_worker
    ahead: deque[Future[Sealed | SealedCopy]] = deque()

    def submit() -> None:
        if position < end:
            assert workers is not None
            start, size = take(chunk_size)
            ahead.append(workers.pool.submit(in_worker, sealer, start, size))

    try:
        for _ in range(workers.count * CHUNKS_AHEAD_PER_WORKER):
            submit()
        while ahead:
            if not ahead[0].done() and position < end:
                yield here(max(1, chunk_size // PIECES_A_CHUNK))
                continue
            rows = ahead.popleft().result()
            submit()
            yield rows
    finally:
        for future in ahead:
            future.cancel()


@contextmanager
def _light_spawn() -> Iterator[None]:
    """Spawned workers run the parent's ``__main__`` again, by file when it was started
    as a script: for ``voms`` that is the whole CLI and its imports (a second or more of
    a core at each start). Named after the sealing module instead while they start, they
    import only that."""
    main = sys.modules["__main__"]
    if getattr(main, "__spec__", None) is not None or not getattr(main, "__file__", None):
        yield  # started with -m (named already) or interactively (nothing to run)
        return
    main.__spec__ = importlib.util.find_spec("voms.services.sealing")
    try:
        yield
    finally:
        main.__spec__ = None


# --- writing ------------------------------------------------------------------------


def write_chunk(
    conn: Connection,
    sealer: Sealer,
    rows: list[VoucherRow],
    randbytes: RandomBytes = os.urandom,
    aliases: dict[bytes, int] | None = None,
) -> None:
    """Write one chunk; PINs that collide with earlier vouchers are drawn again.

    The UNIQUE lookup hash is the arbiter, also against other batches generated at the
    same moment. Collisions are rare (several per ten million), so the load is
    optimistic and only the rows it had to leave out are sealed again. ``aliases`` (the
    PINs' hashes under the other live lookup keys, from :meth:`Sealer.seal_chunk`) are
    looked up too, so no PIN issued before a key rotation is issued again.
    """
    avoid: set[bytes] = set()  # made on the first collision only: the fast path skips it
    aliases = aliases or {}
    for _ in range(MAX_WRITE_ATTEMPTS):
        left_out = bulk.load(conn, t.vouchers, VOUCHER_COLUMNS, rows, skip_taken="pin_hash")
        left_out += _withdraw_issued(conn, rows, aliases, left_out)
        if not left_out:
            return
        log.info("batch %s: %d PIN collisions, drawn again", sealer.batch_id, len(left_out))
        if not avoid:
            avoid = {row[2] for row in rows}  # the whole chunk, left-out rows included
        again = sealer.seal_chunk([row[0] for row in left_out], avoid=avoid, randbytes=randbytes)
        rows, aliases = again.rows, again.aliases
        avoid.update(row[2] for row in rows)
    raise Conflict("could not draw unique PINs: the PIN space of this voucher type is full")


def write_copy(
    conn: Connection, sealer: Sealer, sealed: SealedCopy, randbytes: RandomBytes = os.urandom
) -> None:
    """Write one chunk made by :func:`seal_copy`: one binary COPY, no per-row work here.

    On a PIN collision (the COPY fails on the UNIQUE lookup hash, and nothing of it was
    written) or a PIN an archived voucher had, the chunk takes :func:`write_chunk`'s
    path, row by row.
    """
    try:
        with conn.begin_nested():
            bulk.copy_binary(conn, t.vouchers, VOUCHER_COLUMNS, sealed.data)
    except Exception as exc:
        if getattr(exc, "sqlstate", None) != bulk.UNIQUE_VIOLATION:
            raise
        write_chunk(conn, sealer, sealed.rows(), randbytes)
        return
    if not archive.any_archived(conn):
        return
    # Which of the chunk's PINs an archived voucher had, asked of the database over the
    # chunk's serial range: sending 20,000 hashes as a parameter cost the writer more
    # than the COPY itself once anything was archived.
    taken = archive.archived_in(conn, *sealed.serial_span())
    if taken:
        rows = sealed.rows()
        again = [row for row in rows if row[0] in taken]
        conn.execute(delete(t.vouchers).where(t.vouchers.c.serial.in_([r[0] for r in again])))
        log.info("batch %s: %d PINs archived before, drawn again", sealer.batch_id, len(again))
        avoid = {row[2] for row in rows}
        write_chunk(
            conn, sealer, sealer.seal([row[0] for row in again], avoid, randbytes), randbytes
        )


def _withdraw_issued(
    conn: Connection,
    rows: list[VoucherRow],
    aliases: dict[bytes, int],
    left_out: list[VoucherRow],
) -> list[VoucherRow]:
    """Written rows whose PIN an archived voucher had, or a voucher under another live
    lookup key: deleted again, to be redrawn.

    Checked after the load, in its transaction: a voucher archived meanwhile is either
    still in ``vouchers`` (the load left the row out) or already in the archive.
    """
    skipped = {row[0] for row in left_out}
    written = [row for row in rows if row[0] not in skipped]
    taken = archive.archived_hashes(conn, [row[2] for row in written])
    taken_serials = {row[0] for row in written if row[2] in taken}
    if aliases:
        # Set-based: one statement per chunk finds the PINs issued under older keys.
        taken_serials.update(aliases[h] for h in issued_hashes(conn, list(aliases)))
    taken_serials -= skipped
    if not taken_serials:
        return []
    again = [row for row in written if row[0] in taken_serials]
    conn.execute(delete(t.vouchers).where(t.vouchers.c.serial.in_([row[0] for row in again])))
    return again


_IN_BATCH = 500
_VOUCHER_HASHES = select(t.vouchers.c.pin_hash).where(
    t.vouchers.c.pin_hash == any_(bindparam("hashes", type_=ARRAY(LargeBinary)))
)


def issued_hashes(conn: Connection, hashes: list[bytes]) -> set[bytes]:
    """Which of ``hashes`` belong to a voucher, in ``vouchers`` or in the archive.

    PostgreSQL answers a whole chunk in one round trip (each value one probe of the
    UNIQUE index); SQLite, in process, takes them a few hundred at a time.
    """
    if not hashes:
        return set()
    found = archive.archived_hashes(conn, hashes)
    if conn.dialect.name == "postgresql":
        found.update(conn.execute(_VOUCHER_HASHES, {"hashes": hashes}).scalars())
        return found
    v = t.vouchers
    for start in range(0, len(hashes), _IN_BATCH):
        part = hashes[start : start + _IN_BATCH]
        found.update(conn.execute(select(v.c.pin_hash).where(v.c.pin_hash.in_(part))).scalars())
    return found


# --- the batch --------------------------------------------------------------------------


@dataclass(frozen=True)
class Created:
    batch: dict[str, Any]
    is_new: bool  # False when a request id replayed an earlier batch


def allocate_serials(conn: Connection, count: int, width: int) -> int:
    """Reserve ``count`` consecutive serials; returns the first.

    One conditional UPDATE … RETURNING on the counter row: concurrent batches queue on
    that row and get disjoint ranges; no sequence semantics are relied on.
    """
    new_next = conn.execute(
        text(
            "UPDATE counters SET next_value = next_value + :n "
            "WHERE name = 'serial' AND next_value + :n <= :limit RETURNING next_value"
        ),
        {"n": count, "limit": 10**width},
    ).scalar()
    if new_next is None:
        raise Conflict(f"serial numbers of {width} digits are exhausted")
    return int(new_next) - count


def create_batch(
    rt: Runtime,
    actor: Principal,
    *,
    voucher_type: str,
    count: int,
    expires_at: datetime | None = None,
    request_id: str | None = None,
) -> Created:
    """Register a batch (state generating) with its serial range; no vouchers yet."""
    body = BatchIn(
        voucher_type=voucher_type, count=count, expires_at=expires_at, request_id=request_id
    )
    actor.require(Permission.BATCH_WRITE)
    scope = idempotency.scope_of(actor)
    fingerprint = idempotency.fingerprint(
        rt.keyring, "batch.create", body.model_dump(exclude={"request_id"}, mode="json")
    )
    try:
        return _create(rt, actor, body, scope, fingerprint)
    except AnsweredBefore as again:
        # The batch an earlier request with this id created, as it is now.
        with UnitOfWork(rt, read_only=True) as uow:
            view = batch_view(uow.conn, again.first.body["batch_id"], rt.settings.serial_width)
        return Created(view, is_new=False)


def _create(rt: Runtime, actor: Principal, body: BatchIn, scope: str, fingerprint: str) -> Created:
    with UnitOfWork(rt) as uow:
        conn, now = uow.conn, uow.started_at
        uow.idempotent(scope, body.request_id, fingerprint)
        vt = load_voucher_type(conn, code=body.voucher_type)
        actor.require(Permission.BATCH_WRITE, vt["service_provider_id"])
        space = 10 ** (vt["pin_length"] - 1)
        if body.count > space // MAX_SPACE_SHARE:
            raise Invalid(
                f"{body.count} vouchers are too many for {vt['pin_length']}-digit PINs "
                f"(at most {space // MAX_SPACE_SHARE} a batch); use a longer pin_length"
            )
        expiry = body.expires_at or now + timedelta(days=vt["validity_days"])
        if expiry <= now:
            raise Invalid("expires_at must be in the future")
        first = allocate_serials(conn, body.count, rt.settings.serial_width)
        batch_id = conn.execute(
            insert(t.batches)
            .values(
                service_provider_id=vt["service_provider_id"],
                voucher_type_id=vt["id"],
                state=BatchState.GENERATING.value,
                count=body.count,
                generated_count=0,
                serial_first=first,
                serial_last=first + body.count - 1,
                expires_at=expiry,
                created_by=actor.name,
                created_at=now,
                updated_at=now,
                request_id=body.request_id,
            )
            .returning(t.batches.c.id)
        ).scalar_one()
        detail = {
            "voucher_type": vt["code"],
            "count": body.count,
            "expires_at": expiry.isoformat(),
        }
        record_event(
            conn,
            actor,
            "generate",
            batch_id=batch_id,
            serial_from=first,
            serial_to=first + body.count - 1,
            affected=body.count,
            detail=detail,
            now=now,
        )
        audit.record(
            conn, actor, "batch.create", "batch", batch_id, vt["service_provider_id"], detail
        )
        view = batch_view(conn, batch_id, rt.settings.serial_width)
        uow.answer({"batch_id": batch_id}, 201)
        uow.commit()
    log.info("batch %s created: %d vouchers of %s", batch_id, body.count, vt["code"])
    return Created(view, is_new=True)


def fill_batch(
    rt: Runtime,
    actor: Principal,
    batch_id: int,
    *,
    progress: Progress | None = None,
    workers: int | None = None,
    started: Workers | None = None,
    randbytes: RandomBytes = os.urandom,
) -> dict[str, Any]:
    """Generate the vouchers of a batch in state generating, then mark it generated.

    A batch some vouchers of which a stopped run wrote gets the serials still missing
    from its range (chunks are written in the order they are sealed, not by serial).

    Any error marks the batch failed (and is raised again). ``randbytes`` is the source
    of PIN digits (the OS CSPRNG); ``workers`` 0 seals in this process; ``started``:
    crypto workers the caller started beforehand (:func:`started_workers`) and stops.
    """
    width, chunk_size = rt.settings.serial_width, rt.settings.generation_chunk_size
    with UnitOfWork(rt) as uow:
        conn = uow.conn
        batch = load_batch(conn, batch_id)
        actor.require(Permission.BATCH_WRITE, batch.service_provider_id)
        pin_length = conn.execute(
            select(t.voucher_types.c.pin_length).where(
                t.voucher_types.c.id == batch.voucher_type_id
            )
        ).scalar_one()
        uow.commit()
    if batch.state != BatchState.GENERATING:
        raise Conflict(f"batch {batch_id} is {batch.state}, not generating")
    sealer = Sealer.for_batch(rt.keyring, batch_id, pin_length)
    remaining = batch_size(batch) - batch.generated_count
    if workers is None:
        workers = workers_for(remaining, chunk_size)
    per_transaction = bulk.rows_per_transaction(rt.engine, chunk_size)
    done = batch.generated_count
    postgres = rt.engine.dialect.name == "postgresql"
    binary = postgres and not sealer.other_lookup_keys
    try:
        spans = [(batch.serial_first, batch.serial_first + batch_size(batch) - 1)]
        if batch.generated_count:
            # Resuming: chunks are written in the order they were sealed, not by serial,
            # so what is missing is found from the vouchers themselves, not the count.
            spans = _missing(rt, batch, remaining)
        with (
            started_workers(0 if started else workers) as own,
            closing(
                _chunks(
                    sealer,
                    spans,
                    chunk_size,
                    started or own,
                    randbytes,
                    binary,
                )
            ) as chunks,
        ):
            written = -1
            while done < batch_size(batch) and written:
                with UnitOfWork(rt) as uow:
                    conn = uow.conn
                    if postgres:
                        # A chunk's COMMIT need not wait for its WAL to reach the disk (or
                        # a synchronous standby): lost in a crash, the chunk goes with the
                        # progress that counts it, and the batch, never completed, is
                        # failed as stalled. The COMMIT of its completion waits as ever.
                        conn.exec_driver_sql("SET LOCAL synchronous_commit = off")
                    written = 0
                    for sealed in chunks:
                        if isinstance(sealed, SealedCopy):
                            write_copy(conn, sealer, sealed, randbytes)
                            written += sealed.count
                        else:
                            write_chunk(conn, sealer, sealed.rows, randbytes, sealed.aliases)
                            written += len(sealed.rows)
                        if progress is not None:
                            progress(done + written)
                        if written >= per_transaction:
                            break
                    _advance(conn, batch_id, written)
                    uow.commit()
                done += written
        _finish(rt, actor, batch_id, BatchAction.COMPLETE, None)
    except BaseException as exc:
        reason = exc.detail if isinstance(exc, VomsError) else type(exc).__name__
        log.error("batch %s failed after %d vouchers: %s", batch_id, done, reason)
        _finish(rt, actor, batch_id, BatchAction.FAIL, reason)
        raise
    with UnitOfWork(rt) as uow:
        conn = uow.conn
        result = batch_view(conn, batch_id, width)
        uow.commit()
        return result


def _missing(rt: Runtime, batch: Any, remaining: int) -> list[tuple[int, int]]:
    """The serial ranges (first, last) of a generating batch that hold no voucher yet:
    the gaps between the serials written, found in one pass over them in the database."""
    first, last = int(batch.serial_first), int(batch.serial_first) + batch_size(batch) - 1
    v = t.vouchers
    serials = union_all(
        select(literal(first - 1, BigInteger).label("serial")),
        select(v.c.serial).where(v.c.serial.between(first, last)),
        select(literal(last + 1, BigInteger)),
    ).subquery()
    ordered = select(
        serials.c.serial,
        func.lead(serials.c.serial).over(order_by=serials.c.serial).label("following"),
    ).subquery()
    with UnitOfWork(rt, read_only=True) as uow:
        gaps = [
            (int(low) + 1, int(high) - 1)
            for low, high in uow.conn.execute(
                select(ordered.c.serial, ordered.c.following)
                .where(ordered.c.following > ordered.c.serial + 1)
                .order_by(ordered.c.serial)
            )
        ]
    if sum(high - low + 1 for low, high in gaps) != remaining:
        raise Conflict(
            f"batch {batch.id}: its serial range does not hold the {batch.generated_count} "
            "vouchers its progress counts"
        )
    return gaps


def _advance(conn: Connection, batch_id: int, written: int) -> None:
    """Commit progress with the vouchers it counts; refuse if the batch stopped generating."""
    still_generating = conn.execute(
        update(t.batches)
        .where(t.batches.c.id == batch_id, t.batches.c.state == BatchState.GENERATING.value)
        .values(generated_count=t.batches.c.generated_count + written, updated_at=utcnow())
    ).rowcount
    if not still_generating:
        raise Conflict(f"batch {batch_id} stopped generating meanwhile")


def _finish(
    rt: Runtime,
    actor: Principal,
    batch_id: int,
    action: BatchAction,
    error: str | None,
    stalled_before: datetime | None = None,
) -> bool:
    """generating → generated (every voucher written) or → failed; False if not generating."""
    new_state = next_batch_state(BatchState.GENERATING, action)
    now = utcnow()
    b = t.batches
    condition = [b.c.id == batch_id, b.c.state == BatchState.GENERATING.value]
    if action is BatchAction.COMPLETE:
        condition.append(b.c.generated_count == b.c.count)
    if stalled_before is not None:
        condition.append(b.c.updated_at < stalled_before)
    with UnitOfWork(rt) as uow:
        conn = uow.conn
        changed = conn.execute(
            update(b).where(*condition).values(state=new_state.value, updated_at=now, error=error)
        ).rowcount
        if not changed:
            if action is BatchAction.COMPLETE:
                raise Conflict(f"batch {batch_id} is incomplete or no longer generating")
            uow.commit()
            return False
        batch = load_batch(conn, batch_id)
        event = "generated" if action is BatchAction.COMPLETE else "failed"
        record_event(
            conn,
            actor,
            event,
            batch_id=batch_id,
            serial_from=batch.serial_first,
            serial_to=batch.serial_last,
            affected=batch.generated_count,
            reason=error,
            now=now,
        )
        audit.record(
            conn,
            actor,
            f"batch.{event}",
            "batch",
            batch_id,
            batch.service_provider_id,
            {"generated": batch.generated_count, "error": error},
        )
        uow.commit()
    if action is BatchAction.COMPLETE:
        log.info("batch %s generated", batch_id)
    return True


def generate_batch(
    rt: Runtime,
    actor: Principal,
    *,
    voucher_type: str,
    count: int,
    expires_at: datetime | None = None,
    request_id: str | None = None,
    progress: Progress | None = None,
) -> dict[str, Any]:
    """Create a batch and generate all its vouchers now; returns the batch.

    With a request id seen before, returns that batch as it is now and generates nothing.
    """
    created = create_batch(
        rt,
        actor,
        voucher_type=voucher_type,
        count=count,
        expires_at=expires_at,
        request_id=request_id,
    )
    if not created.is_new:
        return created.batch
    return fill_batch(rt, actor, created.batch["batch_id"], progress=progress)


def order_batch(rt: Runtime, actor: Principal, body: BatchIn) -> dict[str, Any]:
    """POST /batches: generate now up to VOMS_BACKGROUND_GENERATION_THRESHOLD vouchers;
    above it, create the batch (state generating) and fill it in a daemon thread."""
    fields = body.model_dump()
    if body.count <= rt.settings.background_generation_threshold:
        return generate_batch(rt, actor, **fields)
    created = create_batch(rt, actor, **fields)
    if created.is_new:
        fill_in_background(rt, actor, created.batch["batch_id"])
    return created.batch


def fill_in_background(rt: Runtime, actor: Principal, batch_id: int) -> threading.Thread:
    """Generate a created batch in a daemon thread (the API answers at once)."""

    def run() -> None:
        try:
            fill_batch(rt, actor, batch_id)
        except Exception:  # already recorded on the batch and logged by fill_batch
            return

    thread = threading.Thread(target=run, name=f"generate-batch-{batch_id}", daemon=True)
    thread.start()
    return thread


def fail_stalled_batches(rt: Runtime, actor: Principal, stalled_for: timedelta) -> list[int]:
    """Mark failed the batches still generating with no progress for ``stalled_for``.

    Progress is committed at least every transaction of a load, so a batch this quiet
    was orphaned by a crashed or killed process. (It could never be activated anyway.)
    """
    actor.require(Permission.BATCH_WRITE)
    b = t.batches
    before = utcnow() - stalled_for
    query = select(b.c.id).where(b.c.state == BatchState.GENERATING.value, b.c.updated_at < before)
    if actor.service_provider_id is not None:
        query = query.where(b.c.service_provider_id == actor.service_provider_id)
    with UnitOfWork(rt) as uow:
        conn = uow.conn
        stalled = list(conn.execute(query).scalars())
        uow.commit()
    failed = []
    for batch_id in stalled:
        # Conditional again: a generation that moved meanwhile is alive and left alone.
        if _finish(rt, actor, batch_id, BatchAction.FAIL, "stalled", stalled_before=before):
            log.warning("batch %s marked failed: its generation had stopped", batch_id)
            failed.append(batch_id)
    return failed
