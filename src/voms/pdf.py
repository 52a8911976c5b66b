"""A minimal PDF writer: pages of monospaced text lines, for printable statements.

A statement is a few columns of figures; PDF's built-in Courier font needs no font file
and keeps the columns aligned, so a few objects written by hand make a valid document
(PDF 1.4: catalog, page tree, one content stream per page, a cross-reference table).
"""

LINES_PER_PAGE = 60
_FONT_SIZE = 9
_LEADING = 12
_TOP = 800  # points from the bottom of an A4 page (595 x 842)
_LEFT = 40


def _escape(line: str) -> str:
    # Courier's built-in encoding covers Latin-1; anything else prints as "?".
    text = line.encode("latin-1", "replace").decode("latin-1")
    return text.replace("\\", "\\\\").replace("(", "\\(").replace(")", "\\)")


def _page_stream(lines: list[str]) -> bytes:
    body = [f"BT /F1 {_FONT_SIZE} Tf {_LEADING} TL {_LEFT} {_TOP} Td"]
    body += [f"({_escape(line)}) Tj T*" for line in lines]
    body.append("ET")
    return "\n".join(body).encode("latin-1")


def text_document(title: str, lines: list[str]) -> bytes:
    """A PDF whose pages show ``lines`` in order, ``LINES_PER_PAGE`` to a page."""
    pages = [lines[i : i + LINES_PER_PAGE] for i in range(0, len(lines), LINES_PER_PAGE)]
    pages = pages or [[]]
    # Objects: 1 catalog, 2 page tree, 3 font, 4 info, then a page and its content each.
    kids = " ".join(f"{5 + 2 * i} 0 R" for i in range(len(pages)))
    objects: list[bytes] = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        f"<< /Type /Pages /Kids [{kids}] /Count {len(pages)} >>".encode(),
        b"<< /Type /Font /Subtype /Type1 /BaseFont /Courier /Encoding /WinAnsiEncoding >>",
        f"<< /Title ({_escape(title)}) /Producer (OpenVoMS) >>".encode("latin-1"),
    ]
    for i, page in enumerate(pages):
        content = _page_stream(page)
        objects.append(
            f"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 595 842] "
            f"/Resources << /Font << /F1 3 0 R >> >> /Contents {6 + 2 * i} 0 R >>".encode()
        )
        objects.append(
            f"<< /Length {len(content)} >>\nstream\n".encode() + content + b"\nendstream"
        )
    out = bytearray(b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n")
    offsets = []
    for number, body in enumerate(objects, start=1):
        offsets.append(len(out))
        out += f"{number} 0 obj\n".encode() + body + b"\nendobj\n"
    xref = len(out)
    out += f"xref\n0 {len(objects) + 1}\n0000000000 65535 f \n".encode()
    out += b"".join(f"{offset:010d} 00000 n \n".encode() for offset in offsets)
    out += (
        f"trailer\n<< /Size {len(objects) + 1} /Root 1 0 R /Info 4 0 R >>\n"
        f"startxref\n{xref}\n%%EOF\n"
    ).encode()
    return bytes(out)
