"""Vouchers: no foreign key on batch_id; ``voms verify`` reports vouchers without a batch.

Why: the database checked ``vouchers.batch_id`` against ``batches`` for every voucher
written, one index probe of ``batches`` a row. Generating a million vouchers is one
binary COPY stream; that check was about 10 of the 16 s PostgreSQL took to load them,
more than the whole rest of the command. The table is meant for a hundred million
rows, each written once by generation or an import under a batch created just before
it in the same process, so the check guarded nothing the code does not already
guarantee. No code deletes a batch row (a batch is "deleted" by its state), so no
voucher can lose its batch afterwards either; ``voms verify`` reports any voucher whose
batch does not exist (one anti-join), should a manual edit or a partial restore make
one. The index on ``batch_id`` stays (batch operations go by it).

Live: on PostgreSQL dropping the constraint is a catalog change only; it takes an
ACCESS EXCLUSIVE lock on ``vouchers`` (and a lock on ``batches``) for an instant, once
the transactions using them have ended. On SQLite, which cannot drop a constraint, the
stored table definition loses the FOREIGN KEY clause, the edit SQLite documents for
removing foreign key constraints ("ALTER TABLE", section 7): nothing on disk changes, so
it is as instant as on PostgreSQL rather than a copy of every voucher.

The downgrade adds the key back, checked against every row (PostgreSQL: added NOT
VALID, then validated without blocking writes; SQLite: ``PRAGMA foreign_key_check``),
and refuses if a voucher has no batch.

Revision ID: 0007_vouchers_fk
Revises: 0006_scale
Create Date: 2026-12-07
"""

import re
from collections.abc import Callable, Sequence

from alembic import op

revision: str = "0007_vouchers_fk"
down_revision: str | None = "0006_scale"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

NAME = "fk_vouchers_batch_id_batches"
CLAUSE = f"CONSTRAINT {NAME} FOREIGN KEY(batch_id) REFERENCES batches (id)"
# The clause as SQLAlchemy wrote it in 0001, with the comma and whitespace before it.
_STORED = re.compile(
    rf",\s*CONSTRAINT {NAME} FOREIGN KEY\s*\(batch_id\)\s*REFERENCES batches\s*\(id\)"
)


def upgrade() -> None:
    if op.get_bind().dialect.name != "sqlite":
        op.drop_constraint(NAME, "vouchers", type_="foreignkey")
        return
    _edit_vouchers(lambda sql: _STORED.subn("", sql))


def downgrade() -> None:
    bind = op.get_bind()
    if bind.dialect.name != "sqlite":
        op.execute(
            f"ALTER TABLE vouchers ADD CONSTRAINT {NAME} FOREIGN KEY (batch_id) "
            "REFERENCES batches (id) NOT VALID"
        )
        op.execute(f"ALTER TABLE vouchers VALIDATE CONSTRAINT {NAME}")
        return
    # Before the closing parenthesis of the table's definition.
    _edit_vouchers(lambda sql: re.subn(r"\s*\)\s*$", f", \n\t{CLAUSE}\n)", sql, count=1))
    orphan = bind.exec_driver_sql("PRAGMA foreign_key_check(vouchers)").first()
    if orphan is not None:
        raise RuntimeError(f"voucher {orphan[1]} has no batch: the foreign key cannot return")


def _edit_vouchers(edit: Callable[[str], tuple[str, int]]) -> None:
    """Rewrite the stored CREATE TABLE of ``vouchers`` (SQLite), as SQLite documents for
    changes that leave the table's content as it is; ``edit`` returns (sql, changes)."""
    bind = op.get_bind()
    sql = bind.exec_driver_sql(
        "SELECT sql FROM sqlite_master WHERE type = 'table' AND name = 'vouchers'"
    ).scalar_one()
    new_sql, changes = edit(sql)
    if changes != 1:
        raise RuntimeError(f"vouchers is not defined as expected around {NAME}: {sql}")
    version = bind.exec_driver_sql("PRAGMA schema_version").scalar_one()
    bind.exec_driver_sql("PRAGMA writable_schema = ON")
    bind.exec_driver_sql(
        "UPDATE sqlite_master SET sql = ? WHERE type = 'table' AND name = 'vouchers'",
        (new_sql,),
    )
    bind.exec_driver_sql(f"PRAGMA schema_version = {int(version) + 1}")
    # RESET, not OFF: this connection also reads the new definition at once (with OFF it
    # kept the one it had parsed, foreign key included, until it closed).
    bind.exec_driver_sql("PRAGMA writable_schema = RESET")
