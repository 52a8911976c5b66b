"""A report as CSV, XLSX (the project's streaming writer) or PDF (fpdf2)."""

import csv
import io
import json
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from voms import xlsx
from voms.domain.errors import Invalid
from voms.services.reports.queries import Report

if TYPE_CHECKING:  # fpdf2 (and Pillow) load when a PDF is asked for: not in every command
    from fpdf import FPDF

FORMATS = ("json", "csv", "xlsx", "pdf")
MEDIA_TYPES = {
    "json": "application/json",
    "csv": "text/csv; charset=utf-8",
    "xlsx": "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet",
    "pdf": "application/pdf",
}


def check_format(name: str) -> str:
    """The format, or Invalid (422) for one we do not write."""
    if name not in FORMATS:
        raise Invalid(f"format must be one of: {', '.join(FORMATS)}")
    return name


def _cell(value: Any) -> str | int | None:
    if value is None or isinstance(value, str | int):
        return value
    return str(value)


def _table(report: Report) -> Iterator[list[str | int | None]]:
    """The header, the rows, and a last row of totals (only totals of shown columns)."""
    yield list(report.columns)
    for row in report.rows:
        yield [_cell(row.get(column)) for column in report.columns]
    total: list[str | int | None] = []
    for column in report.columns:
        value = report.totals.get(column)
        if isinstance(value, dict):  # value per currency: one total only if one currency
            value = next(iter(value.values())) if len(value) == 1 else None
        total.append(_cell(value))
    if any(cell is not None for cell in total):
        total[0] = "total"
        yield total


def to_csv(report: Report) -> bytes:
    """Comma-separated, a header row first, the totals row last."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\r\n")
    writer.writerows(_table(report))
    return out.getvalue().encode()


def to_xlsx(report: Report) -> bytes:
    """One sheet named after the report, the same rows as the CSV."""
    return b"".join(
        xlsx.stream_xlsx((xlsx.row(line) for line in _table(report)), sheet_name=report.name)
    )


def to_pdf(report: Report) -> bytes:
    """A printable page: title, period, the table, and any sections (summary)."""
    from voms import printout

    pdf = printout.document(_title(report), orientation="landscape")
    _pdf_table(pdf, report)
    for name, section in report.sections.items():
        pdf.ln(4)
        printout.heading(pdf, name.replace("_", " ").capitalize())
        _pdf_table(pdf, section)
    return printout.output(pdf)


def _title(report: Report) -> str:
    if report.name == "summary" and report.since is not None:
        return f"OpenVoMS monthly summary {report.since.strftime('%Y-%m')}"
    return f"OpenVoMS report: {report.name}"


def _pdf_table(pdf: "FPDF", report: Report) -> None:
    from voms import printout

    if report.since is not None and report.until is not None:
        printout.line(pdf, f"{report.since.isoformat()} to {report.until.isoformat()} (UTC)")
    printout.table(pdf, _table(report))


def to_json(report: Report) -> bytes:
    """The JSON body, as the API answers it."""
    return (json.dumps(report.as_json(), indent=2) + "\n").encode()


def render(report: Report, fmt: str) -> bytes:
    """The report's bytes in ``fmt`` (json, csv, xlsx or pdf)."""
    writers = {"json": to_json, "csv": to_csv, "xlsx": to_xlsx, "pdf": to_pdf}
    return writers[check_format(fmt)](report)
