"""Request dependencies: the runtime, the authenticated principal, rate limits."""

import asyncio
import functools
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Annotated, Any, TypeVar

from fastapi import Depends, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from voms.domain.errors import ResultError, VomsError
from voms.domain.results import Result
from voms.runtime import Runtime
from voms.services.auth import Principal, authenticate, cached_principal
from voms.services.uow import KeptConnections

_bearer = HTTPBearer(auto_error=False, description="API key created with `voms apikey create`")


class Unauthorized(VomsError):
    http_status = 401


T = TypeVar("T")


async def run_redemption_work(request: Request, func: Callable[..., T], *args: object) -> T:
    """Run blocking redemption-family work on the process's few redemption threads.

    Starlette's thread pool runs up to 40 threads; 40 redemptions at once fight over the
    GIL and each takes longer. ``VOMS_REDEMPTION_THREADS`` of them run, the rest wait
    their turn in the queue, where waiting costs nothing. A plain executor, not anyio's
    ``to_thread``: handing work to a thread and back costs half the CPU that way, and
    nothing here needs its context variables or cancel scopes. Each thread keeps its
    database connection between calls (:class:`voms.services.uow.KeptConnections`).
    """
    state = request.app.state
    executor: ThreadPoolExecutor | None = getattr(state, "redemption_executor", None)
    if executor is None:  # made on first use, per app
        state.connection_keeper = keeper = KeptConnections()
        executor = state.redemption_executor = ThreadPoolExecutor(
            state.runtime.settings.redemption_threads,
            thread_name_prefix="voms-redemption",
            initializer=keeper.keep_on_this_thread,
        )
    return await asyncio.get_running_loop().run_in_executor(
        executor, functools.partial(func, *args)
    )


def stop_redemption_threads(state: Any) -> None:
    """Let the redemption threads finish their work, then give their connections back
    (when the app stops)."""
    executor: ThreadPoolExecutor | None = getattr(state, "redemption_executor", None)
    if executor is not None:
        executor.shutdown(wait=True)
        state.connection_keeper.release()
        del state.redemption_executor


# Dependencies are async (and never block): FastAPI would run a sync one in a worker
# thread, one thread hop per dependency per request.
async def get_runtime(request: Request) -> Runtime:
    return request.app.state.runtime  # type: ignore[no-any-return]


RuntimeDep = Annotated[Runtime, Depends(get_runtime)]


class TokenBuckets:
    """Per-API-key token buckets: ``rate`` requests a second, bursts up to ``burst``."""

    def __init__(self, rate: float, burst: int) -> None:
        self.rate = rate
        self.burst = float(burst)
        self._buckets: dict[int, tuple[float, float]] = {}
        self._lock = threading.Lock()

    def allow(self, key: int) -> bool:
        now = time.monotonic()
        with self._lock:
            tokens, last = self._buckets.get(key, (self.burst, now))
            tokens = min(self.burst, tokens + (now - last) * self.rate)
            allowed = tokens >= 1.0
            self._buckets[key] = (tokens - 1.0 if allowed else tokens, now)
            return allowed


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
