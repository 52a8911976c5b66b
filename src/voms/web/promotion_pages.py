"""Promotions in the console: plans (operators: list, create, end) and a subscriber's
counters (care)."""

from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request
from pydantic import ValidationError
from starlette.datastructures import FormData
from starlette.responses import Response

from voms.db.types import utcnow
from voms.domain.errors import NotFound, VomsError
from voms.domain.roles import Permission
from voms.services import catalog
from voms.services.people import Session
from voms.services.promotions import counters, plans
from voms.services.redemption.requests import CHANNELS
from voms.web.base import (
    NO_ERRORS,
    Column,
    ConsoleRoute,
    FormErrors,
    call,
    checked_form,
    field,
    filters_of,
    form_errors,
    refused_status,
    render,
    require,
    runtime,
    see_other,
    viewer,
)

router = APIRouter(prefix="/ui", include_in_schema=False, route_class=ConsoleRoute)
Viewer = Annotated[Session, Depends(viewer)]

_PLAN_COLUMNS = [
    Column("code", "Code"),
    Column("name", "Name"),
    Column("service_provider", "Provider"),
    Column("window_shown", "Window"),
    Column("counter", "Counter"),
    Column("target", "Target"),
    Column("repeat_shown", "Repeat"),
    Column("eligible_shown", "Eligible"),
    Column("reward_shown", "Reward"),
    Column("starts_at", "Starts", "time"),
    Column("ends_at", "Ends", "time"),
]
_COUNTER_COLUMNS = [
    Column("promotion", "Plan"),
    Column("name", "Name"),
    Column("counter", "Counter"),
    Column("window_start", "Window from", "time"),
    Column("window_end", "Window until", "time"),
    Column("value", "Value"),
    Column("target", "Target"),
    Column("rewards", "Rewards in window"),
    Column("to_next_reward", "To next reward"),
    Column("last_reward_at", "Last reward", "time"),
    Column("running_shown", "Running"),
]
WINDOWS = ["calendar_month", "rolling_days", "campaign"]


def _shown(plan: dict[str, Any]) -> dict[str, Any]:
    """A plan with its nested parts as short text for the table."""
    window = plan["window"]
    reward = plan["reward"]
    given = [f"{c['amount']} {c['balance_type']}" for c in reward["credits"]]
    if reward["percent_of_value"]:
        given.append(f"{reward['percent_of_value']} % of the value")
    if reward["account_expiry_extension_days"]:
        given.append(f"+{reward['account_expiry_extension_days']} days")
    if reward["new_product_type"]:
        given.append(f"product {reward['new_product_type']}")
    eligible = [
        f"{name}: {', '.join(values)}" for name, values in plan["eligible"].items() if values
    ]
    return {
        **plan,
        "window_shown": window["kind"] + (f" ({window['days']} days)" if window["days"] else ""),
        "repeat_shown": "every time" if plan["repeat"] else "once",
        "eligible_shown": "; ".join(eligible) or "all",
        "reward_shown": ", ".join(given),
        "open": plan["ends_at"] is None or plan["ends_at"] > utcnow(),
    }


def _codes(form: FormData, name: str) -> list[str]:
    return [part.strip() for part in field(form, name).split(",") if part.strip()]


def _number(form: FormData, name: str) -> int | str:
    text = field(form, name)
    return int(text) if text.lstrip("-").isdigit() else text


def _moment(form: FormData, name: str) -> str | None:
    """A datetime-local field, read as UTC (the form says so)."""
    text = field(form, name)
    if not text:
        return None
    try:
        return datetime.fromisoformat(text).replace(tzinfo=None).isoformat() + "+00:00"
    except ValueError:
        return text


def _body(form: FormData) -> dict[str, Any]:
    """The API body of the plan the form describes."""
    credits = []
    if field(form, "balance_type"):
        credits.append(
            {
                "balance_type": field(form, "balance_type"),
                "amount": _number(form, "amount"),
                "balance_expiry_extension_days": _number(form, "balance_expiry_extension_days")
                or 0,
            }
        )
    window: dict[str, Any] = {"kind": field(form, "window")}
    if field(form, "days"):
        window["days"] = _number(form, "days")
    return {
        "code": field(form, "code"),
        "name": field(form, "name"),
        "service_provider": field(form, "service_provider"),
        "starts_at": _moment(form, "starts_at"),
        "ends_at": _moment(form, "ends_at"),
        "window": window,
        "counter": field(form, "counter"),
        "target": _number(form, "target"),
        "repeat": form.get("repeat") == "on",
        "eligible": {
            "voucher_types": _codes(form, "voucher_types"),
            "channels": _codes(form, "channels"),
            "product_types": _codes(form, "product_types"),
        },
        "reward": {
            "credits": credits,
            "account_expiry_extension_days": _number(form, "account_expiry_extension_days") or 0,
            "percent_of_value": _number(form, "percent_of_value") or 0,
            "new_product_type": field(form, "new_product_type") or None,
        },
    }


async def _plans_page(
    request: Request, who: Session, errors: FormErrors = NO_ERRORS, status: int = 200
) -> Response:
    require(who, Permission.PROMOTIONS)
    rt, actor = runtime(request), who.principal
    wanted = filters_of(request, "service_provider")
    found = await call(plans.list_plans, rt, actor, wanted["service_provider"], 1000)
    providers = await call(catalog.list_service_providers, rt, actor)
    return render(
        request,
        who,
        "promotions.html",
        status=status,
        errors=errors,
        title="Promotions",
        nav="promotions",
        service_provider=wanted["service_provider"] or "",
        provider_codes=[p["code"] for p in providers],
        columns=_PLAN_COLUMNS,
        rows=[_shown(plan) for plan in found["items"]],
        windows=WINDOWS,
        channels=sorted(CHANNELS),
        now=utcnow().strftime("%Y-%m-%dT%H:%M"),
    )


@router.get("/promotions")
async def promotions_page(request: Request, who: Viewer) -> Response:
    return await _plans_page(request, who)


@router.post("/promotions")
async def create_promotion(request: Request, who: Viewer) -> Response:
    require(who, Permission.PROMOTIONS)
    form = await checked_form(request, who)
    try:
        body = plans.PromotionIn.model_validate(_body(form))
        await call(plans.create_or_find, runtime(request), who.principal, body)
    except (VomsError, ValidationError) as exc:
        status = refused_status(exc)
        return await _plans_page(request, who, form_errors("plan", exc, form), status)
    return see_other("/ui/promotions")


@router.post("/promotions/{code}/end")
async def end_promotion(request: Request, who: Viewer, code: str) -> Response:
    require(who, Permission.PROMOTIONS)
    await checked_form(request, who)
    await call(
        plans.update_plan,
        runtime(request),
        who.principal,
        code,
        plans.PromotionUpdate(ends_at=utcnow()),
    )
    return see_other("/ui/promotions")


@router.get("/care/counters")
async def counters_page(request: Request, who: Viewer) -> Response:
    require(who, Permission.LOOKUP)
    msisdn = filters_of(request, "msisdn")["msisdn"]
    rows: list[dict[str, Any]] = []
    missing = None
    if msisdn:
        try:
            found = await call(counters.counters_of, runtime(request), who.principal, msisdn)
            rows = [
                {
                    **row,
                    "window_start": _parsed(row["window_start"]),
                    "window_end": _parsed(row["window_end"]),
                    "last_reward_at": _parsed(row["last_reward_at"]),
                    "running_shown": "yes" if row["running"] else "no",
                }
                for row in found["items"]
            ]
        except NotFound as exc:
            missing = exc.detail
    return render(
        request,
        who,
        "counters.html",
        title="Promotion counters",
        nav="care",
        msisdn=msisdn or "",
        missing=missing,
        columns=_COUNTER_COLUMNS,
        rows=rows,
    )


def _parsed(value: str | None) -> datetime | None:
    return datetime.fromisoformat(value) if value else None
