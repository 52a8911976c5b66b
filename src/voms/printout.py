"""Printable A4 documents of headings and tables (fpdf2), for reports and statements."""

from collections.abc import Iterable, Sequence
from typing import Literal

from fpdf import FPDF

Cell = str | int | None


def _text(value: Cell) -> str:
    # The built-in Helvetica covers Latin-1 only and fpdf2 refuses anything else, so a
    # reseller's or voucher type's name in another script prints "?" instead of failing.
    text = "" if value is None else str(value)
    return text.encode("latin-1", "replace").decode("latin-1")


def document(title: str, *, orientation: Literal["portrait", "landscape"]) -> FPDF:
    """A new A4 document on its first page, headed by ``title``."""
    pdf = FPDF(orientation=orientation, format="A4")
    pdf.set_auto_page_break(auto=True, margin=12)
    pdf.add_page()
    heading(pdf, title, size=16, height=10)
    return pdf


def heading(pdf: FPDF, text: str, *, size: int = 13, height: int = 8) -> None:
    """A bold line of ``size`` points."""
    pdf.set_font("Helvetica", "B", size)
    pdf.cell(0, height, _text(text), new_x="LMARGIN", new_y="NEXT")


def line(pdf: FPDF, text: str) -> None:
    """A line of body text."""
    pdf.set_font("Helvetica", "", 9)
    pdf.cell(0, 6, _text(text), new_x="LMARGIN", new_y="NEXT")


def table(
    pdf: FPDF,
    rows: Iterable[Sequence[Cell]],
    *,
    align: Sequence[Literal["LEFT", "RIGHT"]] | None = None,
    widths: Sequence[int] | None = None,
    headings: bool = True,
) -> None:
    """A table, its first row the header if ``headings``; ``align`` and relative
    ``widths`` per column (default all left, all as wide)."""
    pdf.set_font("Helvetica", "", 9)
    text_align = "LEFT" if align is None else tuple(align)
    with pdf.table(
        text_align=text_align,
        col_widths=None if widths is None else tuple(widths),
        first_row_as_headings=headings,
    ) as grid:
        for values in rows:
            cells = grid.row()
            for value in values:
                cells.cell(_text(value))


def output(pdf: FPDF) -> bytes:
    """The document's bytes."""
    return bytes(pdf.output())
