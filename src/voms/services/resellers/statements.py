"""Settlement and sell-through: a reseller's statement for a period, and what its
subtree holds, sold and saw redeemed.

A statement reads the reseller's account entries: the opening balance is what it owed
after the last entry before the period, and opening + sales - commission - payments =
closing, which is what it owed after the period's last entry.
"""

import csv
import io
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Connection, func, select

from voms import printout
from voms.db import tables as t
from voms.domain.errors import Invalid
from voms.domain.roles import Permission
from voms.runtime import Runtime
from voms.services.auth import Principal
from voms.services.resellers import accounts, stock
from voms.services.uow import UnitOfWork

_e, _r = t.reseller_entries, t.resellers
STATEMENT_COLUMNS = ("at", "kind", "amount", "balance_due", "sale_id", "reference", "actor")


def _period(since: datetime | None, until: datetime | None) -> tuple[datetime, datetime]:
    """The period asked for; by default the current UTC month up to now."""
    now = datetime.now(UTC)
    since = since or now.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    until = until or now
    if since.tzinfo is None or until.tzinfo is None:
        raise Invalid("since and until need a UTC offset")
    if since >= until:
        raise Invalid("since must be before until")
    return since, until


def _opening(conn: Connection, reseller_id: int, since: datetime) -> int:
    due = conn.execute(
        select(_e.c.due_after)
        .where(_e.c.reseller_id == reseller_id, _e.c.at < since)
        .order_by(_e.c.at.desc(), _e.c.id.desc())
        .limit(1)
    ).scalar()
    return int(due or 0)


def statement(
    rt: Runtime,
    actor: Principal,
    code: str,
    *,
    since: datetime | None = None,
    until: datetime | None = None,
) -> dict[str, Any]:
    """Reseller ``code``'s statement from ``since`` (inclusive) to ``until`` (exclusive):
    opening and closing balance due, the period's totals and its entries."""
    actor.require(Permission.RESELLER_READ)
    since, until = _period(since, until)
    with UnitOfWork(rt, replica=True) as uow:
        conn = uow.conn
        reseller = accounts.visible(conn, actor, code)
        opening = _opening(conn, reseller.id, since)
        rows = conn.execute(
            select(_e)
            .where(_e.c.reseller_id == reseller.id, _e.c.at >= since, _e.c.at < until)
            .order_by(_e.c.at, _e.c.id)
        ).all()
    totals = {"sale": 0, "commission": 0, "payment": 0}
    for row in rows:
        totals[row.kind] += row.amount
    closing = opening + totals["sale"] - totals["commission"] - totals["payment"]
    return {
        "reseller": reseller.code,
        "name": reseller.name,
        "currency": reseller.currency,
        "since": since,
        "until": until,
        "opening_balance": opening,
        "sales": totals["sale"],
        "commission": totals["commission"],
        "payments": totals["payment"],
        "closing_balance": closing,
        "lines": [
            {
                "at": row.at,
                "kind": row.kind,
                "amount": row.amount,
                "balance_due": row.due_after,
                "sale_id": row.sale_id,
                "reference": row.reference,
                "actor": row.actor,
            }
            for row in rows
        ],
    }


def _summary(found: dict[str, Any]) -> list[tuple[str, str]]:
    return [
        ("reseller", f"{found['reseller']} ({found['name']})"),
        ("period", f"{found['since'].isoformat()} to {found['until'].isoformat()}"),
        ("currency", found["currency"]),
        ("opening_balance", str(found["opening_balance"])),
        ("sales", str(found["sales"])),
        ("commission", str(found["commission"])),
        ("payments", str(found["payments"])),
        ("closing_balance", str(found["closing_balance"])),
    ]


def statement_csv(found: dict[str, Any]) -> str:
    """The statement as CSV: one row per entry, then the summary as name,value rows."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(STATEMENT_COLUMNS)
    for line in found["lines"]:
        writer.writerow(
            [line["at"].isoformat(), *(line[column] for column in STATEMENT_COLUMNS[1:])]
        )
    writer.writerow([])
    writer.writerows(_summary(found))
    return out.getvalue()


def statement_pdf(found: dict[str, Any]) -> bytes:
    """The statement as a printable PDF: the summary, then the entries."""
    title = f"Statement of reseller {found['reseller']} ({found['name']})"
    pdf = printout.document(title, orientation="portrait")
    pdf.set_title(title)
    summary = [(name.replace("_", " "), value) for name, value in _summary(found)[1:]]
    printout.table(pdf, summary, align=("LEFT", "RIGHT"), widths=(1, 3), headings=False)
    pdf.ln(4)
    printout.heading(pdf, "Entries")
    header = ("at (UTC)", "kind", "amount", "balance due", "reference")
    entries = (
        (
            line["at"].strftime("%Y-%m-%d %H:%M:%S"),
            line["kind"],
            line["amount"],
            line["balance_due"],
            line["reference"] or line["sale_id"],
        )
        for line in found["lines"]
    )
    printout.table(
        pdf,
        [header, *entries],
        align=("LEFT", "LEFT", "RIGHT", "RIGHT", "LEFT"),
        widths=(7, 5, 5, 5, 16),
    )
    return printout.output(pdf)


# --- sell-through -------------------------------------------------------------------------


def sell_through(rt: Runtime, actor: Principal, code: str) -> dict[str, Any]:
    """For reseller ``code`` and each reseller below it, per voucher type: serials on
    hand (in stock, not taken), vouchers sold (electronic and activated), and how many
    of those were redeemed (archived ones included)."""
    actor.require(Permission.RESELLER_READ)
    s, v, a, vt = t.sales, t.vouchers, t.voucher_archive, t.voucher_types
    with UnitOfWork(rt, replica=True) as uow:
        conn = uow.conn
        top = accounts.visible(conn, actor, code)
        subtree = {
            row.id: row.code
            for row in conn.execute(
                select(_r.c.id, _r.c.code).where(_r.c.path.startswith(top.path))
            )
        }
        ids = list(subtree)
        held = stock.on_hand(conn, ids)
        sold = {
            (row.reseller_id, row.voucher_type_id): int(row.sold)
            for row in conn.execute(
                select(s.c.reseller_id, s.c.voucher_type_id, func.sum(s.c.count).label("sold"))
                .where(s.c.reseller_id.in_(ids))
                .group_by(s.c.reseller_id, s.c.voucher_type_id)
            )
        }
        redeemed: dict[tuple[int, int], int] = {}
        key = (s.c.reseller_id, s.c.voucher_type_id)
        sold_one = t.sale_vouchers
        for vouchers, redeemed_state in ((v, v.c.state), (a, a.c.state)):
            queries = (
                # electronic sales: their vouchers one by one
                select(*key, func.count().label("n"))
                .join(sold_one, sold_one.c.sale_id == s.c.id)
                .join(vouchers, vouchers.c.serial == sold_one.c.serial),
                # activations: their serial ranges
                select(*key, func.count().label("n")).join(
                    vouchers, vouchers.c.serial.between(s.c.serial_from, s.c.serial_to)
                ),
            )
            for query in queries:
                for row in conn.execute(
                    query.where(s.c.reseller_id.in_(ids), redeemed_state == "redeemed").group_by(
                        *key
                    )
                ):
                    pair = (row.reseller_id, row.voucher_type_id)
                    redeemed[pair] = redeemed.get(pair, 0) + int(row.n)
        type_ids = {pair[1] for pair in (*held, *sold)}
        type_codes = {
            row.id: row.code
            for row in conn.execute(select(vt.c.id, vt.c.code).where(vt.c.id.in_(type_ids)))
        }
    rows = [
        {
            "reseller": subtree[pair[0]],
            "voucher_type": type_codes[pair[1]],
            "on_hand": held.get(pair, 0),
            "sold": sold.get(pair, 0),
            "redeemed": redeemed.get(pair, 0),
        }
        for pair in sorted({*held, *sold}, key=lambda p: (subtree[p[0]], type_codes[p[1]]))
    ]
    totals = {name: sum(row[name] for row in rows) for name in ("on_hand", "sold", "redeemed")}
    return {"report": "sell-through", "reseller": top.code, "rows": rows, "totals": totals}
