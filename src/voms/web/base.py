"""What every console page shares: the signed-in viewer, CSRF, rendering, errors, CSV.

The console translates only: each route reads its form or query, calls one service with
the viewer's principal (the services check role and provider scope), and renders.
"""

import csv
import io
import ipaddress
import secrets
from collections.abc import Callable, Coroutine, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlencode

from fastapi import Request
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.routing import APIRoute
from fastapi.templating import Jinja2Templates
from pydantic import ValidationError
from starlette.datastructures import FormData
from starlette.responses import RedirectResponse, Response, StreamingResponse

from voms.domain.errors import Forbidden, Invalid, VomsError
from voms.domain.money import minor_unit, split
from voms.domain.roles import Permission
from voms.runtime import Runtime
from voms.services import paging, people

SESSION_COOKIE = "voms_session"
LOGIN_CSRF_COOKIE = "voms_login_csrf"
PAGE_SIZE = 50
CSV_PAGE_SIZE = 500
HERE = Path(__file__).parent
templates = Jinja2Templates(directory=HERE / "templates")


def money(minor_units: int | None, currency: str | None) -> str:
    """An amount in minor units as money: ``1500, "KES"`` → ``15.00 KES``; whole units
    without a currency."""
    if minor_units is None:
        return ""
    shown = split(int(minor_units), minor_unit(currency)).shown()
    return f"{shown} {currency}" if currency else shown


templates.env.filters["money"] = money

T = TypeVar("T")

# No inline script or style anywhere: the charts and the local times come from
# static/console.js, which reads its data from JSON blocks.
SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
}


class SignInNeeded(Exception):
    """No live session: the browser goes to the sign-in page."""


class SecondFactorNeeded(Exception):
    """Signed in with a password, the TOTP code still due."""


class CsrfRefused(Exception):
    """A form came without this session's CSRF token."""


def _error_page(request: Request, status: int, title: str, detail: str) -> Response:
    return templates.TemplateResponse(
        request,
        "error.html",
        {"viewer": getattr(request.state, "viewer", None), "title": title, "detail": detail},
        status_code=status,
        headers=SECURITY_HEADERS,
    )


_TITLES = {403: "Not allowed", 404: "Not found", 409: "Conflict", 422: "Check your input"}


class ConsoleRoute(APIRoute):
    """A console route: errors become HTML pages (never JSON, never a traceback), and
    every answer carries the console's security headers."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def route(request: Request) -> Response:
            try:
                response = await handler(request)
            except SignInNeeded:
                target = request.url.path
                if request.url.query:
                    target += "?" + request.url.query
                return see_other(
                    "/ui/login" + ("?" + urlencode({"next": target}) if _is_get(request) else "")
                )
            except SecondFactorNeeded:
                return see_other("/ui/login/code")
            except CsrfRefused:
                return _error_page(
                    request,
                    403,
                    "Form expired",
                    "This form was not sent from the current session. Go back, reload the "
                    "page and try again.",
                )
            except VomsError as exc:
                status = exc.http_status if exc.http_status in _TITLES else 400
                return _error_page(request, status, _TITLES.get(status, "Error"), exc.detail)
            except (RequestValidationError, ValidationError) as exc:
                # Where and why only: never the input, which may be a PIN or a password.
                problems = "; ".join(
                    f"{'.'.join(str(part) for part in err['loc'] if part != 'body')}: {err['msg']}"
                    for err in exc.errors()
                )
                return _error_page(request, 422, _TITLES[422], problems)
            for name, value in SECURITY_HEADERS.items():
                response.headers.setdefault(name, value)
            return response

        return route


def _is_get(request: Request) -> bool:
    return request.method in ("GET", "HEAD")


def see_other(url: str) -> RedirectResponse:
    return RedirectResponse(url, status_code=303, headers=SECURITY_HEADERS)


def runtime(request: Request) -> Runtime:
    return request.app.state.runtime  # type: ignore[no-any-return]


async def call(func: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """Run a (blocking) service call off the event loop."""
    return await run_in_threadpool(func, *args, **kwargs)


async def viewer(request: Request) -> people.Session:
    """The signed-in person behind the request's session cookie (dependency)."""
    token = request.cookies.get(SESSION_COOKIE, "")
    session = await call(people.session_of, runtime(request), token) if token else None
    if session is None:
        raise SignInNeeded()
    if session.second_factor_due:
        raise SecondFactorNeeded()
    request.state.viewer = session
    return session


async def viewer_if_signed_in(request: Request) -> people.Session | None:
    """The signed-in person, or None (no session, or its second factor still due)."""
    try:
        return await viewer(request)
    except (SignInNeeded, SecondFactorNeeded):
        return None


def not_found_page(request: Request, session: people.Session | None) -> Response:
    """The console's 404: an HTML page, with the menu when someone is signed in."""
    request.state.viewer = session
    return _error_page(
        request,
        404,
        "Page not found",
        f"There is no page at {request.url.path[:200]}. Check the address, or use the menu.",
    )


def require(session: people.Session, *permissions: Permission) -> None:
    """403 unless the viewer's role carries one of ``permissions`` (the services check
    again, with the provider scope, on every call)."""
    if not any(session.may(p) for p in permissions):
        raise Forbidden(f"role {session.role} may not open this page")


async def checked_form(request: Request, session: people.Session) -> FormData:
    """The posted form, once its CSRF token matches the session's."""
    form = await request.form()
    sent = form.get("csrf_token")
    if not isinstance(sent, str) or not secrets.compare_digest(sent, session.csrf_token):
        raise CsrfRefused()
    return form


def field(form: Mapping[str, Any], name: str) -> str:
    value = form.get(name)
    return value.strip() if isinstance(value, str) else ""


def optional(form: Mapping[str, Any], name: str) -> str | None:
    return field(form, name) or None


class FormErrors:
    """What was wrong with the form a person just sent, to show next to its fields."""

    def __init__(
        self,
        form: str | None = None,
        fields: Mapping[str, str] | None = None,
        summary: str | None = None,
        values: Mapping[str, Any] | None = None,
    ) -> None:
        self.form = form
        self.fields = dict(fields or {})
        self.summary_text = summary
        # What the person typed, to fill the form again (never a PIN or a password).
        self.values = {
            k: v for k, v in (values or {}).items() if k not in _NEVER_ECHOED and isinstance(v, str)
        }

    def get(self, form: str, name: str) -> str | None:
        return self.fields.get(name) if form == self.form else None

    def summary(self, form: str) -> str | None:
        if form != self.form:
            return None
        return self.summary_text or ("Check the fields marked below." if self.fields else None)

    def value(self, form: str, name: str) -> str:
        return self.values.get(name, "") if form == self.form else ""


_NEVER_ECHOED = frozenset({"pin", "password", "csrf_token", "public_key"})
NO_ERRORS = FormErrors()


def form_errors(
    form_name: str, exc: VomsError | ValidationError, values: Mapping[str, Any]
) -> FormErrors:
    """A refused form's errors: pydantic's by field; a service's next to the field it
    names first ("count must…", "reason: …"), else above the form."""
    if isinstance(exc, ValidationError):
        fields: dict[str, str] = {}
        for err in exc.errors():
            loc = [str(part) for part in err["loc"]]
            fields.setdefault(loc[0] if loc else "", err["msg"].removeprefix("Value error, "))
        summary = fields.pop("", None)
        return FormErrors(form_name, fields, summary, values)
    first = exc.detail.split(":", 1)[0].split(" ", 1)[0]
    if first in values and first not in ("csrf_token",):
        return FormErrors(form_name, {first: exc.detail}, None, values)
    return FormErrors(form_name, {}, exc.detail, values)


def refused_status(exc: VomsError | ValidationError) -> int:
    """The status of a refused form shown again with its errors; a 403 stays a 403 page."""
    if isinstance(exc, Forbidden):
        raise exc
    return exc.http_status if isinstance(exc, VomsError) else 422


def render(
    request: Request,
    session: people.Session | None,
    template: str,
    status: int = 200,
    **context: Any,
) -> Response:
    return templates.TemplateResponse(
        request,
        template,
        {"viewer": session, "errors": NO_ERRORS, **context},
        status_code=status,
        headers=SECURITY_HEADERS,
    )


def cookie_secure(request: Request) -> bool:
    """Secure cookies, except on plain http to a loopback address (a local trial)."""
    configured = runtime(request).settings.ui_cookie_secure
    if configured is not None:
        return configured
    if request.url.scheme == "https":
        return True
    host = request.url.hostname or ""
    try:
        return not ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host != "localhost"


def set_cookie(request: Request, response: Response, name: str, value: str, path: str) -> None:
    response.set_cookie(
        name,
        value,
        path=path,
        httponly=True,
        samesite="lax",
        secure=cookie_secure(request),
    )


# --- tables: paging and CSV ------------------------------------------------------------------


@dataclass(frozen=True)
class Column:
    key: str
    label: str
    kind: str = "text"  # text, time, json


def page_url(request: Request, **changes: str | None) -> str:
    """This page's URL with some query parameters changed (None removes one)."""
    params = {k: v for k, v in request.query_params.items() if k not in changes}
    params.update({k: v for k, v in changes.items() if v is not None})
    query = urlencode(params)
    return request.url.path + ("?" + query if query else "")


def filters_of(request: Request, *names: str) -> dict[str, str | None]:
    """The given query parameters, blanks as None."""
    return {name: (request.query_params.get(name) or "").strip() or None for name in names}


Fetch = Callable[[str | None, int], tuple[Sequence[Mapping[str, Any]], str | None]]


def csv_download(columns: Sequence[Column], fetch: Fetch, file_name: str) -> StreamingResponse:
    """Every row of a table, page after page (constant memory), as a CSV file."""

    def lines() -> Iterator[str]:
        out = io.StringIO()
        writer = csv.writer(out)
        writer.writerow([c.key for c in columns])
        cursor: str | None = None
        while True:
            rows, cursor = fetch(cursor, CSV_PAGE_SIZE)
            for row in rows:
                writer.writerow([_csv_cell(row.get(c.key)) for c in columns])
            yield out.getvalue()
            out.seek(0)
            out.truncate()
            if cursor is None:
                return

    return StreamingResponse(
        lines(),
        media_type="text/csv; charset=utf-8",
        headers={"Content-Disposition": f'attachment; filename="{file_name}"', **SECURITY_HEADERS},
    )


def _csv_cell(value: object) -> str:
    if value is None:
        return ""
    if isinstance(value, datetime):
        return value.isoformat()
    text = str(value)
    # A cell starting with = + - @ is a formula to a spreadsheet: quote it.
    return "'" + text if text[:1] in ("=", "+", "-", "@") and not _number(text) else text


def _number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def newest_first(read: Callable[[int | None, int], Sequence[Mapping[str, Any]]], key: str) -> Fetch:
    """A table read newest first by an integer id: ``read(before_id, limit)`` is asked
    for one row more than the page, and the page's last id is the next cursor."""

    def fetch(cursor: str | None, limit: int) -> tuple[Sequence[Mapping[str, Any]], str | None]:
        if cursor is not None and (not cursor.isdigit() or len(cursor) > 18):
            raise Invalid("malformed cursor")
        rows = read(int(cursor) if cursor else None, limit + 1)
        more = len(rows) > limit
        return rows[:limit], (str(rows[limit - 1][key]) if more else None)

    return fetch


def by_key(
    read: Callable[[paging.Key | None, int], Sequence[Mapping[str, Any]]],
    key: Callable[[Mapping[str, Any]], paging.Key],
    *types: type,
) -> Fetch:
    """A table read in key order (the catalog by code): ``read(after, limit)`` is asked
    for one row more than the page; the cursor is the page's last key (services/paging)."""

    def fetch(cursor: str | None, limit: int) -> tuple[Sequence[Mapping[str, Any]], str | None]:
        return paged(paging.page(read(paging.decode(cursor, *types), limit + 1), limit, key))

    return fetch


def paged(found: Mapping[str, Any]) -> tuple[Sequence[Mapping[str, Any]], str | None]:
    """A service's page (``items``, ``next_cursor``) as a Fetch answers it."""
    return found["items"], found["next_cursor"]


@dataclass(frozen=True)
class Table:
    """One page of a console table, with its links (``_macros.html``: ``show``)."""

    columns: Sequence[Column]
    rows: Sequence[Mapping[str, Any]]
    caption: str
    next_url: str | None = None
    first_url: str | None = None
    csv_url: str | None = None


async def table_page(
    request: Request,
    columns: Sequence[Column],
    fetch: Fetch,
    file_name: str,
    caption: str,
    name: str | None = None,
) -> Table | StreamingResponse:
    """The table every list page shows: ``?format=csv`` (with ``table=NAME`` on a page
    of several tables) downloads all of it as CSV, page after page; otherwise one page
    from the cursor (``cursor``, or ``NAME_cursor``), with the next, first and CSV links
    keeping the page's filters."""
    cursor_param = "cursor" if name is None else f"{name}_cursor"
    if request.query_params.get("format") == "csv" and request.query_params.get("table") == name:
        return csv_download(columns, fetch, file_name)
    cursor = request.query_params.get(cursor_param) or None
    rows, next_cursor = await call(fetch, cursor, PAGE_SIZE)
    return Table(
        columns,
        rows,
        caption,
        next_url=page_url(request, **{cursor_param: next_cursor}) if next_cursor else None,
        first_url=page_url(request, **{cursor_param: None}) if cursor else None,
        csv_url=page_url(request, format="csv", table=name, **{cursor_param: None}),
    )
