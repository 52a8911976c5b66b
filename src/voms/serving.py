"""What every HTTP interface shares (the REST API and the channels): the runtime as a
dependency, the redemption threads, and the rate limits.

Rate limits are token buckets per process: per API key for integrations (REST, SOAP;
``VOMS_RATE_LIMIT_PER_SECOND``, ``VOMS_RATE_LIMIT_BURST``), and on the subscriber
channels (USSD, SMS, IVR, web) per channel as a key would be and per MSISDN
(``VOMS_MSISDN_RATE_LIMIT_PER_MINUTE``). A call over its limit answers 5007.
"""

import asyncio
import functools
import math
import threading
import time
from collections.abc import Callable, Hashable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Annotated, Any, TypeVar

from fastapi import Depends, Request

from voms.runtime import Runtime
from voms.services.uow import KeptConnections

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


def client_address(request: Request) -> str:
    """The caller's address: the peer, or the client a trusted proxy forwarded for
    (resolved by voms.api.forwarded before the app sees the request)."""
    client = request.scope.get("client")  # (request.client builds an Address each time)
    return str(client[0]) if client else "unknown"


class TokenBuckets:
    """Token buckets per key: ``rate`` requests a second, bursts up to ``burst``."""

    MAX_KEYS = 100_000  # beyond, keys whose bucket is full again are forgotten

    def __init__(self, rate: float, burst: int) -> None:
        self.rate = rate
        self.burst = float(burst)
        self._buckets: dict[Hashable, tuple[float, float]] = {}
        self._lock = threading.Lock()

    def allow(self, key: Hashable) -> bool:
        now = time.monotonic()
        with self._lock:
            if len(self._buckets) > self.MAX_KEYS:
                full = now - self.burst / self.rate
                self._buckets = {k: v for k, v in self._buckets.items() if v[1] > full}
            tokens, last = self._buckets.get(key, (self.burst, now))
            tokens = min(self.burst, tokens + (now - last) * self.rate)
            allowed = tokens >= 1.0
            self._buckets[key] = (tokens - 1.0 if allowed else tokens, now)
            return allowed

    def retry_after(self, key: Hashable) -> int:
        """Whole seconds until ``key`` has a request again (at least 1)."""
        with self._lock:
            tokens, last = self._buckets.get(key, (self.burst, time.monotonic()))
        tokens = min(self.burst, tokens + (time.monotonic() - last) * self.rate)
        return max(1, math.ceil((1.0 - tokens) / self.rate))


@dataclass(frozen=True)
class RateLimits:
    """The process's buckets: per API key (or subscriber channel), and per MSISDN."""

    per_key: TokenBuckets
    per_msisdn: TokenBuckets

    def allow_subscriber(self, channel: str, msisdn: str) -> bool:
        """A subscriber channel's redemption: within its channel's and its number's limit."""
        return self.per_key.allow(("channel", channel)) and self.per_msisdn.allow(msisdn)


def rate_limits(rt: Runtime, *, fresh: bool = False) -> RateLimits:
    """The process's rate limits, made on first use (``fresh``: made anew, as an app
    starts, from the settings as they are then)."""
    limits = None if fresh else rt.caches.get("rate_limits")
    if not isinstance(limits, RateLimits):
        per_minute = rt.settings.msisdn_rate_limit_per_minute
        limits = RateLimits(
            TokenBuckets(rt.settings.rate_limit_per_second, rt.settings.rate_limit_burst),
            TokenBuckets(per_minute / 60.0, per_minute),
        )
        rt.caches["rate_limits"] = limits
    return limits
