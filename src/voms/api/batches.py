"""Batch routes (docs/api.md "Administration"): generate, list, show, change state, amend."""

from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Body, Path, Query, status
from pydantic import BaseModel, Field

from voms.api.deps import BatchReader, BatchWriter, RuntimeDep
from voms.services import generation, guessing, lifecycle
from voms.services.generation import BatchIn
from voms.services.lifecycle import BatchActionIn, BatchUpdate

router = APIRouter(prefix="/api/v1", tags=["batches"])
Json = dict[str, Any]
BatchId = Annotated[int, Path(ge=1, le=2**31 - 1)]


class BatchPublic(BaseModel):
    batch_id: int
    state: str
    count: int
    generated_count: int
    serial_first: str
    serial_last: str
    voucher_type: str
    service_provider: str
    expires_at: datetime
    created_by: str
    created_at: datetime
    updated_at: datetime
    error: str | None
    request_id: str | None
    parent_batch_id: int | None = None  # a part split off that batch by a range operation
    warnings: list[str] = Field(
        default_factory=list, description="e.g. a PIN length too short for the live vouchers"
    )


class BatchPage(BaseModel):
    items: list[BatchPublic]
    next_cursor: str | None


@router.post("/batches", status_code=status.HTTP_201_CREATED, response_model=BatchPublic)
def create_batch(body: BatchIn, rt: RuntimeDep, who: BatchWriter) -> Json:
    """Order vouchers. Above VOMS_BACKGROUND_GENERATION_THRESHOLD they are generated in the
    background: the answer says `generating` and GET /batches/{id} shows the progress."""
    ordered = generation.order_batch(rt, who, body)
    warning = guessing.weak_pin_warning(rt, body.voucher_type)
    return {**ordered, "warnings": [warning] if warning else []}


@router.get("/batches", response_model=BatchPage)
def list_batches(
    rt: RuntimeDep,
    who: BatchReader,
    state: str | None = None,
    voucher_type: str | None = None,
    service_provider: str | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
    limit: Annotated[int, Query(ge=1, le=lifecycle.MAX_PAGE)] = 50,
    cursor: str | None = None,
) -> Json:
    """Batches newest first; pass `next_cursor` as `cursor` for the next page."""
    return lifecycle.list_batches(
        rt,
        who,
        state=state,
        voucher_type=voucher_type,
        service_provider=service_provider,
        since=since,
        until=until,
        limit=limit,
        cursor=cursor,
    )


@router.get("/batches/{batch_id}", response_model=BatchPublic)
def get_batch(batch_id: BatchId, rt: RuntimeDep, who: BatchReader) -> Json:
    return lifecycle.get_batch(rt, who, batch_id)


@router.patch("/batches/{batch_id}", response_model=BatchPublic)
def amend_batch(batch_id: BatchId, body: BatchUpdate, rt: RuntimeDep, who: BatchWriter) -> Json:
    """Change the batch's expiry (all its vouchers follow at once)."""
    return lifecycle.amend_batch(rt, who, batch_id, body.expires_at)


def _action_route(action: str) -> None:
    def change(
        batch_id: BatchId,
        rt: RuntimeDep,
        who: BatchWriter,
        body: Annotated[BatchActionIn | None, Body()] = None,
    ) -> Json:
        return lifecycle.change_batch(rt, who, batch_id, action, body.reason if body else None)

    change.__name__ = f"{action}_batch"
    router.post(
        f"/batches/{{batch_id}}/{action}",
        response_model=BatchPublic,
        summary=f"{action.capitalize()} a batch",
        description="One row update; an illegal transition is refused with 409. "
        'Optional body: {"reason": "…"}.',
    )(change)


for _action in ("activate", "freeze", "unfreeze", "delete"):
    _action_route(_action)
