"""Sealing vouchers: PINs drawn from the OS CSPRNG, turned at once into a lookup hash
and a ciphertext, and dropped.

Pure computation, no database: it runs in the generator's worker processes, which
import only this module (and the keyring's constants), so they start in a blink.
"""

import hashlib
import os
import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from voms.crypto import NONCE_BYTES, Keyring
from voms.domain.states import VoucherState

if TYPE_CHECKING:
    from hashlib import _Hash

# A voucher row, in the order of VOUCHER_COLUMNS.
VoucherRow = tuple[int, int, bytes, int, bytes, int, str]
# The vouchers columns a VoucherRow fills, in its order (generation and legacy import).
VOUCHER_COLUMNS = (
    "serial",
    "batch_id",
    "pin_hash",
    "lookup_key_id",
    "pin_ciphertext",
    "encryption_key_id",
    "state",
)
RandomBytes = Callable[[int], bytes]
# PostgreSQL's binary COPY format: every chunk a whole stream, header to trailer.
COPY_HEADER = b"PGCOPY\n\xff\r\n\x00" + struct.pack(">ii", 0, 0)
COPY_TRAILER = struct.pack(">h", -1)


def _luhn_groups() -> list[int]:
    """Luhn contribution of every 4-digit group whose rightmost digit is doubled."""
    table = []
    for group in range(10_000):
        total = 0
        for position in range(4):
            digit = group // 10**position % 10
            if position % 2 == 0:
                digit = digit * 2 - 9 if digit > 4 else digit * 2
            total += digit
        table.append(total)
    return table


_LUHN4 = _luhn_groups()


def check_digit(body: int) -> int:
    """The Luhn check digit of ``body`` (same as domain.pins, on an int, 4 digits a step)."""
    total = 0
    while body:
        body, group = divmod(body, 10_000)
        total += _LUHN4[group]
    return -total % 10


def draw_pins(count: int, pin_length: int, randbytes: RandomBytes = os.urandom) -> list[bytes]:
    """``count`` PINs (ASCII digits) of ``pin_length`` digits, the last a Luhn check digit.

    The other digits are one uniform number below 10^(pin_length - 1), drawn from 64- or
    128-bit random words by rejection: words at or above the largest multiple of the
    space are discarded, so no value is likelier than another (no modulo bias).
    PINs may repeat; callers that need unique ones use :meth:`Sealer.seal`.
    """
    space = 10 ** (pin_length - 1)
    words = 1 if space < 1 << 60 else 2
    limit = (1 << (64 * words)) // space * space
    template = b"%%0%dd" % pin_length
    luhn = _LUHN4
    pins: list[bytes] = []
    while len(pins) < count:
        need = count - len(pins)
        values = struct.unpack(f">{need * words}Q", randbytes(8 * need * words))
        if words == 2:
            values = tuple(
                (high << 64) | low for high, low in zip(values[::2], values[1::2], strict=True)
            )
        bodies = [value % space for value in values if value < limit]
        if space <= 10**16:  # check_digit unrolled: four groups of four digits at most
            pins += [
                template
                % (
                    body * 10
                    + (
                        -(
                            luhn[body % 10_000]
                            + luhn[body // 10_000 % 10_000]
                            + luhn[body // 100_000_000 % 10_000]
                            + luhn[body // 1_000_000_000_000]
                        )
                    )
                    % 10
                )
                for body in bodies
            ]
        else:
            pins += [template % (body * 10 + check_digit(body)) for body in bodies]
    return pins


def _hmac_states(key: bytes) -> tuple[Callable[[], "_Hash"], Callable[[], "_Hash"]]:
    """HMAC-SHA256's inner and outer hash states under ``key``, padded once: copies of
    them hash a message (see :func:`_hmac_sha256`)."""
    if len(key) > 64:
        key = hashlib.sha256(key).digest()
    block = key.ljust(64, b"\0")
    inner = hashlib.sha256(bytes(b ^ 0x36 for b in block))
    outer = hashlib.sha256(bytes(b ^ 0x5C for b in block))
    return inner.copy, outer.copy


def _hmac_sha256(key: bytes) -> Callable[[bytes], bytes]:
    """HMAC-SHA256 under ``key`` (as Keyring.lookup_hash), with the padded key states made
    once: for short messages this is twice as fast as hmac.digest."""
    inner_copy, outer_copy = _hmac_states(key)

    def digest(message: bytes) -> bytes:
        hashed = inner_copy()
        hashed.update(message)
        result = outer_copy()
        result.update(hashed.digest())
        return result.digest()

    return digest


@dataclass(frozen=True)
class Sealed:
    """A chunk of voucher rows, and each new PIN's hash under the other live lookup keys
    (hash → serial): after a rotation, a PIN must not be one issued under an older key."""

    rows: list[VoucherRow]
    aliases: dict[bytes, int]


@dataclass(frozen=True)
class Sealer:
    """Makes voucher rows for one batch: active keys, PIN length, batch id.

    Picklable: each task of a worker process carries it.
    """

    batch_id: int
    pin_length: int
    lookup_key_id: int
    lookup_key: bytes
    encryption_key_id: int
    encryption_key: bytes
    other_lookup_keys: tuple[bytes, ...] = ()  # live but not active: PINs are checked there

    @classmethod
    def for_batch(cls, keyring: Keyring, batch_id: int, pin_length: int) -> "Sealer":
        return cls(
            batch_id=batch_id,
            pin_length=pin_length,
            lookup_key_id=keyring.active_lookup_key_id,
            lookup_key=keyring.lookup_keys[keyring.active_lookup_key_id],
            encryption_key_id=keyring.active_encryption_key_id,
            encryption_key=keyring.encryption_keys[keyring.active_encryption_key_id],
            other_lookup_keys=tuple(
                key
                for key_id, key in sorted(keyring.lookup_keys.items())
                if key_id != keyring.active_lookup_key_id
            ),
        )

    def seal(
        self,
        serials: Sequence[int],
        avoid: set[bytes] | frozenset[bytes] = frozenset(),
        randbytes: RandomBytes = os.urandom,
    ) -> list[VoucherRow]:
        """One row per serial, each PIN's hash different from the others and from ``avoid``."""
        return self.seal_chunk(serials, avoid, randbytes).rows

    def seal_chunk(
        self,
        serials: Sequence[int],
        avoid: set[bytes] | frozenset[bytes] = frozenset(),
        randbytes: RandomBytes = os.urandom,
    ) -> Sealed:
        """The rows of :meth:`seal`, with each PIN's hashes under the other live lookup keys.

        Equal to crypto.Keyring.lookup_hash and Keyring.encrypt (nonce-prefixed
        AES-256-GCM), done in bulk. The clear PIN lives only inside this loop.
        """
        other_hashes = [_hmac_sha256(key) for key in self.other_lookup_keys]
        aliases: dict[bytes, int] = {}
        encrypt = AESGCM(self.encryption_key).encrypt
        lookup_hash = _hmac_sha256(self.lookup_key)
        lookup_key_id, encryption_key_id = self.lookup_key_id, self.encryption_key_id
        batch_id, available = self.batch_id, VoucherState.AVAILABLE.value
        seen = set(avoid)
        rows: list[VoucherRow] = []
        pending = list(serials)
        retried = False
        while pending:
            pins = draw_pins(len(pending), self.pin_length, randbytes)
            nonces = os.urandom(NONCE_BYTES * len(pending))
            again = []
            for index, (serial, clear) in enumerate(zip(pending, pins, strict=True)):
                digest = lookup_hash(clear)
                if digest in seen:
                    again.append(serial)
                    continue
                seen.add(digest)
                for other_hash in other_hashes:
                    aliases[other_hash(clear)] = serial
                nonce = nonces[index * NONCE_BYTES : (index + 1) * NONCE_BYTES]
                rows.append(
                    (
                        serial,
                        batch_id,
                        digest,
                        lookup_key_id,
                        nonce + encrypt(nonce, clear, None),
                        encryption_key_id,
                        available,
                    )
                )
            if again:
                retried = True
            pending = again
        if retried:
            rows.sort()
        return Sealed(rows, aliases)


def copy_record_format(pin_length: int) -> str:
    """A VoucherRow as one binary COPY record: the field count, then each field's length
    and value (bigint, integer, bytea, smallint, bytea, smallint, varchar). Every field
    has a fixed size within a batch, so every record has one length."""
    ciphertext = NONCE_BYTES + pin_length + 16  # nonce, PIN, GCM tag
    state = len(VoucherState.AVAILABLE.value)
    return f">h iq ii i32s ih i{ciphertext}s ih i{state}s"


@dataclass(frozen=True)
class SealedCopy:
    """A chunk already in PostgreSQL's binary COPY format: one bytes object rather than
    seven Python objects a row, so handing it from a worker to the writer and writing it
    cost next to nothing. Made only when no other lookup key is live (no aliases)."""

    data: bytes
    count: int
    record_format: str

    def serial_span(self) -> tuple[int, int]:
        """The lowest and highest serial of the chunk (its first and last records only)."""
        body = memoryview(self.data)[len(COPY_HEADER) : -len(COPY_TRAILER)]
        size = struct.calcsize(self.record_format)
        first = struct.unpack_from(self.record_format, body, 0)[2]
        last = struct.unpack_from(self.record_format, body, (self.count - 1) * size)[2]
        return min(first, last), max(first, last)

    def rows(self) -> list[VoucherRow]:
        """The rows back, for the rare path (a PIN collision, an archived PIN)."""
        body = memoryview(self.data)[len(COPY_HEADER) : -len(COPY_TRAILER)]
        return [
            (serial, batch, digest, lookup, ciphertext, encryption, state.decode())
            for (
                _,
                _,
                serial,
                _,
                batch,
                _,
                digest,
                _,
                lookup,
                _,
                ciphertext,
                _,
                encryption,
                _,
                state,
            ) in struct.iter_unpack(self.record_format, body)
        ]

    def hashes(self) -> list[bytes]:
        return [row[2] for row in self.rows()]


def seal_copy(
    sealer: "Sealer", serials: Sequence[int], randbytes: RandomBytes = os.urandom
) -> SealedCopy:
    """:meth:`Sealer.seal_chunk` for PostgreSQL with no other live lookup key: the same
    PINs, hashes and ciphertexts, packed straight into binary COPY records."""
    assert not sealer.other_lookup_keys
    fmt = copy_record_format(sealer.pin_length)
    record = struct.Struct(fmt)
    pack_into, size = record.pack_into, record.size
    encrypt = AESGCM(sealer.encryption_key).encrypt
    inner_copy, outer_copy = _hmac_states(sealer.lookup_key)
    lookup_key_id, encryption_key_id = sealer.lookup_key_id, sealer.encryption_key_id
    batch_id, available = sealer.batch_id, VoucherState.AVAILABLE.value.encode()
    head = len(COPY_HEADER)
    data = bytearray(head + size * len(serials) + len(COPY_TRAILER))
    data[:head] = COPY_HEADER
    data[-len(COPY_TRAILER) :] = COPY_TRAILER
    ciphertext_length = NONCE_BYTES + sealer.pin_length + 16
    state_length = len(available)
    seen: set[bytes] = set()
    offset = head
    pending = list(serials)
    while pending:
        pins = draw_pins(len(pending), sealer.pin_length, randbytes)
        nonces = os.urandom(NONCE_BYTES * len(pending))
        again = []
        at = -NONCE_BYTES
        for serial, clear in zip(pending, pins, strict=True):
            at += NONCE_BYTES
            # The lookup hash (HMAC-SHA256, as _hmac_sha256), inline: a call less a row.
            hashed = inner_copy()
            hashed.update(clear)
            outer = outer_copy()
            outer.update(hashed.digest())
            digest = outer.digest()
            if digest in seen:
                again.append(serial)
                continue
            seen.add(digest)
            nonce = nonces[at : at + NONCE_BYTES]
            pack_into(
                data,
                offset,
                7,
                8,
                serial,
                4,
                batch_id,
                32,
                digest,
                2,
                lookup_key_id,
                ciphertext_length,
                nonce + encrypt(nonce, clear, None),
                2,
                encryption_key_id,
                state_length,
                available,
            )
            offset += size
        pending = again
    return SealedCopy(bytes(data), len(serials), fmt)


# --- worker processes -----------------------------------------------------------------
# Each task carries the batch's sealer (its keys included, as the pool's start-up
# arguments would): a pool can then start before the batch exists.


def ready() -> None:
    """A worker's first task: nothing but the process starting and importing this module."""


def seal_in_worker(sealer: Sealer, first: int, count: int) -> Sealed:
    """The rows of serials ``first`` … ``first + count - 1``."""
    return sealer.seal_chunk(range(first, first + count))


def seal_copy_in_worker(sealer: Sealer, first: int, count: int) -> SealedCopy:
    """The COPY records of serials ``first`` … ``first + count - 1``."""
    return seal_copy(sealer, range(first, first + count))
