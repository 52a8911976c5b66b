"""Request dependencies of the REST API: the authenticated principal, its role and its
rate limit (voms.serving holds what the channels share)."""

import dataclasses
import functools
from typing import Annotated

from fastapi import Depends, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from voms.domain.errors import Forbidden, ResultError, VomsError
from voms.domain.results import Result
from voms.domain.roles import Permission
from voms.runtime import Runtime
from voms.services.auth import Principal, authenticate, cached_principal
from voms.serving import RuntimeDep as RuntimeDep  # the routes take it from here
from voms.serving import TokenBuckets, client_address

_bearer = HTTPBearer(auto_error=False, description="API key created with `voms apikey create`")


class Unauthorized(VomsError):
    http_status = 401


class Allowed:
    """A route's dependency: the caller behind the Bearer API key, refused (403) unless
    its role (or a right given to the key) carries one of ``permissions``.

    The gate (voms.api.gate) runs the same check before the body is read; this one keeps
    a route safe wherever it is mounted. Service-provider scope is checked by the
    service, which knows whose object it is.
    """

    def __init__(self, *permissions: Permission) -> None:
        self.permissions = permissions  # any one of them will do

    async def __call__(
        self,
        request: Request,
        credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
    ) -> Principal:
        principal = await principal_of(request)
        require_role(principal, self.permissions)
        return principal


def require_role(principal: Principal, permissions: tuple[Permission, ...]) -> None:
    """Refuse (403) a caller whose role and rights carry none of ``permissions``."""
    for permission in permissions:
        if principal.may(permission):
            return
    raise Forbidden(f"role {principal.role} may not {' or '.join(permissions)}")


async def principal_of(request: Request) -> Principal:
    """The caller behind the Bearer API key: 401 when missing or invalid, 429 when too fast.

    Authenticated once per request: the gate's answer is reused. The redemption routes
    call this directly (solving a dependency costs more CPU than the check itself) and
    document their security in OpenAPI by hand.
    """
    # (read from the state's dict: getattr on request.state raises and catches an
    # AttributeError, with its message, on every request that has none yet)
    state = request.scope.get("state")
    known: Principal | None = state.get("principal") if state is not None else None
    if known is not None:
        return known
    return await authenticate_request(request)


async def authenticate_request(request: Request) -> Principal:
    """Check the request's Bearer key (401, 429); the principal carries the client."""
    scheme, _, secret = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not secret.strip():
        raise Unauthorized("missing API key (Authorization: Bearer <key>)")
    rt: Runtime = request.app.state.runtime
    secret = secret.strip()
    buckets: TokenBuckets = request.app.state.rate_limits
    invalid_keys: TokenBuckets = request.app.state.invalid_keys
    known, principal = cached_principal(rt, secret)
    if not known:
        principal = await run_in_threadpool(authenticate, rt, secret)
    if principal is None:
        # Invalid keys are throttled too, per client address: guessing keys is slow.
        if not invalid_keys.allow(client_address(request)):
            raise ResultError(Result.TOO_MANY_REQUESTS)
        raise Unauthorized("invalid or revoked API key")
    if principal.api_key_id is not None and not buckets.allow(principal.api_key_id):
        raise ResultError(Result.TOO_MANY_REQUESTS)
    principal = _with_client(principal, client_address(request))
    request.state.principal = principal
    return principal


@functools.lru_cache(maxsize=4096)
def _with_client(principal: Principal, client: str) -> Principal:
    """``principal`` calling from ``client``: made once per key and address (a key calls
    from few addresses), not once per request."""
    return dataclasses.replace(principal, client=client)


CatalogReader = Annotated[Principal, Depends(Allowed(Permission.CATALOG_READ))]
CatalogWriter = Annotated[Principal, Depends(Allowed(Permission.CATALOG_WRITE))]
BatchReader = Annotated[Principal, Depends(Allowed(Permission.BATCH_READ))]
BatchWriter = Annotated[Principal, Depends(Allowed(Permission.BATCH_WRITE))]
LookupCaller = Annotated[Principal, Depends(Allowed(Permission.LOOKUP))]
SubscriberWriter = Annotated[Principal, Depends(Allowed(Permission.SUBSCRIBER_WRITE))]
WalletAdjuster = Annotated[Principal, Depends(Allowed(Permission.WALLET_ADJUST))]
Exporter = Annotated[Principal, Depends(Allowed(Permission.EXPORT))]
AuditReader = Annotated[Principal, Depends(Allowed(Permission.AUDIT_READ))]
Housekeeper = Annotated[Principal, Depends(Allowed(Permission.HOUSEKEEPING))]
HousekeepingReader = Annotated[
    Principal, Depends(Allowed(Permission.HOUSEKEEPING, Permission.AUDIT_READ))
]
KeyAdmin = Annotated[Principal, Depends(Allowed(Permission.APIKEY_ADMIN))]
