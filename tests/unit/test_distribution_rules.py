"""Export rules, the streaming XLSX writer and the bulk PIN decryptor, no database."""

import io
import secrets
import zipfile
from collections.abc import Iterator
from itertools import product

import openpyxl
import pytest

from voms import xlsx
from voms.crypto import Keyring, KeyringError
from voms.domain.distribution import is_exportable
from voms.domain.states import BatchState, VoucherState, effective_voucher_state


@pytest.mark.parametrize(
    ("batch", "voucher", "expired"), list(product(BatchState, VoucherState, [False, True]))
)
def test_a_voucher_is_exported_only_while_it_can_still_be_sold(
    batch: BatchState, voucher: VoucherState, expired: bool
) -> None:
    state = effective_voucher_state(batch, voucher, expired)
    sellable = state in ("active", "inactive", "frozen") and not expired
    never = batch in (BatchState.GENERATING, BatchState.FAILED)  # whatever the voucher says
    assert is_exportable(batch, voucher, expired) == (sellable and not never)


def test_the_xlsx_stream_is_a_workbook_with_text_pins_and_numeric_values() -> None:
    rows = [xlsx.row(["serial", "pin", "value"]), xlsx.row(["000001", "0123", 1000])]
    data = b"".join(xlsx.stream_xlsx([*rows, xlsx.row(["a&b<c", None, 5])]))
    assert zipfile.ZipFile(io.BytesIO(data)).testzip() is None
    sheet = openpyxl.load_workbook(io.BytesIO(data), read_only=True).active
    assert list(sheet.iter_rows(values_only=True)) == [
        ("serial", "pin", "value"),
        ("000001", "0123", 1000),  # leading zeros kept: text cells
        ("a&b<c", None, 5),
    ]


def test_the_xlsx_stream_yields_as_it_goes() -> None:
    def sheet_rows() -> Iterator[str]:
        for _ in range(50):
            yield "".join(xlsx.row([secrets.token_hex(8)] * 3) for _ in range(2000))

    sizes = [len(chunk) for chunk in xlsx.stream_xlsx(sheet_rows())]
    assert len(sizes) > 20
    assert max(sizes) < sum(sizes) / 10


def test_the_bulk_decryptor_reads_what_the_keyring_wrote_under_any_key() -> None:
    old = Keyring.new()
    old_id, old_blob = old.encrypt("11112222333344")
    new = old.with_new_encryption_key()
    new_id, new_blob = new.encrypt("55556666777788")
    decrypt = new.pin_decryptor()
    assert decrypt(old_id, old_blob) == "11112222333344"
    assert decrypt(new_id, new_blob) == "55556666777788"
    with pytest.raises(KeyringError, match="encryption key 9"):
        decrypt(9, new_blob)
