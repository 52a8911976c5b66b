"""What a crash or a failover must leave behind: every voucher redeemed once, credited once."""

from collections.abc import Sequence

from sqlalchemy import Engine, func, select

from voms.db import tables as t


def assert_each_redeemed_once(engine: Engine, pins: Sequence[tuple[str, str]], value: int) -> None:
    """Every voucher of ``pins`` (serial, PIN) redeemed by exactly one successful
    redemption and credited by exactly one ledger row, the wallets holding ``value``
    for each, and no other voucher redeemed."""
    tx, lg = t.transactions, t.ledger
    with engine.connect() as conn:
        redeemed = conn.execute(
            select(func.count()).where(t.vouchers.c.state == "redeemed")
        ).scalar_one()
        per_serial = conn.execute(
            select(tx.c.serial, func.count())
            .where(tx.c.result_code == 0, tx.c.kind == "redemption")
            .group_by(tx.c.serial)
        ).all()
        credits = conn.execute(select(lg.c.serial, func.count()).group_by(lg.c.serial)).all()
        total = conn.execute(select(func.sum(t.balances.c.amount))).scalar_one()
    once = sorted((int(serial), 1) for serial, _ in pins)
    assert redeemed == len(pins)
    assert sorted(tuple(row) for row in per_serial) == once
    assert sorted(tuple(row) for row in credits) == once
    assert total == len(pins) * value
