"""Key rotation: re-encrypt PIN ciphertexts under the active encryption key.

`voms keys rotate` adds a key to the key file; this job moves every ciphertext to it,
chunk by chunk in serial order. The last serial done is committed with each chunk
(``job_cursors``), so a stopped run resumes there; a finished pass is remembered per
target key, so the scheduled run is free until the next rotation. Old keys stay in the
key file: `voms keys show` tells how many ciphertexts still use each.
"""

import os
from typing import Any

from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from sqlalchemy import Connection, bindparam, delete, func, insert, select, update

from voms.crypto import NONCE_BYTES, Keyring, KeyringError, load_keyring
from voms.db import tables as t
from voms.runtime import Runtime
from voms.services.events import destinations
from voms.services.housekeeping.context import JobContext
from voms.services.uow import UnitOfWork

JOB = "key_reencryption"
_v, _c = t.vouchers, t.job_cursors
_UPDATE = (
    update(_v)
    .where(_v.c.serial == bindparam("s"), _v.c.encryption_key_id == bindparam("old"))
    .values(pin_ciphertext=bindparam("ct"), encryption_key_id=bindparam("new"))
)


def current_keyring(rt: Runtime) -> Keyring:
    """The key file as it is now (a rotation may postdate this process); kept in ``rt``."""
    try:
        keyring = load_keyring(rt.settings.resolved_keys_file())
    except KeyringError:
        return rt.keyring
    if keyring != rt.keyring:
        rt.keyring = keyring
    return keyring


def _cursor(conn: Connection) -> tuple[int, dict[str, Any]]:
    row = conn.execute(select(_c.c.position, _c.c.detail).where(_c.c.job == JOB)).first()
    return (0, {}) if row is None else (int(row.position), dict(row.detail))


def _save(conn: Connection, position: int, detail: dict[str, Any], ctx: JobContext) -> None:
    conn.execute(delete(_c).where(_c.c.job == JOB))
    conn.execute(insert(_c).values(job=JOB, position=position, detail=detail, updated_at=ctx.now))


def reencrypt_pins(ctx: JobContext) -> int:
    """Re-encrypt every ciphertext not under the active key; resumable by serial cursor."""
    keyring = current_keyring(ctx.rt)
    target = keyring.active_encryption_key_id
    encrypt = AESGCM(keyring.encryption_keys[target]).encrypt
    decrypt = keyring.pin_decryptor()
    ctx.detail["webhook_secrets"] = destinations.reencrypt_secrets(ctx.rt, keyring)
    with UnitOfWork(ctx.rt, read_only=True) as uow:
        position, detail = _cursor(uow.conn)
    if detail.get("target_key") != target:
        position, detail = 0, {"target_key": target, "done": False}
    ctx.detail.update(target_key=target, resumed_from=position)
    if detail.get("done"):
        return 0
    total = 0
    while True:
        with UnitOfWork(ctx.rt) as uow:
            conn = uow.conn
            rows = conn.execute(
                select(_v.c.serial, _v.c.encryption_key_id, _v.c.pin_ciphertext)
                .where(_v.c.serial > position)
                .order_by(_v.c.serial)
                .limit(ctx.chunk_size)
            ).all()
            changes = []
            for row in rows:
                if row.encryption_key_id == target:
                    continue
                nonce = os.urandom(NONCE_BYTES)
                clear = decrypt(row.encryption_key_id, row.pin_ciphertext).encode("ascii")
                changes.append(
                    {
                        "s": row.serial,
                        "old": row.encryption_key_id,
                        "new": target,
                        "ct": nonce + encrypt(nonce, clear, None),
                    }
                )
            if changes:
                conn.execute(_UPDATE, changes)
            if rows:
                position = rows[-1].serial
            detail = {"target_key": target, "done": len(rows) < ctx.chunk_size}
            _save(conn, position, detail, ctx)
            uow.commit()
        total += len(changes)
        ctx.detail["position"] = position
        ctx.chunk_done(len(changes))
        if detail["done"]:
            return total


def key_usage(rt: Runtime) -> dict[str, dict[int, int]]:
    """How many vouchers (live and archived) use each key id."""
    a = t.voucher_archive
    with UnitOfWork(rt, read_only=True) as uow:
        conn = uow.conn
        encryption = conn.execute(
            select(_v.c.encryption_key_id, func.count()).group_by(_v.c.encryption_key_id)
        ).all()
        lookup: dict[int, int] = {}
        for table in (_v, a):
            for key_id, count in conn.execute(
                select(table.c.lookup_key_id, func.count()).group_by(table.c.lookup_key_id)
            ):
                lookup[key_id] = lookup.get(key_id, 0) + count
    return {
        "vouchers_per_encryption_key": {key_id: count for key_id, count in encryption},
        "vouchers_per_lookup_key": lookup,
    }
