"""Keyring: PIN lookup hashes (HMAC-SHA256) and PIN encryption (AES-256-GCM).

Keys live in a key file (or the environment), never in the database. Every key has a
small integer id stored next to what it produced, so keys can rotate.
"""

import base64
import hashlib
import hmac
import json
import os
import secrets
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.ciphers.aead import AESGCM

KEY_BYTES = 32
NONCE_BYTES = 12
KEYS_ENV = "VOMS_KEYS"  # the key file's JSON content, for deployments without files


class KeyringError(Exception):
    """The key file is missing, unreadable or inconsistent."""


@dataclass(frozen=True)
class Keyring:
    """Lookup keys (newest used for new PINs) and encryption keys (likewise)."""

    lookup_keys: dict[int, bytes]
    encryption_keys: dict[int, bytes]
    active_lookup_key_id: int
    active_encryption_key_id: int
    # Named secrets of other systems (a charging system's password), kept here so
    # that they never live in the database: docs/charging.md "Secrets".
    secrets: dict[str, str] = field(default_factory=dict)

    def lookup_hash(self, pin: str, key_id: int | None = None) -> bytes:
        """Keyed hash of a PIN under one lookup key (the active one by default)."""
        key = self.lookup_keys[self.active_lookup_key_id if key_id is None else key_id]
        return hmac.new(key, pin.encode("ascii"), hashlib.sha256).digest()

    def lookup_hashes(self, pin: str) -> list[bytes]:
        """The PIN's hash under every live lookup key (a redemption tries each)."""
        return [self.lookup_hash(pin, key_id) for key_id in sorted(self.lookup_keys, reverse=True)]

    def encrypt(self, pin: str, key_id: int | None = None) -> tuple[int, bytes]:
        """AES-256-GCM ciphertext (nonce prefixed) of a PIN and the id of its key."""
        kid = self.active_encryption_key_id if key_id is None else key_id
        nonce = os.urandom(NONCE_BYTES)
        return kid, nonce + AESGCM(self.encryption_keys[kid]).encrypt(
            nonce, pin.encode("ascii"), None
        )

    def decrypt(self, key_id: int, blob: bytes) -> str:
        """The PIN inside a ciphertext made by :meth:`encrypt`."""
        try:
            key = self.encryption_keys[key_id]
        except KeyError:
            raise KeyringError(f"encryption key {key_id} is not in the key file") from None
        nonce, ciphertext = blob[:NONCE_BYTES], blob[NONCE_BYTES:]
        return AESGCM(key).decrypt(nonce, ciphertext, None).decode("ascii")

    def pin_decryptor(self) -> Callable[[int, bytes], str]:
        """:meth:`decrypt` for bulk work: one cipher object per key (about 3x faster)."""
        ciphers: dict[int, AESGCM] = {}

        def decrypt(key_id: int, blob: bytes) -> str:
            cipher = ciphers.get(key_id)
            if cipher is None:
                try:
                    cipher = ciphers[key_id] = AESGCM(self.encryption_keys[key_id])
                except KeyError:
                    raise KeyringError(f"encryption key {key_id} is not in the key file") from None
            return cipher.decrypt(blob[:NONCE_BYTES], blob[NONCE_BYTES:], None).decode("ascii")

        return decrypt

    def to_json(self) -> str:
        def encode(keys: dict[int, bytes]) -> list[dict[str, Any]]:
            return [
                {"id": kid, "key": base64.b64encode(key).decode()}
                for kid, key in sorted(keys.items())
            ]

        return json.dumps(
            {
                "version": 1,
                "lookup_keys": encode(self.lookup_keys),
                "encryption_keys": encode(self.encryption_keys),
                "active_lookup_key": self.active_lookup_key_id,
                "active_encryption_key": self.active_encryption_key_id,
                **({"secrets": self.secrets} if self.secrets else {}),
            },
            indent=2,
        )

    @classmethod
    def from_json(cls, text: str) -> "Keyring":
        try:
            raw = json.loads(text)

            def decode(items: list[dict[str, Any]]) -> dict[int, bytes]:
                keys = {int(item["id"]): base64.b64decode(item["key"]) for item in items}
                if any(len(key) != KEY_BYTES for key in keys.values()):
                    raise KeyringError(f"every key must be {KEY_BYTES} bytes")
                return keys

            keyring = cls(
                lookup_keys=decode(raw["lookup_keys"]),
                encryption_keys=decode(raw["encryption_keys"]),
                active_lookup_key_id=int(raw["active_lookup_key"]),
                active_encryption_key_id=int(raw["active_encryption_key"]),
                secrets={str(k): str(v) for k, v in raw.get("secrets", {}).items()},
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise KeyringError(f"malformed key file: {exc.__class__.__name__}") from None
        if keyring.active_lookup_key_id not in keyring.lookup_keys:
            raise KeyringError("the active lookup key is missing")
        if keyring.active_encryption_key_id not in keyring.encryption_keys:
            raise KeyringError("the active encryption key is missing")
        return keyring

    @classmethod
    def new(cls) -> "Keyring":
        """A fresh keyring for a new installation: one lookup and one encryption key."""
        return cls(
            lookup_keys={1: secrets.token_bytes(KEY_BYTES)},
            encryption_keys={1: secrets.token_bytes(KEY_BYTES)},
            active_lookup_key_id=1,
            active_encryption_key_id=1,
        )

    def with_new_encryption_key(self) -> "Keyring":
        """A copy with one more encryption key, which becomes the active one."""
        kid = max(self.encryption_keys) + 1
        return Keyring(
            lookup_keys=self.lookup_keys,
            encryption_keys={**self.encryption_keys, kid: secrets.token_bytes(KEY_BYTES)},
            active_lookup_key_id=self.active_lookup_key_id,
            active_encryption_key_id=kid,
            secrets=self.secrets,
        )


def write_keyring(path: Path, keyring: Keyring, *, overwrite: bool = False) -> None:
    """Write the key file with mode 0600, atomically; refuse to replace one by accident."""
    if path.exists() and not overwrite:
        raise KeyringError(f"{path} already exists; refusing to overwrite keys")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(keyring.to_json())
        handle.flush()
        os.fsync(handle.fileno())
    os.chmod(tmp, 0o600)
    os.replace(tmp, path)


def load_keyring(path: Path) -> Keyring:
    """The keyring from ``VOMS_KEYS`` if set, else from the key file."""
    env = os.environ.get(KEYS_ENV)
    if env:
        return Keyring.from_json(env)
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise KeyringError(f"key file {path} not found") from None
    except OSError as exc:
        raise KeyringError(f"cannot read key file {path}: {exc.strerror}") from None
    return Keyring.from_json(text)


def hash_api_key(key: str) -> str:
    """API keys are 256-bit random tokens, so a plain SHA-256 cannot be reversed."""
    return hashlib.sha256(key.encode()).hexdigest()


def new_api_key() -> str:
    return "voms_" + secrets.token_urlsafe(32)


def body_signature(secret: str, body: bytes) -> str:
    """``sha256=<hex HMAC-SHA256 of body under secret>``: how webhooks (X-Voms-Signature)
    and the HTTP charging engine sign a body."""
    return "sha256=" + hmac.new(secret.encode("utf-8"), body, hashlib.sha256).hexdigest()


def signature_matches(secret: str, body: bytes, header: str | None) -> bool:
    """Whether ``header`` is :func:`body_signature` of ``body`` (compared in constant time)."""
    return header is not None and hmac.compare_digest(body_signature(secret, body), header)
