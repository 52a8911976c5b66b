"""Events (docs/api.md "Events", docs/events.md): webhooks, deliveries, replays. Admins."""

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Path, Query, Request, status
from fastapi.concurrency import run_in_threadpool
from pydantic import BaseModel

from voms.api.deps import RuntimeDep
from voms.api.permits import documented, json_body, permitted, validated
from voms.api.schemas import BIGINT_MAX
from voms.domain.roles import Permission
from voms.services.auth import Principal
from voms.services.events import destinations
from voms.services.events.destinations import WebhookIn

router = APIRouter(prefix="/api/v1", tags=["events"])
Allowed = Annotated[Principal, permitted(Permission.EVENTS_ADMIN)]
Limit = Annotated[int, Query(ge=1, le=destinations.MAX_LIMIT)]
INT_MAX = 2**31 - 1
DestinationId = Annotated[int, Query(ge=1, le=INT_MAX)]
WebhookId = Annotated[int, Path(ge=1, le=INT_MAX)]
DeliveryId = Annotated[int, Path(ge=1, le=BIGINT_MAX)]


class DestinationPublic(BaseModel):
    id: int
    kind: str  # webhook, nats or amqp
    url: str
    events: list[str] | None  # null: every event
    service_provider: str | None
    state: str  # active or disabled
    created_by: str
    created_at: str


class DestinationPage(BaseModel):
    items: list[DestinationPublic]
    next_cursor: str | None


class DeliveryDestination(BaseModel):
    id: int
    kind: str
    url: str


class DeliveryPublic(BaseModel):
    id: int
    event_id: str  # the CloudEvent id, the same on every attempt
    type: str
    subject: str | None
    time: str
    destination: DeliveryDestination
    state: str  # pending, delivered or dead
    attempts: int
    next_attempt_at: str | None
    first_failed_at: str | None
    delivered_at: str | None
    last_error: str | None


class DeliveryPage(BaseModel):
    items: list[DeliveryPublic]
    next_cursor: str | None


class Replayed(BaseModel):
    replayed: int
    delivery: DeliveryPublic | None = None


@router.post(
    "/webhooks",
    status_code=status.HTTP_201_CREATED,
    response_model=DestinationPublic,
    openapi_extra=documented(WebhookIn),
)
async def add_webhook(request: Request, rt: RuntimeDep, who: Allowed) -> dict[str, Any]:
    """Add a webhook: events of the listed types are POSTed to `url` as CloudEvents,
    signed with `secret` (X-Voms-Signature). The secret is never shown again."""
    body = validated(WebhookIn, await json_body(request))
    return await run_in_threadpool(destinations.add_webhook, rt, who, body)


@router.get("/webhooks", response_model=DestinationPage)
def list_webhooks(
    rt: RuntimeDep,
    who: Allowed,
    kind: Literal["webhook", "nats", "amqp", "all"] = "webhook",
    limit: Limit = 50,
    cursor: str | None = None,
) -> dict[str, Any]:
    """Webhooks, newest first; `kind=all` adds the NATS and RabbitMQ destinations."""
    chosen = None if kind == "all" else kind
    return destinations.list_destinations(rt, who, kind=chosen, limit=limit, cursor=cursor)


@router.get("/webhooks/{webhook_id}", response_model=DestinationPublic)
def get_webhook(webhook_id: WebhookId, rt: RuntimeDep, who: Allowed) -> dict[str, Any]:
    """One webhook (or NATS/RabbitMQ destination)."""
    return destinations.get_destination(rt, who, webhook_id)


@router.delete("/webhooks/{webhook_id}", response_model=DestinationPublic)
def remove_webhook(webhook_id: WebhookId, rt: RuntimeDep, who: Allowed) -> dict[str, Any]:
    """Stop a webhook: no new events go to it; its deliveries can still be looked at."""
    return destinations.remove_webhook(rt, who, webhook_id)


@router.post("/webhooks/{webhook_id}/replay", response_model=Replayed)
def replay_dead_letters(webhook_id: WebhookId, rt: RuntimeDep, who: Allowed) -> dict[str, Any]:
    """Deliver every dead letter of this destination again (same event ids, in order)."""
    return destinations.replay(rt, who, destination_id=webhook_id)


@router.get("/event-deliveries", response_model=DeliveryPage)
def list_deliveries(
    rt: RuntimeDep,
    who: Allowed,
    destination: DestinationId | None = None,
    state: Literal["pending", "delivered", "dead"] | None = None,
    limit: Limit = 50,
    cursor: str | None = None,
) -> dict[str, Any]:
    """Deliveries, newest first; `state=dead`: the dead letters (failed for a day)."""
    return destinations.list_deliveries(
        rt, who, destination_id=destination, state=state, limit=limit, cursor=cursor
    )


@router.post("/event-deliveries/{delivery_id}/replay", response_model=Replayed)
def replay_delivery(delivery_id: DeliveryId, rt: RuntimeDep, who: Allowed) -> dict[str, Any]:
    """Deliver this event to its destination again (a dead letter, or one delivered)."""
    return destinations.replay(rt, who, delivery_id=delivery_id)
