"""Client request ids: a retry with the same id and body gets the first answer again.

Scope is the caller (one API key, or one named user), so two integrations never see
each other's ids. The body is fingerprinted with a keyed hash: it may hold a PIN.
"""

import json
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, bindparam, insert, select

from voms.crypto import Keyring
from voms.db import hot
from voms.db import tables as t
from voms.db.upsert import insert_if_absent
from voms.domain.errors import ResultError
from voms.domain.results import Result
from voms.services.auth import Principal

MAX_REQUEST_ID_LENGTH = 100

_k = t.idempotency_keys
_FIND = select(_k.c.request_hash, _k.c.status_code, _k.c.response).where(
    _k.c.scope == bindparam("scope"), _k.c.request_id == bindparam("request_id")
)


@dataclass(frozen=True)
class Stored:
    request_hash: str
    status_code: int
    response: dict[str, Any]


def scope_of(actor: Principal) -> str:
    if actor.api_key_id is not None:
        return f"key:{actor.api_key_id}"
    return f"user:{actor.name}"[:40]


def fingerprint(keyring: Keyring, operation: str, params: Mapping[str, Any]) -> str:
    """A keyed hash of what was asked (never reversible to a PIN)."""
    canonical = json.dumps(
        {"operation": operation, **params}, sort_keys=True, ensure_ascii=True, default=str
    )
    return keyring.lookup_hash(canonical).hex()


def find(conn: Connection, scope: str, request_id: str) -> Stored | None:
    row = conn.execute(_FIND, {"scope": scope, "request_id": request_id}).first()
    return Stored(row.request_hash, row.status_code, row.response) if row is not None else None


_INSERT = insert(_k)


def remember(
    conn: Connection,
    scope: str,
    request_id: str,
    request_hash: str,
    response: dict[str, Any],
    status_code: int,
    now: datetime,
    *,
    plain: bool = False,
) -> bool:
    """Store the answer in the caller's transaction; False if the id was taken meanwhile.

    ``plain``: a plain INSERT, which returns nothing and so can go out pipelined with the
    COMMIT (voms.db.pipeline). A taken id then raises SQLAlchemy's IntegrityError (at the
    COMMIT) and spoils the transaction: the caller rolls back and looks up the first answer.
    """
    row = {
        "scope": scope,
        "request_id": request_id,
        "request_hash": request_hash,
        "status_code": status_code,
        "response": response,
        "created_at": now,
    }
    if plain:
        hot.run(conn, _INSERT, row)
        return True
    return insert_if_absent(conn, _k, row)


def replay(stored: Stored) -> dict[str, Any]:
    """The first answer again: returned when it was a success, raised when it was not."""
    response = dict(stored.response)
    code = response.pop("result_code", 0)
    response.pop("result_text", None)
    if code == 0:
        return stored.response
    raise ResultError(Result.from_code(code), **response)
