"""A batch row written in SQL for the benchmarks that fill vouchers set-based.

The benchmarks that need millions of vouchers write them with ``INSERT … SELECT`` in
the database rather than through the generator; each first takes its serial range and
its batch row here, so every one of them does it the same way.
"""

from datetime import datetime
from typing import Any


def sql_batch(
    conn: Any,
    count: int,
    *,
    state: str,
    expires_at: datetime,
    created_at: datetime,
    voucher_type: str | None = None,
) -> tuple[int, int]:
    """Take ``count`` serials from the serial counter and write the batch row of a
    voucher type (``voucher_type``'s code, or the only one); (batch id, first serial)."""
    from sqlalchemy import insert, select

    from voms.config import get_settings
    from voms.db import tables as t
    from voms.services.generation import allocate_serials

    first = allocate_serials(conn, count, get_settings().serial_width)
    types = select(t.voucher_types.c.id, t.voucher_types.c.service_provider_id)
    if voucher_type is not None:
        types = types.where(t.voucher_types.c.code == voucher_type)
    vt = conn.execute(types).one()
    batch_id = conn.execute(
        insert(t.batches)
        .values(
            service_provider_id=vt.service_provider_id,
            voucher_type_id=vt.id,
            state=state,
            count=count,
            generated_count=count,
            serial_first=first,
            serial_last=first + count - 1,
            expires_at=expires_at,
            created_by="bench",
            created_at=created_at,
            updated_at=created_at,
        )
        .returning(t.batches.c.id)
    ).scalar_one()
    return int(batch_id), int(first)
