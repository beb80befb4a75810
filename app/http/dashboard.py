"""The dashboard: a static page for operators: sync health, segments, customers and events.

The page, its script and its stylesheet carry no data: the script asks the `/api/*` routes
with the token the user types (kept in the tab's sessionStorage), so the dashboard is exactly
as protected as the API. A strict Content-Security-Policy allows only our own files.
"""

from __future__ import annotations

from importlib import resources

from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import Route

FILES = {
    "/dashboard": ("dashboard.html", "text/html; charset=utf-8"),
    "/dashboard/dashboard.js": ("dashboard.js", "text/javascript; charset=utf-8"),
    "/dashboard/dashboard.css": ("dashboard.css", "text/css; charset=utf-8"),
    "/dashboard/favicon.svg": ("favicon.svg", "image/svg+xml"),
}
HEADERS = {
    "content-security-policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; "
        "form-action 'none'; frame-ancestors 'none'; base-uri 'none'"
    ),
    "x-content-type-options": "nosniff",
    "referrer-policy": "no-referrer",
    "cache-control": "no-cache",
}


def _load() -> dict[str, tuple[bytes, str]]:
    static = resources.files("stripeline.http") / "static"
    return {path: ((static / name).read_bytes(), media_type) for path, (name, media_type) in FILES.items()}


_CONTENT = _load()


async def serve(request: Request) -> Response:
    body, media_type = _CONTENT[request.url.path]
    return Response(body, media_type=media_type, headers=HEADERS)


async def home(request: Request) -> Response:
    return RedirectResponse("/dashboard", status_code=307)


ROUTES = [Route(path, serve) for path in FILES] + [Route("/", home)]
