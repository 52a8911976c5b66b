"""The voucher archive as the rest of the system sees it: lookups and PIN uniqueness.

The archive job (voms.services.housekeeping.archive) moves vouchers in; nothing ever moves them out.
"""

from collections.abc import Sequence

from sqlalchemy import Connection, LargeBinary, any_, bindparam, exists, literal, select, true
from sqlalchemy.dialects.postgresql import ARRAY

from voms.db import tables as t

_a = t.voucher_archive
_IN_BATCH = 500
_ANY = select(_a.c.pin_hash).where(
    _a.c.pin_hash == any_(bindparam("hashes", type_=ARRAY(LargeBinary)))
)


def any_archived(conn: Connection) -> bool:
    """Whether any voucher was ever archived (if not, no PIN can have been)."""
    return bool(conn.execute(select(exists().select_from(_a))).scalar())


def archived_in(conn: Connection, first: int, last: int) -> set[int]:
    """Serials of ``vouchers`` between ``first`` and ``last`` whose PIN an archived voucher
    had: one probe of the archive's UNIQUE lookup hash a row, all in the database (a chunk
    just written checks its PINs without sending them back).

    The probe is a LATERAL subquery with ``LIMIT 1`` so that it stays one index probe a
    row whatever the planner thinks of the chunk's fresh serial range: as a plain join it
    chose a hash join that read the whole archive for every chunk (at 10M vouchers and 1.8M
    archived, more than half of generation's time), and the archive only grows.
    """
    v = t.vouchers
    probe = select(literal(1)).where(_a.c.pin_hash == v.c.pin_hash).limit(1).lateral("probe")
    return set(
        conn.execute(
            select(v.c.serial).join(probe, true()).where(v.c.serial >= first, v.c.serial <= last)
        ).scalars()
    )


def archived_hashes(conn: Connection, hashes: Sequence[bytes]) -> set[bytes]:
    """Which of ``hashes`` belong to archived vouchers (their PINs are never reissued)."""
    if not hashes or not any_archived(conn):
        return set()
    if conn.dialect.name == "postgresql":
        # One round trip for a whole chunk: each value is one probe of the UNIQUE index.
        return set(conn.execute(_ANY, {"hashes": list(hashes)}).scalars())
    found: set[bytes] = set()
    for start in range(0, len(hashes), _IN_BATCH):
        part = list(hashes[start : start + _IN_BATCH])
        found.update(conn.execute(select(_a.c.pin_hash).where(_a.c.pin_hash.in_(part))).scalars())
    return found
