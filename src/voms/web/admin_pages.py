"""Administration: people, API keys, and the audit log."""

from typing import Annotated

from fastapi import APIRouter, Depends, Request
from starlette.responses import Response, StreamingResponse

from voms.domain.errors import Invalid, VomsError
from voms.domain.roles import Permission, Role
from voms.services import audit, auth, catalog, people
from voms.services.people import Session
from voms.web.base import (
    NO_ERRORS,
    Column,
    ConsoleRoute,
    FormErrors,
    call,
    checked_form,
    csv_download,
    field,
    filters_of,
    form_errors,
    listed,
    newest_first,
    optional,
    refused_status,
    render,
    require,
    runtime,
    see_other,
    table_page,
    viewer,
)

router = APIRouter(prefix="/ui", include_in_schema=False, route_class=ConsoleRoute)
Viewer = Annotated[Session, Depends(viewer)]

_USER_COLUMNS = [
    Column("username", "Username"),
    Column("role", "Role"),
    Column("service_provider", "Provider"),
    Column("reseller", "Reseller"),
    Column("state", "State"),
    Column("totp", "TOTP"),
    Column("locked_until", "Locked until", "time"),
    Column("last_sign_in_at", "Last sign-in", "time"),
    Column("created_by", "Created by"),
    Column("created_at", "Created", "time"),
]
_KEY_COLUMNS = [
    Column("name", "Name"),
    Column("prefix", "Prefix"),
    Column("role", "Role"),
    Column("service_provider", "Provider"),
    Column("created_by", "Created by"),
    Column("created_at", "Created", "time"),
    Column("revoked_at", "Revoked", "time"),
]


async def _people_page(
    request: Request,
    who: Session,
    new_key: dict[str, str] | None = None,
    errors: FormErrors = NO_ERRORS,
    status: int = 200,
) -> Response:
    require(who, Permission.APIKEY_ADMIN)
    rt, actor = runtime(request), who.principal
    users = await call(people.list_users, rt, actor)
    keys = await call(auth.list_api_keys, rt, actor)
    providers = await call(catalog.list_service_providers, rt, actor)
    return render(
        request,
        who,
        "people.html",
        status=status,
        errors=errors,
        title="People and API keys",
        nav="people",
        users=users,
        keys=keys,
        roles=[role.value for role in Role],
        provider_codes=[p["code"] for p in providers],
        new_key=new_key,
    )


@router.get("/people")
async def people_page(request: Request, who: Viewer) -> Response:
    return await _people_page(request, who)


@router.get("/people/users.csv")
async def users_csv(request: Request, who: Viewer) -> Response:
    require(who, Permission.APIKEY_ADMIN)
    users = await call(people.list_users, runtime(request), who.principal)
    return csv_download(_USER_COLUMNS, listed(users), "people.csv")


@router.get("/people/apikeys.csv")
async def keys_csv(request: Request, who: Viewer) -> Response:
    require(who, Permission.APIKEY_ADMIN)
    keys = await call(auth.list_api_keys, runtime(request), who.principal)
    return csv_download(_KEY_COLUMNS, listed(keys), "api-keys.csv")


@router.post("/people")
async def add_person(request: Request, who: Viewer) -> Response:
    require(who, Permission.APIKEY_ADMIN)
    form = await checked_form(request, who)
    password = form.get("password")
    try:
        await call(
            people.create_user,
            runtime(request),
            who.principal,
            username=field(form, "username"),
            role=field(form, "role"),
            password=password if isinstance(password, str) else "",
            service_provider=optional(form, "service_provider"),
            reseller=optional(form, "reseller"),
        )
    except VomsError as exc:
        status = refused_status(exc)
        return await _people_page(request, who, None, form_errors("person", exc, form), status)
    return see_other("/ui/people")


@router.post("/people/{username}/disable")
async def disable_person(request: Request, who: Viewer, username: str) -> Response:
    require(who, Permission.APIKEY_ADMIN)
    await checked_form(request, who)
    await call(people.disable_user, runtime(request), who.principal, username)
    return see_other("/ui/people")


@router.post("/people/{username}/password")
async def set_password(request: Request, who: Viewer, username: str) -> Response:
    require(who, Permission.APIKEY_ADMIN)
    form = await checked_form(request, who)
    password = form.get("password")
    try:
        if not isinstance(password, str):
            raise Invalid("password: give the new password")
        await call(people.reset_password, runtime(request), who.principal, username, password)
    except VomsError as exc:
        status = refused_status(exc)
        errors = form_errors(f"password-{username}", exc, form)
        return await _people_page(request, who, None, errors, status)
    return see_other("/ui/people")


@router.post("/apikeys")
async def create_key(request: Request, who: Viewer) -> Response:
    require(who, Permission.APIKEY_ADMIN)
    form = await checked_form(request, who)
    try:
        record, secret = await call(
            auth.create_api_key,
            runtime(request),
            who.principal,
            name=field(form, "name"),
            role=field(form, "role"),
            service_provider=optional(form, "service_provider"),
        )
    except VomsError as exc:
        status = refused_status(exc)
        return await _people_page(request, who, None, form_errors("key", exc, form), status)
    # Shown on the answer to the POST itself, never in a URL or a later page.
    return await _people_page(request, who, {"name": record["name"], "secret": secret})


@router.post("/apikeys/{name}/revoke")
async def revoke_key(request: Request, who: Viewer, name: str) -> Response:
    require(who, Permission.APIKEY_ADMIN)
    await checked_form(request, who)
    await call(auth.revoke_api_key, runtime(request), who.principal, name)
    return see_other("/ui/people")


# --- audit log --------------------------------------------------------------------------------

_AUDIT_COLUMNS = [
    Column("id", "Entry"),
    Column("at", "When", "time"),
    Column("actor", "Who"),
    Column("action", "Action"),
    Column("object_type", "Object type"),
    Column("object_id", "Object"),
    Column("detail", "Detail", "json"),
]


@router.get("/audit")
async def audit_page(request: Request, who: Viewer) -> Response:
    require(who, Permission.AUDIT_READ)
    rt = runtime(request)
    wanted = filters_of(request, "object_type", "object_id", "by", "action")

    fetch = newest_first(
        lambda before, limit: audit.read_audit_log(
            rt, who.principal, **wanted, before_id=before, limit=limit
        ),
        "id",
    )
    table = await table_page(
        request, _AUDIT_COLUMNS, fetch, "audit-log.csv", "Audit log, newest first"
    )
    if isinstance(table, StreamingResponse):
        return table
    return render(
        request,
        who,
        "list.html",
        title="Audit log",
        nav="audit",
        filter_items=[
            ("object_type", "Object type", wanted["object_type"], None),
            ("object_id", "Object", wanted["object_id"], None),
            ("by", "Who", wanted["by"], None),
            ("action", "Action", wanted["action"], None),
        ],
        action="/ui/audit",
        table=table,
    )
