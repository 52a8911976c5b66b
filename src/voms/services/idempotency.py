"""Client request ids: who a request id belongs to, and the fingerprint of a body.

The rule itself (same id and body: the first answer again; other body: a conflict) is
the unit of work's (:meth:`voms.services.uow.UnitOfWork.idempotent`). Scope is the
caller (one API key, or one named user), so two integrations never see each other's ids.
The body is fingerprinted with a keyed hash: it may hold a PIN.
"""

import json
from collections.abc import Mapping
from typing import Any

from voms.crypto import Keyring
from voms.services.auth import Principal

MAX_REQUEST_ID_LENGTH = 100


def scope_of(actor: Principal) -> str:
    """The caller's own space of request ids."""
    if actor.api_key_id is not None:
        return f"key:{actor.api_key_id}"
    return f"user:{actor.name}"[:40]


def fingerprint(keyring: Keyring, operation: str, params: Mapping[str, Any]) -> str:
    """A keyed hash of what was asked (never reversible to a PIN)."""
    canonical = json.dumps(
        {"operation": operation, **params}, sort_keys=True, ensure_ascii=True, default=str
    )
    return keyring.lookup_hash(canonical).hex()
