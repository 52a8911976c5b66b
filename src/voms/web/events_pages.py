"""Events in the console: where events go, each delivery's state, dead letters, replay
(admins; docs/events.md)."""

from collections.abc import Mapping, Sequence
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request
from pydantic import ValidationError
from starlette.responses import Response, StreamingResponse

from voms.domain.errors import Invalid, VomsError
from voms.domain.roles import Permission
from voms.services.events import destinations
from voms.services.people import Session
from voms.web.base import (
    NO_ERRORS,
    Column,
    ConsoleRoute,
    FormErrors,
    call,
    checked_form,
    filters_of,
    form_errors,
    refused_status,
    render,
    require,
    runtime,
    see_other,
    table_page,
    viewer,
)

router = APIRouter(prefix="/ui/events", include_in_schema=False, route_class=ConsoleRoute)
Viewer = Annotated[Session, Depends(viewer)]
STATES = ("pending", "delivered", "dead")

_COLUMNS = [
    Column("id", "Delivery"),
    Column("time", "Event time"),
    Column("type", "Type"),
    Column("subject", "Subject"),
    Column("event_id", "Event id"),
    Column("destination", "Destination"),
    Column("state", "State"),
    Column("attempts", "Attempts"),
    Column("next_attempt_at", "Next attempt"),
    Column("last_error", "Last error"),
]


@router.get("")
async def events_page(request: Request, who: Viewer) -> Response:
    return await _events_page(request, who)


async def _events_page(
    request: Request, who: Session, errors: FormErrors = NO_ERRORS, status: int = 200
) -> Response:
    require(who, Permission.EVENTS_ADMIN)
    rt = runtime(request)
    state = filters_of(request, "state")["state"]
    if state not in (None, *STATES):
        raise Invalid("state is pending, delivered or dead")

    def fetch(cursor: str | None, limit: int) -> tuple[Sequence[Mapping[str, Any]], str | None]:
        found = destinations.list_deliveries(
            rt,
            who.principal,
            state=state,  # type: ignore[arg-type]
            limit=limit,
            cursor=cursor,
        )
        rows = [
            {**row, "destination": f"{row['destination']['kind']} {row['destination']['url']}"}
            for row in found["items"]
        ]
        return rows, found["next_cursor"]

    table = await table_page(
        request, _COLUMNS, fetch, "event-deliveries.csv", "Event deliveries, newest first"
    )
    if isinstance(table, StreamingResponse):
        return table
    where = await call(destinations.list_destinations, rt, who.principal, kind=None, limit=1000)
    return render(
        request,
        who,
        "events.html",
        status=status,
        errors=errors,
        title="Events",
        nav="events",
        state=state,
        states=STATES,
        destinations=where["items"],
        rows=table.rows,
        next_url=table.next_url,
        first_url=table.first_url,
        csv_url=table.csv_url,
        notice=request.query_params.get("replayed") and "Queued for delivery again.",
    )


@router.post("/replay")
async def replay(request: Request, who: Viewer) -> Response:
    """Deliver one delivery again (same event id), or every dead letter of a destination."""
    require(who, Permission.EVENTS_ADMIN)
    form = await checked_form(request, who)
    try:
        delivery, destination = _number(form, "delivery_id"), _number(form, "destination_id")
        await call(
            destinations.replay,
            runtime(request),
            who.principal,
            delivery_id=delivery,
            destination_id=destination,
        )
    except (VomsError, ValidationError) as exc:
        status = refused_status(exc)
        return await _events_page(request, who, form_errors("replay", exc, form), status)
    return see_other("/ui/events?replayed=1")


def _number(form: Mapping[str, Any], name: str) -> int | None:
    value = form.get(name)
    if value is None or value == "":
        return None
    if not isinstance(value, str) or not value.isdigit() or len(value) > 18:
        raise Invalid(f"{name} is a number")
    return int(value)
