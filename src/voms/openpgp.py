"""OpenPGP through the system ``gpg`` binary (python-gnupg): partner keys and encryption.

Every call works in a throwaway GNUPGHOME that holds one partner's public key and
nothing else, so no keyring state is shared between processes or partners and the
trust decision is ours (the key was checked when the partner was added, and again
before each export). Plaintext only ever flows through gpg's stdin pipe.
"""

import io
import tempfile
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import gnupg

ARMOR_HEADER = "-----BEGIN PGP PUBLIC KEY BLOCK-----"
MAX_KEY_CHARS = 1_000_000
PIPE_CHUNK = 256 * 1024
# Never start a gpg-agent (public-key work needs none) and never ask anything.
_GPG_OPTIONS = ["--no-autostart", "--no-tty", "--yes"]
# zlib level 1: within 5 % of the default level's size on voucher files, at half the CPU.
_FAST_ZLIB = ["--compress-algo", "zlib", "--compress-level", "1"]
_STORED = ["--compress-algo", "none"]


class KeyRefused(Exception):
    """The text is not an encryption-capable, valid OpenPGP public key (says why)."""


class EncryptionFailed(Exception):
    """gpg did not produce a complete encrypted file."""


@dataclass(frozen=True)
class PublicKey:
    """What we keep to know a partner's key: its fingerprint, user ids and expiry."""

    fingerprint: str
    user_ids: tuple[str, ...]
    created_at: datetime
    expires_at: datetime | None


def _epoch(value: str) -> datetime | None:
    return datetime.fromtimestamp(int(value), UTC) if value else None


def _gpg(home: str, binary: str) -> gnupg.GPG:
    try:
        return gnupg.GPG(gpgbinary=binary, gnupghome=home, options=_GPG_OPTIONS)
    except (OSError, ValueError) as exc:
        raise EncryptionFailed(f"cannot run {binary!r}: install GnuPG ({exc})") from None


def _import_one(gpg: gnupg.GPG, armored: str) -> dict[str, Any]:
    text = armored.strip()
    if len(text) > MAX_KEY_CHARS or not text.isascii():
        raise KeyRefused("not an ASCII-armored OpenPGP public key")
    if not text.startswith(ARMOR_HEADER):
        raise KeyRefused(f"an ASCII-armored public key starts with {ARMOR_HEADER}")
    result = gpg.import_keys(text)
    if result.sec_imported:
        raise KeyRefused("this is a secret key; send only the public key")
    keys = gpg.list_keys()
    if not keys:
        raise KeyRefused("no usable OpenPGP public key found in the text")
    if len(keys) > 1:
        raise KeyRefused(f"the text holds {len(keys)} keys; give exactly one per partner")
    return keys[0]  # type: ignore[no-any-return]


def _check_usable(key: dict[str, Any]) -> PublicKey:
    expires_at = _epoch(key.get("expires") or "")
    validity = key.get("trust", "")
    if validity == "r":
        raise KeyRefused(f"key {key['fingerprint']} is revoked")
    if validity == "e":
        when = f" on {expires_at.date().isoformat()}" if expires_at else ""
        raise KeyRefused(f"key {key['fingerprint']} expired{when}")
    if validity in ("i", "d", "n"):
        raise KeyRefused(f"key {key['fingerprint']} is invalid or disabled")
    # An upper-case E: the key as a whole has a usable (unexpired, unrevoked)
    # encryption-capable primary key or subkey (gpg DETAILS, field 12).
    if "E" not in key.get("cap", ""):
        raise KeyRefused(
            f"key {key['fingerprint']} has no usable encryption subkey "
            "(sign-only, or its encryption subkeys are expired or revoked)"
        )
    created_at = _epoch(key.get("date") or "") or datetime.now(UTC)
    return PublicKey(
        fingerprint=key["fingerprint"],
        user_ids=tuple(key.get("uids") or ()),
        created_at=created_at,
        expires_at=expires_at,
    )


def inspect_public_key(armored: str, gpg_binary: str = "gpg") -> PublicKey:
    """Check that ``armored`` is one valid, encryption-capable public key; describe it.

    Raises :class:`KeyRefused` for anything else: garbage, a secret key, several keys,
    a revoked or expired key, a sign-only key.
    """
    with tempfile.TemporaryDirectory(prefix="voms-gpg-") as home:
        return _check_usable(_import_one(_gpg(home, gpg_binary), armored))


class _IterReader(io.RawIOBase):
    """A readable stream over an iterator of byte chunks (what gpg's stdin copier reads)."""

    def __init__(self, chunks: Iterable[bytes]) -> None:
        self._chunks: Iterator[bytes] = iter(chunks)
        self._pending = memoryview(b"")

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        while not self._pending:
            try:
                self._pending = memoryview(next(self._chunks))
            except StopIteration:
                return 0
        size = min(len(buffer), len(self._pending))
        buffer[:size] = self._pending[:size]
        self._pending = self._pending[size:]
        return size


def encrypt_stream(
    armored: str,
    plaintext: Iterable[bytes],
    write: Callable[[bytes], object],
    *,
    filename: str,
    gpg_binary: str = "gpg",
    compress: bool = True,
) -> PublicKey:
    """Encrypt the chunks of ``plaintext`` to the key ``armored``; pass the binary
    OpenPGP message to ``write`` chunk by chunk. Memory stays constant: nothing is
    buffered beyond one pipe chunk, and no plaintext is written to any file.

    The key is checked again first (it may have expired since it was imported).
    ``compress=False`` for plaintext that is compressed already (XLSX).
    Exceptions raised while producing the plaintext propagate; the output is then
    incomplete and must be discarded.
    """
    with tempfile.TemporaryDirectory(prefix="voms-gpg-") as home:
        gpg = _gpg(home, gpg_binary)
        key = _check_usable(_import_one(gpg, armored))
        gpg.buffer_size = PIPE_CHUNK

        def on_data(chunk: bytes) -> bool:
            if chunk:
                write(chunk)
            return False  # do not also buffer the ciphertext in memory

        gpg.on_data = on_data
        source = _IterReader(plaintext)
        result = gpg.encrypt_file(
            source,
            key.fingerprint,
            armor=False,
            always_trust=True,
            extra_args=["--set-filename", filename, *(_FAST_ZLIB if compress else _STORED)],
        )
        failure = getattr(result, "on_data_failure", None)
        if failure is not None:
            raise failure
        if not result.ok:
            status = result.status or "no status"
            raise EncryptionFailed(f"gpg failed to encrypt ({status}, exit {result.returncode})")
        return key
