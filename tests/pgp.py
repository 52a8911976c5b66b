"""Real OpenPGP keys for tests, made with the `gpg` command line in a throwaway home.

The home also holds the secret keys, so tests decrypt exports exactly as a partner
would: ``gpg --decrypt``.
"""

import os
import subprocess
from dataclasses import dataclass
from pathlib import Path

GOOD_UID = "Print Shop <ops@print.example>"
OTHER_UID = "Retail Chain <keys@retail.example>"
ARMOR_HEADER = "-----BEGIN PGP PUBLIC KEY BLOCK-----"


@dataclass(frozen=True)
class PartnerKeys:
    home: Path
    good: str  # encryption-capable, valid
    good_fingerprint: str
    other: str  # a second valid key (another partner)
    expired: str
    revoked: str
    sign_only: str
    secret: str  # a secret key block, never accepted

    def gpg(self, *args: str, data: bytes | None = None) -> subprocess.CompletedProcess[bytes]:
        return _gpg(self.home, *args, data=data)

    def decrypt(self, ciphertext: bytes) -> bytes:
        """The plaintext, decrypted by the gpg command line with the partner's secret key."""
        done = self.gpg("--decrypt", data=ciphertext)
        assert done.returncode == 0, done.stderr.decode()
        return done.stdout


def _gpg(home: Path, *args: str, data: bytes | None = None) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        ["gpg", "--homedir", str(home), "--batch", "--yes", "--pinentry-mode", "loopback",
         "--passphrase", "", *args],
        input=data,
        capture_output=True,
        timeout=60,
        check=False,
        env={**os.environ, "GNUPGHOME": str(home)},
    )  # fmt: skip


def _new_key(home: Path, uid: str, *extra: str, usage: str = "default", expire: str = "0") -> str:
    algo = "future-default" if usage == "default" else "ed25519"
    done = _gpg(home, *extra, "--quick-gen-key", uid, algo, usage, expire)
    assert done.returncode == 0, done.stderr.decode()
    listing = _gpg(home, "--with-colons", "--list-keys", uid).stdout.decode()
    return next(line.split(":")[9] for line in listing.splitlines() if line.startswith("fpr:"))


def _export(home: Path, fingerprint: str, *, secret: bool = False) -> str:
    done = _gpg(home, "--armor", "--export-secret-keys" if secret else "--export", fingerprint)
    assert done.returncode == 0, done.stderr.decode()
    assert done.stdout
    return done.stdout.decode()


def make_partner_keys(home: Path) -> PartnerKeys:
    home.mkdir(mode=0o700, parents=True, exist_ok=True)
    good = _new_key(home, GOOD_UID)
    other = _new_key(home, OTHER_UID)
    expired = _new_key(
        home, "Old Shop <old@print.example>", "--faked-system-time", "20200101T000000",
        expire="1d",
    )  # fmt: skip
    sign_only = _new_key(home, "Signer <sign@print.example>", usage="sign")
    revoked = _new_key(home, "Lost Laptop <lost@print.example>")
    certificate = (home / "openpgp-revocs.d" / f"{revoked}.rev").read_text()
    # gpg prefixes the stored certificate with ':' so it is not imported by accident.
    certificate = certificate.replace(":" + ARMOR_HEADER, ARMOR_HEADER)
    assert _gpg(home, "--import", data=certificate.encode()).returncode == 0
    return PartnerKeys(
        home=home,
        good=_export(home, good),
        good_fingerprint=good,
        other=_export(home, other),
        expired=_export(home, expired),
        revoked=_export(home, revoked),
        sign_only=_export(home, sign_only),
        secret=_export(home, good, secret=True),
    )


def stop_agent(home: Path) -> None:
    """Stop the gpg-agent that key generation and decryption started for ``home``."""
    subprocess.run(
        ["gpgconf", "--homedir", str(home), "--kill", "gpg-agent"],
        capture_output=True,
        timeout=30,
        check=False,
    )


def make_short_lived_key(home: Path, seconds: int) -> tuple[str, float]:
    """A valid key that expires ``seconds`` from now: (armored public key, expiry epoch)."""
    import time

    home.mkdir(mode=0o700, parents=True, exist_ok=True)
    expires_at = time.time() + seconds
    fingerprint = _new_key(home, "Brief <brief@print.example>", expire=f"seconds={seconds}")
    return _export(home, fingerprint), expires_at
