"""PIN drawing and sealing, without a database: format, uniqueness, no modulo bias."""

import os
import struct
from collections.abc import Callable, Iterator

from hypothesis import given, settings
from hypothesis import strategies as st

from voms.crypto import Keyring
from voms.domain.pins import MAX_PIN_LENGTH, MIN_PIN_LENGTH, luhn_check_digit, luhn_valid
from voms.services.sealing import (
    COPY_HEADER,
    COPY_TRAILER,
    Sealer,
    check_digit,
    draw_pins,
    seal_copy,
)

pin_lengths = st.integers(min_value=MIN_PIN_LENGTH, max_value=MAX_PIN_LENGTH)


def words(*values: int) -> Callable[[int], bytes]:
    """A random source that yields these 64-bit words, then the OS CSPRNG."""
    queue = bytearray(b"".join(struct.pack(">Q", v) for v in values))

    def randbytes(n: int) -> bytes:
        head = bytes(queue[:n])
        del queue[:n]
        return head + os.urandom(n - len(head))

    return randbytes


def stream(prefix: bytes) -> Callable[[int], bytes]:
    """``prefix`` repeated a few times (many duplicates), then the OS CSPRNG."""
    queue = bytearray(prefix * 8)

    def randbytes(n: int) -> bytes:
        head = bytes(queue[:n])
        del queue[:n]
        return head + os.urandom(n - len(head))

    return randbytes


@given(st.integers(min_value=0, max_value=10**23 - 1))
def test_the_fast_check_digit_is_the_luhn_digit(body: int) -> None:
    assert check_digit(body) == luhn_check_digit(str(body))


@given(pin_lengths, st.integers(min_value=1, max_value=200))
def test_every_drawn_pin_has_its_length_digits_and_a_luhn_check_digit(
    pin_length: int, count: int
) -> None:
    pins = draw_pins(count, pin_length)
    assert len(pins) == count
    for pin in pins:
        text = pin.decode("ascii")
        assert len(text) == pin_length
        assert text.isdigit()
        assert luhn_valid(text)


def test_words_above_the_last_whole_multiple_are_rejected_not_reduced() -> None:
    space = 10**13  # 14-digit PINs: 13 random digits and the check digit
    limit = (1 << 64) // space * space
    # A modulo reduction would turn `limit` into body 0 and `2**64 - 1` into a biased body.
    (pin,) = draw_pins(1, 14, words(limit, (1 << 64) - 1, 42))
    assert pin == b"0000000000042" + str(check_digit(42)).encode()


def test_long_pins_use_two_words_per_pin() -> None:
    (pin,) = draw_pins(1, 24, words(0, 7))
    assert pin == b"0" * 22 + b"7" + str(check_digit(7)).encode()


def test_the_sealer_matches_the_keyring() -> None:
    keyring = Keyring.new()
    sealer = Sealer.for_batch(keyring, batch_id=7, pin_length=14)
    rows = sealer.seal(range(1000, 1010))
    assert [row[0] for row in rows] == list(range(1000, 1010))
    for _serial, batch_id, pin_hash, lookup_key_id, ciphertext, key_id, state in rows:
        pin = keyring.decrypt(key_id, ciphertext)
        assert luhn_valid(pin)
        assert pin_hash == keyring.lookup_hash(pin, lookup_key_id)
        assert (batch_id, state) == (7, "available")
        assert pin.encode() not in ciphertext


def test_duplicates_inside_a_chunk_are_drawn_again() -> None:
    sealer = Sealer.for_batch(Keyring.new(), batch_id=1, pin_length=14)
    # Each value twice: a naive generator would repeat every PIN.
    rows = sealer.seal(range(6), randbytes=words(1, 1, 2, 2, 3, 3, 4, 4, 5, 5, 6, 6))
    assert len({row[2] for row in rows}) == 6
    assert [row[0] for row in rows] == list(range(6))


def test_hashes_to_avoid_are_never_produced() -> None:
    keyring = Keyring.new()
    sealer = Sealer.for_batch(keyring, batch_id=1, pin_length=14)
    taken = sealer.seal([1], randbytes=words(99))[0][2]
    (row,) = sealer.seal([2], avoid={taken}, randbytes=words(99, 99, 5))
    assert row[2] != taken
    assert keyring.decrypt(row[5], row[4]) == f"{50 + check_digit(5):014d}"


@settings(max_examples=50)
@given(st.binary(min_size=8, max_size=64), pin_lengths, st.integers(min_value=1, max_value=60))
def test_sealed_pins_are_unique_whatever_the_random_source_repeats(
    prefix: bytes, pin_length: int, count: int
) -> None:
    sealer = Sealer.for_batch(Keyring.new(), batch_id=1, pin_length=pin_length)
    rows = sealer.seal(range(count), randbytes=stream(prefix))
    assert len(rows) == count
    assert len({row[2] for row in rows}) == count
    assert sorted(row[0] for row in rows) == list(range(count))


def _digits_of(pins: Iterator[bytes]) -> list[int]:
    return [pin[0] - 48 for pin in pins]


def test_leading_digits_are_roughly_uniform() -> None:
    # A coarse guard against a gross bias (e.g. a wrong limit); 20,000 draws, 10 bins.
    counts = [0] * 10
    for digit in _digits_of(iter(draw_pins(20_000, 10))):
        counts[digit] += 1
    assert all(1_700 < n < 2_300 for n in counts), counts


def test_binary_copy_records_hold_what_the_rows_hold() -> None:
    keyring = Keyring.new()
    sealer = Sealer.for_batch(keyring, batch_id=7, pin_length=14)
    # The same random source twice: the same PINs, a duplicate among them drawn again.
    source = (1, 1, 2, 3, 4)
    sealed = seal_copy(sealer, range(1000, 1004), randbytes=words(*source))
    rows = sealer.seal(range(1000, 1004), randbytes=words(*source))
    assert sealed.data.startswith(COPY_HEADER)
    assert sealed.data.endswith(COPY_TRAILER)
    assert sealed.count == 4
    copied = sorted(sealed.rows())  # a PIN drawn again comes last
    assert [row[0] for row in copied] == list(range(1000, 1004))
    for made, row in zip(copied, rows, strict=True):
        assert made[:4] == row[:4]
        assert made[5:] == row[5:]
        assert keyring.decrypt(made[5], made[4]) == keyring.decrypt(row[5], row[4])
        assert made[2] == keyring.lookup_hash(keyring.decrypt(made[5], made[4]), made[3])
    assert len({row[2] for row in copied}) == 4
