"""The web console at /ui/: server-rendered pages for operations and customer care."""

from fastapi import FastAPI
from starlette.staticfiles import StaticFiles

from voms.domain.roles import Permission, allows
from voms.services.people import Session
from voms.web import admin_pages, auth_pages, base, care_pages, operations, promotion_pages


def _allowed(viewer: Session | None, permission: str) -> bool:
    return viewer is not None and allows(viewer.role, Permission(permission))


def mount(app: FastAPI) -> None:
    """Serve the console under /ui/ (pages) and /ui/static/ (its own assets)."""
    base.templates.env.globals["allowed"] = _allowed
    app.mount("/ui/static", StaticFiles(directory=base.HERE / "static"), name="ui-static")
    for module in (auth_pages, operations, care_pages, admin_pages, promotion_pages):
        app.include_router(module.router)
