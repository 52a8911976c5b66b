"""Request dependencies of the REST API: the runtime, the authenticated principal and
its rate limit (voms.serving holds what the channels share)."""

from typing import Annotated

from fastapi import Depends, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from voms.domain.errors import ResultError, VomsError
from voms.domain.results import Result
from voms.runtime import Runtime
from voms.services.auth import Principal, authenticate, cached_principal
from voms.serving import RuntimeDep, TokenBuckets

__all__ = ["PrincipalDep", "RuntimeDep", "get_principal", "principal_of"]

_bearer = HTTPBearer(auto_error=False, description="API key created with `voms apikey create`")


class Unauthorized(VomsError):
    http_status = 401


async def get_principal(
    request: Request,
    rt: RuntimeDep,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> Principal:
    """The caller behind the Bearer API key: 401 when missing or invalid, 429 when too fast."""
    if credentials is None or credentials.scheme.lower() != "bearer":
        raise Unauthorized("missing API key (Authorization: Bearer <key>)")
    return await _principal(request, rt, credentials.credentials)


async def principal_of(request: Request) -> Principal:
    """:func:`get_principal` without FastAPI's dependency machinery, for the hot routes.

    Solving ``PrincipalDep`` costs more CPU than the check itself; a redemption route
    calls this directly and documents its security in OpenAPI by hand.
    """
    scheme, _, secret = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not secret.strip():
        raise Unauthorized("missing API key (Authorization: Bearer <key>)")
    return await _principal(request, request.app.state.runtime, secret.strip())


async def _principal(request: Request, rt: Runtime, secret: str) -> Principal:
    known, principal = cached_principal(rt, secret)
    if not known:
        principal = await run_in_threadpool(authenticate, rt, secret)
    if principal is None:
        raise Unauthorized("invalid or revoked API key")
    buckets: TokenBuckets = request.app.state.rate_limits
    if principal.api_key_id is not None and not buckets.allow(principal.api_key_id):
        raise ResultError(Result.TOO_MANY_REQUESTS)
    request.state.principal = principal
    return principal


PrincipalDep = Annotated[Principal, Depends(get_principal)]
