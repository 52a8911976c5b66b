"""One place that turns service errors into HTTP answers: never a traceback, never a PIN."""

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy.exc import OperationalError

from voms.domain.errors import ResultError, VomsError
from voms.domain.results import Result
from voms.logs import traceback_without_message

log = logging.getLogger("voms.api")


def _validation_errors(exc: RequestValidationError) -> list[dict[str, Any]]:
    # FastAPI's default echoes the offending input, which may be a PIN: keep only where
    # and why.
    return [
        {"loc": list(err.get("loc", ())), "msg": err.get("msg", ""), "type": err.get("type", "")}
        for err in exc.errors()
    ]


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ResultError)
    async def _result_error(_: Request, exc: ResultError) -> JSONResponse:
        return JSONResponse(exc.result.body(**exc.extra), status_code=exc.http_status)

    @app.exception_handler(VomsError)
    async def _voms_error(_: Request, exc: VomsError) -> JSONResponse:
        headers = {"WWW-Authenticate": "Bearer"} if exc.http_status == 401 else None
        detail: Any = exc.detail
        if exc.http_status == 422:  # the shape OpenAPI documents for every 422: a list
            loc = getattr(exc, "loc", None) or ["body"]
            detail = [{"loc": loc, "msg": exc.detail, "type": "value_error"}]
        return JSONResponse({"detail": detail}, status_code=exc.http_status, headers=headers)

    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        return JSONResponse({"detail": _validation_errors(exc)}, status_code=422)

    @app.exception_handler(OperationalError)
    async def _database_unavailable(request: Request, exc: OperationalError) -> JSONResponse:
        # The database went away (a failover, a cut network): an operational event, not
        # a bug. One line; a retry with the same request id settles the call.
        log.warning(
            "database unavailable on %s %s: %s",
            request.method,
            request.url.path,
            exc.orig.__class__.__name__ if exc.orig is not None else exc.__class__.__name__,
        )
        return JSONResponse(Result.SYSTEM_ERROR.body(detail="internal error"), status_code=500)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        # The route, the exception's type and where it happened, not its message: it may
        # quote the request, and so a PIN.
        log.error(
            "unhandled error on %s %s: %s\n%s",
            request.method,
            request.url.path,
            exc.__class__.__name__,
            traceback_without_message(exc),
        )
        return JSONResponse(Result.SYSTEM_ERROR.body(detail="internal error"), status_code=500)
