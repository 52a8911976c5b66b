"""The web console at /ui/: server-rendered pages for operations and customer care."""

from fastapi import APIRouter, FastAPI, Request
from starlette.responses import Response
from starlette.staticfiles import StaticFiles

from voms.domain.roles import Permission
from voms.services.people import Session
from voms.web import (
    admin_pages,
    auth_pages,
    base,
    care_pages,
    events_pages,
    operations,
    promotion_pages,
    report_pages,
    reseller_pages,
)


def _allowed(viewer: Session | None, permission: str) -> bool:
    return viewer is not None and viewer.may(Permission(permission))


# Matched last: any other path under /ui/ is a page that does not exist, answered as
# one (HTML, in the console's look), never with the API's JSON.
_fallback = APIRouter(prefix="/ui", include_in_schema=False, route_class=base.ConsoleRoute)


@_fallback.api_route("/{rest:path}", methods=["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE"])
async def no_such_page(request: Request, rest: str) -> Response:
    session = await base.viewer_if_signed_in(request)
    return base.not_found_page(request, session)


def mount(app: FastAPI) -> None:
    """Serve the console under /ui/ (pages) and /ui/static/ (its own assets)."""
    base.templates.env.globals["allowed"] = _allowed
    app.mount("/ui/static", StaticFiles(directory=base.HERE / "static"), name="ui-static")
    for module in (
        auth_pages,
        operations,
        care_pages,
        admin_pages,
        report_pages,
        reseller_pages,
        events_pages,
        promotion_pages,
    ):
        app.include_router(module.router)
    app.include_router(_fallback)
