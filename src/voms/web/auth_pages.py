"""Signing in and out, and the TOTP second factor."""

import secrets

from fastapi import APIRouter, Request
from starlette.responses import Response

from voms.services import people
from voms.web.base import (
    LOGIN_CSRF_COOKIE,
    SESSION_COOKIE,
    ConsoleRoute,
    CsrfRefused,
    call,
    checked_form,
    field,
    render,
    runtime,
    see_other,
    set_cookie,
    viewer,
)

router = APIRouter(prefix="/ui", include_in_schema=False, route_class=ConsoleRoute)


def _safe_next(target: str) -> str:
    # Only a path of this console: never another site (an open redirect).
    return target if target.startswith("/ui/") and not target.startswith("//") else "/ui/"


@router.get("/login")
async def login_page(request: Request) -> Response:
    token = request.cookies.get(LOGIN_CSRF_COOKIE) or secrets.token_urlsafe(32)
    response = render(
        request,
        None,
        "login.html",
        title="Sign in",
        login_csrf=token,
        next=_safe_next(request.query_params.get("next", "/ui/")),
        username="",
    )
    set_cookie(request, response, LOGIN_CSRF_COOKIE, token, "/ui/login")
    return response


@router.post("/login")
async def login(request: Request) -> Response:
    form = await request.form()
    cookie = request.cookies.get(LOGIN_CSRF_COOKIE, "")
    sent = field(form, "csrf_token")
    if not cookie or not secrets.compare_digest(cookie, sent):
        raise CsrfRefused()
    username, password = field(form, "username"), form.get("password")
    target = _safe_next(field(form, "next"))
    try:
        token = await call(
            people.sign_in,
            runtime(request),
            username,
            password if isinstance(password, str) else "",
        )
    except people.SignInRefused as refused:
        return render(
            request,
            None,
            "login.html",
            status=401,
            title="Sign in",
            login_csrf=cookie,
            next=target,
            username=username,
            error=refused.detail,
        )
    response = see_other(target)
    set_cookie(request, response, SESSION_COOKIE, token, "/ui")
    response.delete_cookie(LOGIN_CSRF_COOKIE, path="/ui/login")
    return response


async def _pending(request: Request) -> tuple[str, people.Session]:
    token = request.cookies.get(SESSION_COOKIE, "")
    session = await call(people.session_of, runtime(request), token) if token else None
    if session is None or not session.second_factor_due:
        raise people.SignInRefused("no sign-in waiting for a code")
    return token, session


@router.get("/login/code")
async def code_page(request: Request) -> Response:
    try:
        _, session = await _pending(request)
    except people.SignInRefused:
        return see_other("/ui/login")
    secret = people.new_totp_secret() if session.must_enrol else None
    return render(
        request,
        None,
        "login_code.html",
        title="Second factor",
        csrf_token=session.csrf_token,
        enrol_secret=secret,
        enrol_uri=people.totp_uri(secret, session.username) if secret else None,
    )


@router.post("/login/code")
async def code(request: Request) -> Response:
    try:
        token, session = await _pending(request)
    except people.SignInRefused:
        return see_other("/ui/login")
    form = await request.form()
    if not secrets.compare_digest(field(form, "csrf_token"), session.csrf_token):
        raise CsrfRefused()
    enrol = field(form, "enrol_secret") or None
    try:
        await call(people.verify_second_factor, runtime(request), token, field(form, "code"), enrol)
    except people.SignInRefused as refused:
        return render(
            request,
            None,
            "login_code.html",
            status=401,
            title="Second factor",
            csrf_token=session.csrf_token,
            enrol_secret=enrol if session.must_enrol else None,
            enrol_uri=people.totp_uri(enrol, session.username) if enrol else None,
            error=refused.detail,
        )
    return see_other("/ui/")


@router.post("/logout")
async def logout(request: Request) -> Response:
    session = await viewer(request)
    await checked_form(request, session)
    await call(people.sign_out, runtime(request), request.cookies.get(SESSION_COOKIE, ""))
    response = see_other("/ui/login")
    response.delete_cookie(SESSION_COOKIE, path="/ui")
    return response
