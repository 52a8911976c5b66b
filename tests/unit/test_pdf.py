import io

from pypdf import PdfReader

from voms import pdf


def test_a_text_document_opens_in_a_strict_reader_with_its_lines_on_pages() -> None:
    lines = [f"line {number} (a) \\ b" for number in range(pdf.LINES_PER_PAGE + 5)]
    reader = PdfReader(io.BytesIO(pdf.text_document("Statement (test)", lines)), strict=True)
    assert len(reader.pages) == 2
    assert reader.metadata is not None
    assert reader.metadata.title == "Statement (test)"
    assert reader.pages[0].extract_text().splitlines()[0] == "line 0 (a) \\ b"
    assert reader.pages[1].extract_text().splitlines() == lines[pdf.LINES_PER_PAGE :]


def test_characters_outside_latin_1_print_as_question_marks() -> None:
    reader = PdfReader(io.BytesIO(pdf.text_document("t", ["Café 10 €"])), strict=True)
    assert reader.pages[0].extract_text().strip() == "Café 10 ?"


def test_an_empty_document_still_has_a_page() -> None:
    reader = PdfReader(io.BytesIO(pdf.text_document("t", [])), strict=True)
    assert len(reader.pages) == 1
