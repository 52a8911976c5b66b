"""The FastAPI application factory."""

import gc
import inspect
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, AsyncExitStack, asynccontextmanager
from typing import Any

from fastapi import APIRouter, FastAPI, Request
from fastapi.routing import APIRoute
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

import voms
from voms.api import (
    admin,
    alerts,
    batches,
    blacklist,
    catalog,
    distribution,
    events,
    health,
    housekeeping,
    promotions,
    redemptions,
    reports,
    resellers,
    subscribers,
    tmf654,
    transactions,
    vouchers,
)
from voms.api.errors import install_error_handlers
from voms.api.forwarded import Network, resolve_client, trusted_networks
from voms.api.gate import Gate
from voms.api.metrics import Observe
from voms.api.schemas import API_ERRORS
from voms.channels import mobile, sms, soap, ussd
from voms.config import get_settings
from voms.jobs.scheduler import lifespan as jobs_lifespan
from voms.logs import configure_logging, scrub_server_logs
from voms.runtime import Runtime, build_runtime
from voms.services.events.relay import RelayThread
from voms.serving import TokenBuckets, rate_limits, stop_redemption_threads
from voms.web import mount as mount_console


class App(FastAPI):
    """FastAPI, with a short way in for the busiest calls.

    A POST to the exact path of a route given to :meth:`shortcut` goes straight to that
    route's endpoint: FastAPI's routing and its middleware stack cost a sixth of the
    server's work on a redemption. The route still serves everything else (OpenAPI, a
    path under a root path) and answers the same way, since it is the same endpoint with
    the same error handlers and metrics.
    """

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._shortcuts: dict[str, Observe] = {}
        self.trusted_proxies: tuple[Network, ...] = ()

    def shortcut(self, router: APIRouter) -> None:
        """Take ``router``'s POST routes without path parameters the short way; their
        endpoints must take the request alone."""
        for route in router.routes:
            if (
                isinstance(route, APIRoute)
                and route.methods == {"POST"}
                and not route.param_convertors
            ):
                self._shortcuts[route.path] = Observe(_Direct(self, route))

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self.trusted_proxies and scope["type"] == "http":
            resolve_client(scope, self.trusted_proxies)
        if scope["type"] == "http" and scope["method"] == "POST":
            direct = self._shortcuts.get(scope["path"])
            if direct is not None:
                scope["app"] = self
                await direct(scope, receive, send)
                return
        await super().__call__(scope, receive, send)

    async def handle(self, request: Request, exc: Exception) -> Response:
        """The answer of the exception handler registered for ``exc``'s class."""
        for cls in type(exc).__mro__:
            handler = self.exception_handlers.get(cls)
            if handler is not None:
                answer = handler(request, exc)
                return await answer if inspect.isawaitable(answer) else answer
        raise exc


class _Direct:
    """One route's endpoint as an ASGI app: see :class:`App`."""

    def __init__(self, app: App, route: APIRoute) -> None:
        self.app = app
        self.route = route

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        scope["route"] = self.route  # what the metrics are labelled with
        request = Request(scope, receive)
        try:
            response = await self.route.endpoint(request)
        except Exception as exc:
            response = await self.app.handle(request, exc)
        await response(scope, receive, send)


Lifespan = Callable[[Any], AbstractAsyncContextManager[None]]


def _lifespan(rt: Runtime, *, scheduler: bool, relay: bool = False) -> Lifespan:
    """While the app serves: the housekeeping scheduler and the event relay if asked for;
    when it stops, the redemption threads finish and give their connections back."""

    @asynccontextmanager
    async def run(app: Any) -> AsyncIterator[None]:
        async with AsyncExitStack() as stack:
            if scheduler:
                await stack.enter_async_context(jobs_lifespan(rt)(app))
            if relay:
                relay_thread = RelayThread(rt)
                relay_thread.start()
                stack.callback(relay_thread.stop)
            stack.callback(stop_redemption_threads, app.state)
            yield

    return run


def create_app(rt: Runtime | None = None, scheduler: bool | None = None) -> App:
    """Build the app around ``rt`` (default: from the ``VOMS_`` environment).

    The housekeeping scheduler runs in the app's lifespan when ``scheduler`` is True, or
    by default when the app serves from the environment (`voms serve`) and
    VOMS_SCHEDULER_ENABLED is on.
    """
    served = rt is None
    if scheduler is None:
        scheduler = served
    if rt is None:
        settings = get_settings()
        configure_logging(settings)
        rt = build_runtime(settings)
    scrub_server_logs()
    app = App(
        title="OpenVoMS",
        version=voms.__version__,
        description="Open prepaid voucher management: catalog, vouchers, redemption, wallet.",
        lifespan=_lifespan(
            rt,
            scheduler=scheduler and rt.settings.scheduler_enabled,
            # The event relay runs in `voms serve` (served from the environment) only.
            relay=served and rt.settings.events_relay_enabled,
        ),
    )
    app.state.runtime = rt
    app.trusted_proxies = trusted_networks(rt.settings.trusted_proxies)
    sms.install_notices(rt)  # the recipient's SMS notice, on every channel
    app.state.rate_limits = rate_limits(rt, fresh=True).per_key
    invalid_per_minute = rt.settings.invalid_keys_per_minute
    # Invalid API keys, per client address: guessing keys is slow.
    app.state.invalid_keys = TokenBuckets(invalid_per_minute / 60.0, invalid_per_minute)
    install_error_handlers(app)
    app.add_middleware(Gate)  # inside Observe: the refusals are counted too
    app.add_middleware(Observe)
    # Routes are matched in order: the redemption calls, the busiest by far, first.
    api_routers = (
        redemptions.router,
        health.router,
        catalog.router,
        admin.router,
        subscribers.router,
        transactions.router,
        batches.router,
        vouchers.router,
        soap.router,
        ussd.router,
        mobile.router,
        sms.router,
        distribution.router,
        housekeeping.router,
        resellers.router,
        blacklist.router,
        reports.router,
        alerts.router,
        events.router,
        tmf654.router,
        promotions.router,
    )
    # What the gate matches a request against (FastAPI keeps included routers nested).
    app.state.api_routes = [
        route
        for router in api_routers
        if router.prefix.startswith("/api/v1")
        for route in router.routes
        if isinstance(route, APIRoute)
    ]
    for router in api_routers:
        if router.prefix.startswith("/api/v1") and router is not redemptions.router:
            app.include_router(router, responses=API_ERRORS)
        else:
            # The gateways' callbacks (USSD, Kannel) speak their gateway's protocol, not
            # this API's: they stay out of /openapi.json, as /m and /soap do.
            gateway = router in (ussd.router, sms.router)
            app.include_router(router, include_in_schema=not gateway)
    app.shortcut(redemptions.router)
    mount_console(app)  # the web console at /ui/, out of the OpenAPI schema
    if served:
        # What start-up built lives as long as the worker: out of the garbage collector's
        # sight, a full collection no longer walks it, which cost tens of milliseconds
        # in the middle of a request.
        gc.collect()
        gc.freeze()
    return app
