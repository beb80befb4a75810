"""GET /api/openapi.json: built from the routes, matching them, and holding up under schemathesis."""

from __future__ import annotations

import asyncio

import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given
from hypothesis import settings as hypothesis_settings
from schemathesis import GenerationMode
from schemathesis.checks import positive_data_acceptance
from schemathesis.core.failures import FailureGroup
from starlette.routing import Route

from stripeline.http import openapi
from stripeline.http.api import authorized
from tests.app.test_worker import run_worker_until_idle
from tests.conftest import API_TOKEN, WEBHOOK_SECRET
from tests.factories import customer_object, event, signed
from tests.live_server import live_server

# Examples per operation and generation mode: about 20 operations, two modes, a few seconds.
EXAMPLES = 12


def api_routes(app) -> set[tuple[str, str]]:
    return {
        (method, route.path)
        for route in app.routes
        if isinstance(route, Route) and route.path.startswith("/api/")
        for method in route.methods - {"HEAD"}
    }


async def test_document_lists_every_api_route_with_its_path_parameters(client, app):
    answer = await client.get("/api/openapi.json")
    assert answer.status_code == 200
    document = answer.json()
    assert document["openapi"] == "3.1.0"
    documented = {(method.upper(), path) for path, operations in document["paths"].items() for method in operations}
    assert documented == api_routes(app)
    for route in app.routes:
        if isinstance(route, Route) and route.path.startswith("/api/"):
            for method in route.methods - {"HEAD"}:
                described = document["paths"][route.path][method.lower()]
                in_path = [p["name"] for p in described["parameters"] if p["in"] == "path"]
                assert in_path == list(route.param_convertors), route.path
                assert "401" in described["responses"] and "503" in described["responses"]


async def test_document_needs_the_token_like_every_api_route(client):
    client.headers.pop("authorization")
    assert (await client.get("/api/openapi.json")).status_code == 401


def test_a_route_without_a_description_or_a_description_without_a_route_stops_the_document(app):
    async def undocumented(request):
        raise AssertionError("never called")

    with pytest.raises(LookupError, match="/api/new"):
        openapi.document([*app.routes, Route("/api/new", authorized(undocumented))])
    with pytest.raises(LookupError, match="list_events"):
        openapi.document([route for route in app.routes if getattr(route, "path", "") != "/api/events"])


async def seed_through_the_product(client, settings, pool) -> None:
    """A customer and a failed event, by signed webhooks and the worker, for the fuzzer to find."""
    customer = customer_object("cus_fuzz", email="fuzz@example.com", name="Fuzz")
    for payload in (event("customer.created", customer), event("customer.updated", {**customer, "delinquent": 7})):
        body, headers = signed(payload, WEBHOOK_SECRET)
        assert (await client.post("/webhooks/stripe", content=body, headers=headers)).status_code == 200
    await run_worker_until_idle(settings, pool)


def fuzz(schema, base_url: str) -> list[str]:
    """Every operation, valid and invalid input: no 5xx, invalid input refused with a 4xx, and
    every answer as documented.

    Not checked: that all input valid by the schema is accepted. A schema cannot say that a
    page cursor must come from a previous page, nor that `since` must precede `until`; such
    input is refused with a 400 and its message.
    """
    problems = []
    for result in schema.get_all_operations():
        operation = result.ok()
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):

            @hypothesis_settings(
                max_examples=EXAMPLES,
                deadline=None,
                derandomize=True,
                database=None,
                phases=[Phase.explicit, Phase.generate],
                suppress_health_check=list(HealthCheck),
            )
            @given(case=operation.as_strategy(generation_mode=mode))
            def call(case):
                case.call_and_validate(
                    base_url=base_url,
                    headers={"Authorization": f"Bearer {API_TOKEN}"},
                    excluded_checks=[positive_data_acceptance],
                )

            try:
                call()
            except (Exception, FailureGroup) as failure:  # noqa: BLE001 - collected, reported together below
                problems.append(f"{operation.label} ({mode.value}): {failure}"[:3000])
    return problems


async def test_schemathesis_finds_no_server_error_and_no_answer_outside_the_document(client, app, settings, pool):
    await seed_through_the_product(client, settings, pool)
    schema = schemathesis.openapi.from_dict((await client.get("/api/openapi.json")).json())
    async with live_server(app) as base_url:
        problems = await asyncio.to_thread(fuzz, schema, base_url)
    assert not problems, "\n\n".join(problems)
