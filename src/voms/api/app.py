"""The FastAPI application factory."""

import gc

from fastapi import FastAPI

import voms
from voms.api import (
    admin,
    batches,
    catalog,
    distribution,
    health,
    housekeeping,
    redemptions,
    subscribers,
    transactions,
    vouchers,
)
from voms.api.deps import TokenBuckets
from voms.api.errors import install_error_handlers
from voms.api.metrics import Observe
from voms.channels import mobile, sms, soap, ussd
from voms.config import get_settings
from voms.jobs.scheduler import lifespan as jobs_lifespan
from voms.logs import configure_logging, scrub_access_log
from voms.runtime import Runtime, build_runtime


def create_app(rt: Runtime | None = None, scheduler: bool | None = None) -> FastAPI:
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
    scrub_access_log()
    app = FastAPI(
        title="OpenVoMS",
        version=voms.__version__,
        description="Open prepaid voucher management: catalog, vouchers, redemption, wallet.",
        lifespan=jobs_lifespan(rt) if scheduler and rt.settings.scheduler_enabled else None,
    )
    app.state.runtime = rt
    app.state.rate_limits = TokenBuckets(
        rt.settings.rate_limit_per_second, rt.settings.rate_limit_burst
    )
    install_error_handlers(app)
    app.add_middleware(Observe)
    # Routes are matched in order: the redemption calls, the busiest by far, first.
    for router in (
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
    ):
        app.include_router(router)
    if served:
        # What start-up built lives as long as the worker: out of the garbage collector's
        # sight, a full collection no longer walks it, which cost tens of milliseconds
        # in the middle of a request.
        gc.collect()
        gc.freeze()
    return app
