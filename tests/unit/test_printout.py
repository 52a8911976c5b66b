import io

from pypdf import PdfReader

from voms import printout


def _read(data: bytes) -> PdfReader:
    return PdfReader(io.BytesIO(data), strict=True)


def test_a_long_table_runs_onto_more_pages_with_every_row_printed() -> None:
    pdf = printout.document("Entries", orientation="portrait")
    printout.table(pdf, [("n", "amount"), *((f"row {n}", n * 100) for n in range(120))])
    reader = _read(printout.output(pdf))
    assert len(reader.pages) > 1
    lines = "\n".join(page.extract_text() for page in reader.pages).splitlines()
    assert lines[:2] == ["Entries", "n amount"]
    assert [line for line in lines if line.startswith("row ")] == [
        f"row {n} {n * 100}" for n in range(120)
    ]


def test_text_outside_latin_1_prints_as_a_question_mark_instead_of_failing() -> None:
    pdf = printout.document("Café ✓", orientation="landscape")
    printout.line(pdf, "10 € in ₹")
    printout.table(pdf, [("name", "value"), ("Ωmega", None)], headings=False)
    text = _read(printout.output(pdf)).pages[0].extract_text()
    assert "Café ?" in text
    assert "10 ? in ?" in text
    assert "?mega" in text
