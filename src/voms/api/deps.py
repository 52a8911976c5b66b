"""Request dependencies: the runtime, the authenticated principal, rate limits."""

import asyncio
import dataclasses
import functools
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Annotated, Any, TypeVar

from fastapi import Depends, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from voms.db.engine import ConnectionKeeper
from voms.domain.errors import Forbidden, ResultError, VomsError
from voms.domain.results import Result
from voms.domain.roles import Permission
from voms.runtime import Runtime
from voms.services.auth import Principal, authenticate, cached_principal

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
    database connection between calls (:class:`voms.db.engine.ConnectionKeeper`).
    """
    state = request.app.state
    executor: ThreadPoolExecutor | None = getattr(state, "redemption_executor", None)
    if executor is None:  # made on first use, per app
        state.connection_keeper = keeper = ConnectionKeeper()
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

    def __init__(self, rate: float, burst: int, invalid_per_minute: int = 30) -> None:
        self.rate = rate
        self.burst = float(burst)
        self.invalid_per_minute = invalid_per_minute
        self._buckets: dict[int, tuple[float, float]] = {}
        self._invalid: dict[str, tuple[float, float]] = {}
        self._lock = threading.Lock()

    def allow(self, key: int) -> bool:
        return self._take(self._buckets, key, self.rate, self.burst)

    def allow_invalid(self, client: str) -> bool:
        """One more invalid key from ``client``: VOMS_INVALID_KEYS_PER_MINUTE, bursts as
        large (per process)."""
        if len(self._invalid) > 100_000:  # forget them all rather than grow without end
            self._invalid.clear()
        per_minute = self.invalid_per_minute
        return self._take(self._invalid, client, per_minute / 60.0, float(per_minute))

    def _take(
        self, buckets: dict[Any, tuple[float, float]], key: Any, rate: float, burst: float
    ) -> bool:
        now = time.monotonic()
        with self._lock:
            tokens, last = buckets.get(key, (burst, now))
            tokens = min(burst, tokens + (now - last) * rate)
            allowed = tokens >= 1.0
            buckets[key] = (tokens - 1.0 if allowed else tokens, now)
            return allowed


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
    if not any(principal.may(p) for p in permissions):
        raise Forbidden(f"role {principal.role} may not {' or '.join(permissions)}")


async def principal_of(request: Request) -> Principal:
    """The caller behind the Bearer API key: 401 when missing or invalid, 429 when too fast.

    Authenticated once per request: the gate's answer is reused. The redemption routes
    call this directly (solving a dependency costs more CPU than the check itself) and
    document their security in OpenAPI by hand.
    """
    known: Principal | None = getattr(request.state, "principal", None)
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
    known, principal = cached_principal(rt, secret)
    if not known:
        principal = await run_in_threadpool(authenticate, rt, secret)
    if principal is None:
        # Invalid keys are throttled too, per client address: guessing keys is slow.
        if not buckets.allow_invalid(client_address(request)):
            raise ResultError(Result.TOO_MANY_REQUESTS)
        raise Unauthorized("invalid or revoked API key")
    if principal.api_key_id is not None and not buckets.allow(principal.api_key_id):
        raise ResultError(Result.TOO_MANY_REQUESTS)
    principal = dataclasses.replace(principal, client=client_address(request))
    request.state.principal = principal
    return principal


def client_address(request: Request) -> str:
    """The caller's address: the peer, or the client a trusted proxy forwarded for
    (resolved by voms.api.forwarded before the app sees the request)."""
    return request.client.host if request.client else "unknown"


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
