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
    Fetch,
    FormErrors,
    by_key,
    call,
    checked_form,
    csv_download,
    field,
    filters_of,
    form_errors,
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


_USER_STATES = ["active", "disabled"]
_KEY_STATES = ["live", "revoked"]


def _users_fetch(request: Request, who: Session) -> Fetch:
    """People by username, filtered by the page's ``role``, ``state`` and
    ``service_provider``; the cursor is the last username shown."""
    rt, wanted = runtime(request), filters_of(request, "role", "state", "service_provider")
    return by_key(
        lambda after, limit: people.list_users(
            rt, who.principal, **wanted, after=after[0] if after else None, limit=limit
        ),
        lambda row: (row["username"],),
        str,
    )


def _keys_fetch(request: Request, who: Session) -> Fetch:
    """API keys in the order they were made, filtered by the page's ``key_role``,
    ``key_state`` (live, revoked) and ``key_service_provider``."""
    rt = runtime(request)
    wanted = filters_of(request, "key_role", "key_state", "key_service_provider")
    state = wanted["key_state"]
    if state is not None and state not in _KEY_STATES:
        raise Invalid("key_state: live or revoked")
    return by_key(
        lambda after, limit: auth.list_api_keys(
            rt,
            who.principal,
            role=wanted["key_role"],
            revoked=None if state is None else state == "revoked",
            service_provider=wanted["key_service_provider"],
            after_id=after[0] if after else None,
            limit=limit,
        ),
        lambda row: (row["id"],),
        int,
    )


async def _people_page(
    request: Request,
    who: Session,
    new_key: dict[str, str] | None = None,
    errors: FormErrors = NO_ERRORS,
    status: int = 200,
) -> Response:
    require(who, Permission.APIKEY_ADMIN)
    rt, actor = runtime(request), who.principal
    users = await table_page(
        request,
        _USER_COLUMNS,
        _users_fetch(request, who),
        "people.csv",
        "People who sign in to the console",
        name="users",
    )
    if isinstance(users, StreamingResponse):
        return users
    keys = await table_page(
        request,
        _KEY_COLUMNS,
        _keys_fetch(request, who),
        "api-keys.csv",
        "API keys (never the keys themselves)",
        name="keys",
    )
    if isinstance(keys, StreamingResponse):
        return keys
    providers = await call(catalog.list_service_providers, rt, actor)
    roles = [role.value for role in Role]
    provider_codes = [p["code"] for p in providers]
    user_filters = filters_of(request, "role", "state", "service_provider")
    key_filters = filters_of(request, "key_role", "key_state", "key_service_provider")
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
        user_filter_items=[
            ("role", "Role", user_filters["role"], roles),
            ("state", "State", user_filters["state"], _USER_STATES),
            ("service_provider", "Provider", user_filters["service_provider"], provider_codes),
        ],
        key_filter_items=[
            ("key_role", "Role", key_filters["key_role"], roles),
            ("key_state", "State", key_filters["key_state"], _KEY_STATES),
            (
                "key_service_provider",
                "Provider",
                key_filters["key_service_provider"],
                provider_codes,
            ),
        ],
        roles=roles,
        provider_codes=provider_codes,
        new_key=new_key,
    )


@router.get("/people")
async def people_page(request: Request, who: Viewer) -> Response:
    return await _people_page(request, who)


@router.get("/people/users.csv")
async def users_csv(request: Request, who: Viewer) -> Response:
    """Every person the filters (``role``, ``state``, ``service_provider``) keep, as CSV."""
    require(who, Permission.APIKEY_ADMIN)
    return csv_download(_USER_COLUMNS, _users_fetch(request, who), "people.csv")


@router.get("/people/apikeys.csv")
async def keys_csv(request: Request, who: Viewer) -> Response:
    """Every API key the filters (``key_role``, ``key_state``, ``key_service_provider``)
    keep, as CSV."""
    require(who, Permission.APIKEY_ADMIN)
    return csv_download(_KEY_COLUMNS, _keys_fetch(request, who), "api-keys.csv")


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
