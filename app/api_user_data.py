"""/api routes (filled in by its issue). Endpoints here are wrapped by `api.authorized`."""

from __future__ import annotations

from starlette.routing import Route

ROUTES: list[Route] = []
