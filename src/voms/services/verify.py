"""Invariants of vouchers, transactions and wallets, checked on a whole database.

Run by ``voms verify`` after an incident (a crash, a restore) or on a schedule: every
voucher belongs to a batch that exists (``vouchers.batch_id`` has no foreign key); every
redeemed voucher has exactly one successful redemption or commit; every successful
credit, and every reversal, has exactly its ledger rows; every balance equals the sum of
its ledger rows; every reversal and the transaction it reversed name each other.

A redemption reversed with its voucher made active again no longer counts as the
voucher's redemption (the voucher may be redeemed once more); one reversed without
reactivation still does (the voucher stays redeemed).
"""

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from itertools import groupby, islice
from typing import Any

from sqlalchemy import Connection, func, select, text

from voms.db import tables as t
from voms.runtime import Runtime
from voms.services.uow import UnitOfWork

EXAMPLES = 5


@dataclass
class Report:
    problems: list[str] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.problems


def _examples(values: Sequence[Any]) -> str:
    shown = ", ".join(str(v) for v in values[:EXAMPLES])
    return f" (e.g. {shown})" if shown else ""


def _check(conn: Connection, report: Report, what: str, sql: str) -> None:
    """``sql`` selects one column naming each broken object."""
    broken = (row[0] for row in _stream(conn, text(sql)))
    examples = list(islice(broken, EXAMPLES))  # memory stays flat however many are broken
    if examples:
        count = len(examples) + sum(1 for _ in broken)
        report.problems.append(f"{count} {what}{_examples(examples)}")


def _voucher_checks(conn: Connection, report: Report) -> None:
    _check(
        conn,
        report,
        "vouchers whose batch does not exist (serial/batch id)",
        # vouchers.batch_id has no foreign key (migration 0007_vouchers_fk): one anti-join
        # of the table against the few batches instead of a check of every row written.
        """SELECT v.serial || '/' || v.batch_id FROM vouchers v
            WHERE NOT EXISTS (SELECT 1 FROM batches b WHERE b.id = v.batch_id)""",
    )
    _check(
        conn,
        report,
        "redeemed vouchers without exactly one successful redemption or commit",
        # A redemption reversed with its voucher made active again no longer counts.
        """SELECT v.serial FROM vouchers v WHERE v.state = 'redeemed' AND
            (SELECT count(*) FROM transactions x WHERE x.serial = v.serial
             AND x.result_code = 0 AND x.kind IN ('redemption', 'commit') AND NOT EXISTS
             (SELECT 1 FROM reversals r WHERE r.transaction_id = x.id
              AND r.voucher_reactivated)) <> 1""",
    )
    _check(
        conn,
        report,
        "successful redemptions or commits of vouchers that are not redeemed",
        """SELECT x.serial FROM transactions x JOIN vouchers v ON v.serial = x.serial
            WHERE x.result_code = 0 AND x.kind IN ('redemption', 'commit')
              AND v.state <> 'redeemed' AND NOT EXISTS (SELECT 1 FROM reversals r
              WHERE r.transaction_id = x.id AND r.voucher_reactivated)""",
    )
    _check(
        conn,
        report,
        "vouchers credited by more than one transaction not reversed",
        """SELECT serial FROM ledger WHERE cause = 'redemption' AND reversed_by IS NULL
            GROUP BY serial HAVING count(DISTINCT transaction_id) > 1""",
    )
    _check(
        conn,
        report,
        "reserved vouchers without exactly one open reservation",
        """SELECT v.serial FROM vouchers v WHERE v.state = 'reserved' AND
            (SELECT count(*) FROM reservations r WHERE r.serial = v.serial
             AND r.state IN ('open', 'held')) <> 1""",
    )
    _check(
        conn,
        report,
        "open reservations whose voucher is not reserved",
        """SELECT r.id FROM reservations r JOIN vouchers v ON v.serial = r.serial
            WHERE r.state IN ('open', 'held') AND v.state <> 'reserved'""",
    )


def _reversal_checks(conn: Connection, report: Report) -> None:
    _check(
        conn,
        report,
        "reversals whose transaction does not name them as its reversal",
        """SELECT r.transaction_id FROM reversals r LEFT JOIN transactions x
            ON x.id = r.transaction_id
            WHERE x.id IS NULL OR x.reversed_by IS NULL OR x.reversed_by <> r.reversal_id""",
    )
    _check(
        conn,
        report,
        "transactions marked reversed without a reversal",
        """SELECT x.id FROM transactions x WHERE x.reversed_by IS NOT NULL AND NOT EXISTS
            (SELECT 1 FROM reversals r WHERE r.reversal_id = x.reversed_by)""",
    )
    _check(
        conn,
        report,
        "ledger credits marked reversed whose transaction is not",
        """SELECT l.id FROM ledger l WHERE l.reversed_by IS NOT NULL AND NOT EXISTS
            (SELECT 1 FROM transactions x WHERE x.id = l.transaction_id
             AND x.reversed_by = l.reversed_by)""",
    )


def _balance_checks(conn: Connection, report: Report) -> None:
    _check(
        conn,
        report,
        "balances that differ from the sum of their ledger rows (subscriber id/balance type id)",
        """SELECT b.subscriber_id || '/' || b.balance_type_id FROM balances b
            WHERE b.amount <> COALESCE((SELECT sum(l.amount) FROM ledger l
              WHERE l.subscriber_id = b.subscriber_id
                AND l.balance_type_id = b.balance_type_id), 0)""",
    )
    _check(
        conn,
        report,
        "ledger rows of a balance that does not exist (subscriber id/balance type id)",
        """SELECT DISTINCT l.subscriber_id || '/' || l.balance_type_id FROM ledger l
            WHERE NOT EXISTS (SELECT 1 FROM balances b WHERE b.subscriber_id = l.subscriber_id
              AND b.balance_type_id = l.balance_type_id)""",
    )


def _stream(conn: Connection, statement: Any) -> Iterator[Any]:
    return iter(conn.execution_options(stream_results=True, yield_per=10_000).execute(statement))


# Transaction kinds, and the ledger causes of the same name, that change a wallet.
_CREDITING = ("redemption", "recharge", "reversal")


def _credit_checks(rt: Runtime, report: Report) -> None:
    """Each successful credit (redemption, recharge) and each reversal equals its ledger
    rows, one to one (a reversal's amounts are negative)."""
    tx, lg, bt = t.transactions, t.ledger, t.balance_types
    credited = (
        select(tx.c.id, tx.c.credits)
        .where(tx.c.result_code == 0, tx.c.kind.in_(_CREDITING))
        .order_by(tx.c.id)
    )
    ledger_rows = (
        select(lg.c.transaction_id, bt.c.code, lg.c.amount)
        .join(bt, bt.c.id == lg.c.balance_type_id)
        .where(lg.c.cause.in_(_CREDITING))
        .order_by(lg.c.transaction_id, bt.c.code)
    )
    mismatched: list[str] = []
    unmatched: list[str] = []
    value = {"credited": 0, "ledger": 0}
    with UnitOfWork(rt, read_only=True) as on_tx, UnitOfWork(rt, read_only=True) as on_lg:
        tx_conn = on_tx.conn
        ledger = groupby(_stream(on_lg.conn, ledger_rows), key=lambda row: row.transaction_id)
        pending = next(ledger, None)
        for row in _stream(tx_conn, credited):
            promised = sorted((c["balance_type"], c["amount"]) for c in row.credits)
            value["credited"] += sum(amount for _, amount in promised)
            while pending is not None and (pending[0] or "") < row.id:
                unmatched.append(str(pending[0]))
                pending = next(ledger, None)
            given: list[tuple[str, int]] = []
            if pending is not None and pending[0] == row.id:
                given = [(entry.code, entry.amount) for entry in pending[1]]
                pending = next(ledger, None)
            value["ledger"] += sum(amount for _, amount in given)
            if sorted(given) != promised:
                mismatched.append(row.id)
        while pending is not None:
            unmatched.append(str(pending[0]))
            pending = next(ledger, None)
    if mismatched:
        report.problems.append(
            f"{len(mismatched)} successful credits whose ledger rows differ from what the "
            f"transaction records{_examples(mismatched)}"
        )
    if unmatched:
        report.problems.append(
            f"{len(unmatched)} redemption/recharge/reversal ledger rows without a successful "
            f"transaction{_examples(unmatched)}"
        )
    if value["credited"] != value["ledger"]:
        report.problems.append(
            f"value credited by transactions ({value['credited']}) differs from the ledger "
            f"({value['ledger']})"
        )


def verify(rt: Runtime) -> Report:
    """Check every invariant; the report names what is broken, with examples."""
    report = Report()
    with UnitOfWork(rt, read_only=True) as uow:
        conn = uow.conn
        _voucher_checks(conn, report)
        _reversal_checks(conn, report)
        _balance_checks(conn, report)
        v, tx = t.vouchers, t.transactions
        report.counts = {
            "vouchers_redeemed": conn.execute(
                select(func.count()).where(v.c.state == "redeemed")
            ).scalar_one(),
            "successful_transactions": conn.execute(
                select(func.count()).where(tx.c.result_code == 0)
            ).scalar_one(),
            "subscribers": conn.execute(
                select(func.count()).select_from(t.subscribers)
            ).scalar_one(),
        }
    _credit_checks(rt, report)
    return report
