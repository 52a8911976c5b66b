"""Liveness, readiness and metrics (no authentication: bind them to the operator's network)."""

from fastapi import APIRouter, Response
from fastapi.responses import JSONResponse
from sqlalchemy import text
from sqlalchemy.exc import SQLAlchemyError

from voms.api import business_metrics
from voms.api.deps import RuntimeDep
from voms.api.metrics import render
from voms.db.migrate import is_up_to_date

router = APIRouter(tags=["health"])


@router.get("/healthz", summary="The process is alive")
def healthz() -> dict[str, str]:
    return {"status": "ok"}


@router.get("/readyz", summary="The database answers and its schema is current")
def readyz(rt: RuntimeDep) -> JSONResponse:
    try:
        with rt.engine.connect() as conn:
            conn.execute(text("SELECT 1"))
        if not is_up_to_date(rt.engine):
            return JSONResponse(
                {
                    "status": "unavailable",
                    "reason": "database schema is not current; run `voms db upgrade`",
                },
                status_code=503,
            )
    except SQLAlchemyError as exc:
        return JSONResponse(
            {"status": "unavailable", "reason": f"database unreachable ({exc.__class__.__name__})"},
            status_code=503,
        )
    return JSONResponse({"status": "ready"})


@router.get("/metrics", summary="Prometheus metrics", response_class=Response)
def metrics(rt: RuntimeDep) -> Response:
    return render(business_metrics.exposition(rt))
