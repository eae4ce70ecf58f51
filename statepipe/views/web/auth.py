"""Who may use the server, and from where.

Without a token the server listens on loopback only (`serve` refuses otherwise), so whoever can
reach it is on this machine; it still answers only requests addressed to a loopback name, or
a web page could reach it through a DNS name of its own that resolves to 127.0.0.1 (DNS
rebinding) and read every run. With a token, every API route and page wants
`Authorization: Bearer <token>` or the session cookie that `POST /login` sets (HttpOnly,
SameSite=Strict; its value is derived from the token, never the token itself).

A request that changes state is refused when another site sent it, whatever its credentials: a
browser attaches cookies to a cross-site form post (CSRF). It must carry JSON, which a form
cannot send without a CORS preflight, and the server answers no preflight; and its
`Sec-Fetch-Site` and `Origin`, which browsers set and pages cannot forge, must not point at
another site."""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, quote, urlsplit

from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from jinja2 import Environment, FileSystemLoader
from starlette.types import ASGIApp, Message, Receive, Scope, Send

COOKIE = "statepipe_session"
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
LOGIN_BODY_MAX = 16 * 1024  # a token and a path; anything longer is not a login
# every response: no sniffing JSON as HTML, no framing (a button clicked through a frame), no
# run ids leaking in the Referer to other sites
SECURITY_HEADERS = [
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"same-origin"),
]

router = APIRouter(include_in_schema=False)
_pages = Environment(loader=FileSystemLoader(Path(__file__).parent / "templates"), autoescape=True)


class AuthRequired(Exception):
    """No valid token or session: an API client gets 401, a browser the login page."""


class Refused(Exception):
    """A request refused whoever sends it (403 cross-site, 415 not JSON)."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status, self.code = status, code


def _token(request: Request) -> str | None:
    token: str | None = request.app.state.config.token
    return token


def session_value(token: str) -> str:
    """The cookie's value: proof of the token without being it (a copied cookie does not
    reveal the token, and changing the token ends every session)."""
    return hmac.new(token.encode(), b"statepipe session", hashlib.sha256).hexdigest()


def _same(given: str, expected: str) -> bool:
    return hmac.compare_digest(given.encode(), expected.encode())


def authenticated(request: Request) -> bool:
    token = _token(request)
    if token is None:
        return True
    scheme, _, credentials = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() == "bearer" and _same(credentials.strip(), token):
        return True
    cookie = request.cookies.get(COOKIE)
    return cookie is not None and _same(cookie, session_value(token))


def _loopback(host: str | None) -> bool:
    if host is None:
        return False
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


async def required(request: Request) -> None:
    """The dependency every API route and page takes (app.py adds it to their routers)."""
    if _token(request) is None:
        if not _loopback(request.url.hostname):
            raise Refused(403, "forbidden_host", "this server answers requests addressed to localhost only; "
                          "to serve other names, start it with --token")
        return
    if not authenticated(request):
        raise AuthRequired


def check_same_site(request: Request) -> None:
    """Refuse a request another site's page made the browser send."""
    if request.headers.get("sec-fetch-site") == "cross-site":
        raise Refused(403, "cross_site", "refused: the request came from another site")
    origin = request.headers.get("origin")
    if origin is not None:
        # a proxy's X-Forwarded-Host counts too: a page cannot set that header without a preflight
        hosts = {request.headers.get(h, "").lower() for h in ("host", "x-forwarded-host")} - {""}
        if urlsplit(origin).netloc.lower() not in hosts:  # "null" (a sandboxed page) too
            raise Refused(403, "cross_site", f"refused: the request came from {origin}, not from this server's pages")


async def same_site(request: Request) -> None:
    """The dependency that guards state changes: same site, and a JSON body."""
    if request.method in SAFE_METHODS:
        return
    check_same_site(request)
    media_type = request.headers.get("content-type", "").partition(";")[0].strip().lower()
    if media_type != "application/json":
        raise Refused(415, "unsupported_media_type", "send the request body as JSON (Content-Type: application/json)")


def _local(path: str) -> str:
    """Where to go after logging in: a path on this server, never another site."""
    return path if path.startswith("/") and not path.startswith(("//", "/\\")) else "/"


def _login_page(next_path: str, error: str | None, status: int = 200) -> HTMLResponse:
    return HTMLResponse(_pages.get_template("login.html").render(next=next_path, error=error), status_code=status)


@router.get("/login")
async def login_form(request: Request, next: str = "/") -> Response:
    if authenticated(request):
        return RedirectResponse(_local(next), status_code=303)
    return _login_page(_local(next), None)


@router.post("/login")
async def login(request: Request) -> Response:
    check_same_site(request)
    body = await request.body()
    form = parse_qs(body[:LOGIN_BODY_MAX].decode("utf-8", "replace"))
    given, next_path = form.get("token", [""])[0], _local(form.get("next", ["/"])[0])
    token = _token(request)
    if token is None:
        return RedirectResponse(next_path, status_code=303)
    if not _same(given, token):
        return _login_page(next_path, "That is not the server's token.", status=401)
    response = RedirectResponse(next_path, status_code=303)
    response.set_cookie(COOKIE, session_value(token), httponly=True, samesite="strict", secure=request.url.scheme == "https")
    return response


@router.post("/logout")
async def logout(request: Request) -> Response:
    check_same_site(request)
    response = RedirectResponse("/login", status_code=303)
    response.delete_cookie(COOKIE, httponly=True, samesite="strict")
    return response


def _wants_page(request: Request) -> bool:
    return not request.url.path.startswith("/api/") and "text/html" in request.headers.get("accept", "")


class SecurityHeaders:
    """Adds SECURITY_HEADERS to every response, streams included (an ASGI wrapper, not
    BaseHTTPMiddleware, which would buffer nothing but wrap every stream in a task)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def sending(message: Message) -> None:
            if message["type"] == "http.response.start":
                present = {name.lower() for name, _ in message.get("headers", [])}
                message["headers"] = [*message.get("headers", []), *(h for h in SECURITY_HEADERS if h[0] not in present)]
            await send(message)

        await self.app(scope, receive, sending)


def install(app: FastAPI) -> None:
    """The login routes, the answers to refused requests, and the headers on every response."""

    @app.exception_handler(AuthRequired)
    async def unauthorized(request: Request, exc: AuthRequired) -> Response:
        if _wants_page(request):
            target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
            return RedirectResponse(f"/login?next={quote(target, safe='')}", status_code=303)
        body: dict[str, Any] = {"error": "missing or wrong token: send Authorization: Bearer <token>", "code": "unauthorized"}
        return JSONResponse(body, status_code=401, headers={"WWW-Authenticate": "Bearer"})

    @app.exception_handler(Refused)
    async def refused(request: Request, exc: Refused) -> Response:
        return JSONResponse({"error": str(exc), "code": exc.code}, status_code=exc.status)

    app.include_router(router)
    app.add_middleware(SecurityHeaders)
