"""A service provider's billing: which engine holds its balances, and how to reach it.

Stored as JSON on the provider (``service_providers.billing``; null: the built-in
wallet). A secret (a UCIP password, an HTTP engine's signing secret) is never stored:
the configuration holds a reference to it, ``env:NAME`` (an environment variable of
the server processes) or ``keys:NAME`` (an entry of the key file's ``secrets``, loaded
with the keys), and each process resolves it when it builds the engine.
"""

import os
from collections.abc import Mapping
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter

SECRET_REFERENCE = r"^(env|keys):[A-Za-z0-9_.\-]{1,100}$"  # noqa: S105 (a pattern)
SecretReference = Annotated[
    str,
    Field(
        pattern=SECRET_REFERENCE,
        description="env:NAME (an environment variable) or keys:NAME (the key file's "
        "secrets); secrets never live in the database",
    ),
]
# No user:password@ in the URL: credentials go in the fields that hold references.
Url = Annotated[str, Field(pattern=r"^https?://[^\s/@]+(/[^\s]*)?$", max_length=500)]
TimeoutMs = Annotated[int, Field(ge=50, le=30_000)]


class _Billing(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class BuiltinBilling(_Billing):
    engine: Literal["builtin"]


class UcipBilling(_Billing):
    """An IN account manager spoken to over XML-RPC as UCIP does (Ericsson AIR)."""

    engine: Literal["ucip"]
    url: Url
    username: Annotated[str, Field(min_length=1, max_length=100)] | None = None
    password: SecretReference | None = None
    timeout_ms: TimeoutMs = 3000
    origin_host: Annotated[str, Field(pattern=r"^[A-Za-z0-9.\-]{1,64}$")] = "voms"


class HttpBilling(_Billing):
    """Any other charging system: a signed JSON call (docs/charging.md)."""

    engine: Literal["http"]
    url: Url
    secret: SecretReference
    timeout_ms: TimeoutMs = 3000


Billing = Annotated[BuiltinBilling | UcipBilling | HttpBilling, Field(discriminator="engine")]
ExternalBilling = UcipBilling | HttpBilling
_BILLING: TypeAdapter[BuiltinBilling | UcipBilling | HttpBilling] = TypeAdapter(Billing)


def parse(stored: object) -> BuiltinBilling | UcipBilling | HttpBilling:
    """The configuration stored on a provider (None: the built-in wallet)."""
    if stored is None:
        return BuiltinBilling(engine="builtin")
    return _BILLING.validate_python(stored)


class SecretMissing(ValueError):
    """A secret reference names nothing this process can read."""


def resolve_secret(reference: str, key_file_secrets: Mapping[str, str]) -> str:
    """The value a secret reference names: an environment variable or a key file entry."""
    kind, _, name = reference.partition(":")
    if kind == "env":
        value = os.environ.get(name)
    elif kind == "keys":
        value = key_file_secrets.get(name)
    else:
        raise SecretMissing(f"{reference!r} is not env:NAME or keys:NAME")
    if not value:
        raise SecretMissing(f"secret {reference} is not set")
    return value
