"""A minimal streaming XLSX writer: rows in, zip bytes out, nothing on disk.

openpyxl's write-only mode and XlsxWriter's constant-memory mode both spool the sheet
to a temporary file, and XlsxWriter's in-memory mode holds the whole workbook in RAM;
for voucher exports the plaintext must stay in memory and pipes only, in constant
memory. An XLSX file is a zip of a few XML parts, and Python's zipfile can write to an
unseekable stream (sizes go into data descriptors), so the sheet is deflated chunk by
chunk straight into whatever consumes the bytes (here: gpg's stdin). Every cell is an
inline string or a number, so no shared-strings table has to be held in memory.
"""

import zipfile
from collections.abc import Generator, Iterable
from xml.sax.saxutils import escape

Cell = str | int | None

_XML = '<?xml version="1.0" encoding="UTF-8" standalone="yes"?>\n'
_PACKAGE = "http://schemas.openxmlformats.org/package/2006"
_RELATION = "http://schemas.openxmlformats.org/officeDocument/2006/relationships"
_MAIN = "http://schemas.openxmlformats.org/spreadsheetml/2006/main"
_MIME = "application/vnd.openxmlformats-officedocument.spreadsheetml"

_CONTENT_TYPES = (
    f'{_XML}<Types xmlns="{_PACKAGE}/content-types">'
    '<Default Extension="rels" '
    'ContentType="application/vnd.openxmlformats-package.relationships+xml"/>'
    '<Default Extension="xml" ContentType="application/xml"/>'
    f'<Override PartName="/xl/workbook.xml" ContentType="{_MIME}.sheet.main+xml"/>'
    f'<Override PartName="/xl/worksheets/sheet1.xml" ContentType="{_MIME}.worksheet+xml"/>'
    f'<Override PartName="/xl/styles.xml" ContentType="{_MIME}.styles+xml"/>'
    "</Types>"
).encode()

_ROOT_RELS = (
    f'{_XML}<Relationships xmlns="{_PACKAGE}/relationships">'
    f'<Relationship Id="rId1" Type="{_RELATION}/officeDocument" Target="xl/workbook.xml"/>'
    "</Relationships>"
).encode()

_WORKBOOK_RELS = (
    f'{_XML}<Relationships xmlns="{_PACKAGE}/relationships">'
    f'<Relationship Id="rId1" Type="{_RELATION}/worksheet" Target="worksheets/sheet1.xml"/>'
    f'<Relationship Id="rId2" Type="{_RELATION}/styles" Target="styles.xml"/>'
    "</Relationships>"
).encode()

_STYLES = (
    f'{_XML}<styleSheet xmlns="{_MAIN}">'
    '<fonts count="1"><font><sz val="11"/><name val="Calibri"/></font></fonts>'
    '<fills count="1"><fill><patternFill patternType="none"/></fill></fills>'
    '<borders count="1"><border><left/><right/><top/><bottom/><diagonal/></border></borders>'
    '<cellStyleXfs count="1"><xf numFmtId="0" fontId="0" fillId="0" borderId="0"/></cellStyleXfs>'
    '<cellXfs count="1"><xf numFmtId="0" fontId="0" fillId="0" borderId="0" xfId="0"/></cellXfs>'
    '<cellStyles count="1"><cellStyle name="Normal" xfId="0" builtinId="0"/></cellStyles>'
    "</styleSheet>"
).encode()

_SHEET_START = f'{_XML}<worksheet xmlns="{_MAIN}"><sheetData>'.encode()
_SHEET_END = b"</sheetData></worksheet>"


def _workbook(sheet_name: str) -> bytes:
    return (
        f'{_XML}<workbook xmlns="{_MAIN}" xmlns:r="{_RELATION}">'
        f'<sheets><sheet name="{escape(sheet_name)}" sheetId="1" r:id="rId1"/></sheets>'
        "</workbook>"
    ).encode()


class _Collector:
    """The unseekable 'file' zipfile writes into; the generator drains it."""

    def __init__(self) -> None:
        self._parts: list[bytes] = []

    def write(self, data: bytes) -> int:
        self._parts.append(bytes(data))
        return len(data)

    def flush(self) -> None:
        pass

    def close(self) -> None:
        pass

    def drain(self) -> bytes:
        data = b"".join(self._parts)
        self._parts.clear()
        return data


def cell(value: Cell) -> str:
    """One cell: a number, an inline string, or empty."""
    if value is None:
        return "<c/>"
    if isinstance(value, int):
        return f"<c><v>{value}</v></c>"
    return f'<c t="inlineStr"><is><t>{escape(value)}</t></is></c>'


def row(values: Iterable[Cell]) -> str:
    """One ``<row>`` element (row and cell positions are implicit)."""
    return "<row>" + "".join(cell(value) for value in values) + "</row>"


def stream_xlsx(
    sheet_rows: Iterable[str], *, sheet_name: str = "Sheet1"
) -> Generator[bytes, None, None]:
    """The bytes of a one-sheet workbook; ``sheet_rows`` yields ``<row>`` XML, usually
    many rows per item (see :func:`row`). Memory is bounded by one item plus zlib's
    window.
    """
    sink = _Collector()
    # compresslevel 1: the sheet is repetitive XML; level 1 gets most of the gain at a
    # fraction of the time, and this runs on the export's critical path.
    with zipfile.ZipFile(
        sink,
        "w",
        compression=zipfile.ZIP_DEFLATED,
        compresslevel=1,
    ) as archive:
        archive.writestr("[Content_Types].xml", _CONTENT_TYPES)
        archive.writestr("_rels/.rels", _ROOT_RELS)
        archive.writestr("xl/workbook.xml", _workbook(sheet_name))
        archive.writestr("xl/_rels/workbook.xml.rels", _WORKBOOK_RELS)
        archive.writestr("xl/styles.xml", _STYLES)
        yield sink.drain()
        with archive.open("xl/worksheets/sheet1.xml", "w") as sheet:
            sheet.write(_SHEET_START)
            for xml in sheet_rows:
                sheet.write(xml.encode())
                data = sink.drain()
                if data:
                    yield data
            sheet.write(_SHEET_END)
    yield sink.drain()
