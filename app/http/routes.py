"""Every /api route, gathered from the modules that serve them, each behind `api.authorized`
with the query parameters its OpenAPI description names (so the document and the checks agree)."""

from __future__ import annotations

from starlette.routing import Route

from stripeline.http import api, api_customers, api_events, api_segments, api_user_data, openapi


def api_routes() -> list[Route]:
    own = [
        Route("/api/sync", api.sync_health),
        Route("/api/sync/history", api.sync_history),
        Route("/api/openapi.json", openapi.serve),
        Route("/api/events/{event_id}", api.get_event),
        Route("/api/events/{event_id}/retry", api.retry_event, methods=["POST"]),
    ]
    every = [*own, *api_events.ROUTES, *api_customers.ROUTES, *api_segments.ROUTES, *api_user_data.ROUTES]
    return [
        Route(r.path, api.authorized(r.endpoint, openapi.query_names(r.endpoint)), methods=r.methods) for r in every
    ]
