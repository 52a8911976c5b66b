"""The gate every HTTP request passes first: the key, then the role, then the body.

docs/api.md ("Consistency rules"): a caller without a valid key gets 401 and one without the
right role 403, whatever its body, before anything looks the body up or validates it.
So under ``/api/v1`` the key and the route's permission (its :class:`~voms.api.deps.Allowed`
dependency) are checked here, before one byte of the body is read; then, for a route
whose path names an object and that takes a body or a query, the caller's scope over
that object and the object's existence (voms.services.owners): 403, then 404, and only
then the body's or the query's 422. Every body, on every
path, is then capped (VOMS_MAX_BODY_KB; imports VOMS_MAX_IMPORT_BODY_MB) and refused
when it carries NUL characters or JSON nested deeper than any real request.
"""

from collections.abc import Awaitable, Callable
from urllib.parse import parse_qsl

from fastapi import Request
from fastapi.concurrency import run_in_threadpool
from fastapi.routing import APIRoute
from starlette.routing import Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from voms.api.deps import Allowed, authenticate_request, require_role
from voms.domain.errors import Invalid, VomsError
from voms.domain.roles import Permission
from voms.openpgp import MAX_KEY_CHARS
from voms.services import owners

API_PREFIX = "/api/v1"
IMPORT_PATHS = frozenset({"/api/v1/imports"})
PARTNER_PATHS = "/api/v1/partners"
# Methods that send no body: their object is checked before a query only.
BODILESS = frozenset({"GET", "HEAD", "DELETE", "OPTIONS"})
READS = frozenset({"GET", "HEAD", "OPTIONS"})
# Paths that cap their bodies themselves, answering in their own protocol (a SOAP fault).
OWN_LIMITS = frozenset({"/soap"})
MAX_JSON_DEPTH = 64  # the deepest real body (a voucher type) is 5 levels


class BodyTooLarge(VomsError):
    http_status = 413


class Gate:
    """ASGI middleware: see the module's docstring."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self._routes: dict[int, RouteFacts] = {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request = Request(scope, receive)
        try:
            if scope["path"].startswith(API_PREFIX):
                principal = await authenticate_request(request)
                permissions, query_names, kind, params = self._route_of(scope)
                if permissions is not None:
                    require_role(principal, permissions)
                    check_target(scope)
                    if kind is not None and (
                        scope["method"] not in BODILESS or scope.get("query_string")
                    ):
                        rt = scope["app"].state.runtime
                        write = scope["method"] not in READS
                        await run_in_threadpool(
                            owners.check, rt, principal, kind, params, write=write
                        )
                    # Routes that check their caller themselves (the redemption family)
                    # read no query: one they are sent is ignored, not refused before
                    # them.
                    check_query_names(scope, query_names)
            if scope["path"] not in OWN_LIMITS:
                receive = await read_body(scope, receive, body_limit(scope))
        except Exception as exc:
            response = await scope["app"].handle(request, exc)
            await response(scope, receive, send)
            return
        await self.app(scope, receive, send)

    def _route_of(
        self, scope: Scope
    ) -> tuple[tuple[Permission, ...] | None, frozenset[str], owners.Kind | None, dict[str, str]]:
        """The permissions the matching route's Allowed dependency asks for, the names
        of its query parameters, the kind of object its path names and the path's
        parameters."""
        routes: list[APIRoute] = scope["app"].state.api_routes
        for route in routes:
            match, child = route.matches(scope)
            if match is Match.FULL:
                key = id(route)
                if key not in self._routes:
                    names = frozenset(p.alias for p in route.dependant.query_params)
                    kind = owners.kind_of(route.path_format)
                    self._routes[key] = (permission_of(route), names, kind)
                permissions, names, kind = self._routes[key]
                params = {k: str(v) for k, v in child.get("path_params", {}).items()}
                return permissions, names, kind, params
        return None, frozenset(), None, {}


RouteFacts = tuple[tuple[Permission, ...] | None, frozenset[str], owners.Kind | None]


def permission_of(route: APIRoute) -> tuple[Permission, ...] | None:
    """The permissions of the route's :class:`Allowed` dependency, or None."""
    pending = list(route.dependant.dependencies)
    while pending:
        dependency = pending.pop()
        if isinstance(dependency.call, Allowed):
            return dependency.call.permissions
        pending.extend(dependency.dependencies)
    return None


def body_limit(scope: Scope) -> int:
    """VOMS_MAX_BODY_KB; imports VOMS_MAX_IMPORT_BODY_MB; a partner's OpenPGP key (up to
    openpgp.MAX_KEY_CHARS characters, four bytes each at most) what it takes."""
    settings = scope["app"].state.runtime.settings
    path = scope["path"]
    limit = int(settings.max_body_kb) << 10
    if path in IMPORT_PATHS:
        return int(settings.max_import_body_mb) << 20
    if path.startswith(PARTNER_PATHS):
        return max(limit, 4 * MAX_KEY_CHARS + 4096)
    return limit


async def read_body(scope: Scope, receive: Receive, limit: int) -> Receive:
    """Read the body (refused past ``limit`` bytes, before reading them when the
    Content-Length says so), check it, and hand it on as one message."""
    check_target(scope)
    for name, value in scope["headers"]:
        if name == b"content-length":
            if not value.isdigit() or int(value) > limit:
                raise BodyTooLarge(f"request body larger than {limit >> 10} KiB")
            break
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] != "http.request":
            return _replay([message], receive)
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise BodyTooLarge(f"request body larger than {limit >> 10} KiB")
        chunks.append(chunk)
        if not message.get("more_body", False):
            break
    body = b"".join(chunks)
    check_body(body)
    return _replay([{"type": "http.request", "body": body, "more_body": False}], receive)


def _replay(messages: list[Message], receive: Receive) -> Callable[[], Awaitable[Message]]:
    async def replay() -> Message:
        return messages.pop(0) if messages else await receive()

    return replay


class Refused(Invalid):
    """Input refused before validation; ``loc`` says where, as in a 422's detail."""

    def __init__(self, where: str, why: str) -> None:
        super().__init__(why)
        self.loc = [where]


def check_target(scope: Scope) -> None:
    """NUL characters in the path or query: no name or value ever holds one, and
    PostgreSQL refuses them in text."""
    if "\x00" in scope["path"]:
        raise Refused("path", "NUL characters are not accepted")
    query = scope.get("query_string", b"")
    if b"\x00" in query or b"%00" in query:
        raise Refused("query", "NUL characters are not accepted")


def check_query_names(scope: Scope, known: frozenset[str]) -> None:
    """An unknown query parameter is refused, not ignored: a misspelt filter (``?msisnd=``)
    would otherwise answer everything."""
    query = scope.get("query_string", b"")
    if not query:
        return
    for name, _ in parse_qsl(query.decode("latin-1"), keep_blank_values=True):
        if name not in known:
            raise Refused("query", f"unknown query parameter '{name[:40]}'")


def check_body(body: bytes) -> None:
    """Text that is no UTF-8, NUL characters (raw or as a JSON escape) and JSON nested
    absurdly deep: refused here, so that no parser or database meets them."""
    try:
        body.decode("utf-8")
    except UnicodeDecodeError:
        raise Refused("body", "the body is not UTF-8 text") from None
    if b"\x00" in body or b"\\u0000" in body:
        raise Refused("body", "NUL characters are not accepted")
    if json_depth_exceeds(body, MAX_JSON_DEPTH):
        raise Refused("body", f"JSON nested deeper than {MAX_JSON_DEPTH} levels")


def json_depth_exceeds(body: bytes, limit: int) -> bool:
    """True when brackets outside strings nest deeper than ``limit``; counted only when
    the body has that many brackets at all, so ordinary bodies cost two scans."""
    if body.count(b"[") + body.count(b"{") <= limit:
        return False
    depth = 0
    in_string = escaped = False
    for byte in body:
        if in_string:
            if escaped:
                escaped = False
            elif byte == 0x5C:  # backslash
                escaped = True
            elif byte == 0x22:
                in_string = False
        elif byte == 0x22:
            in_string = True
        elif byte in (0x5B, 0x7B):
            depth += 1
            if depth > limit:
                return True
        elif byte in (0x5D, 0x7D):
            depth -= 1
    return False
