"""Errors become answers in one place: bad input 4xx, a real outage 503, never a traceback."""

from __future__ import annotations

import asyncpg
import httpx
import pytest
import structlog
from redis import exceptions as redis_errors
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.routing import Route

from stripeline.http.responses import BadInput, ErrorAnswers, JSONResponse
from stripeline.http.web import create_app
from stripeline.store.db import create_pool
from tests.conftest import API_TOKEN
from tests.services import serving, unreachable_postgres

CUSTOMER = {"id": "cus_errors1", "object": "customer", "email": "errors@example.com", "created": 1_700_000_000}


def tiny_app(endpoint, methods=("GET",)) -> Starlette:
    return Starlette(routes=[Route("/thing", endpoint, methods=list(methods))], middleware=[Middleware(ErrorAnswers)])


async def call(app, method: str = "GET") -> httpx.Response:
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
        return await client.request(method, "/thing")


async def test_bad_input_raised_by_a_route_is_answered_400_with_its_message():
    async def endpoint(request):
        raise BadInput("limit must be a whole number from 1 to 500")

    answer = await call(tiny_app(endpoint))
    assert (answer.status_code, answer.json()) == (400, {"error": "limit must be a whole number from 1 to 500"})


@pytest.mark.parametrize(
    "problem",
    [ConnectionRefusedError(111, "refused"), TimeoutError(), asyncpg.TooManyConnectionsError("too many clients"),
     asyncpg.CannotConnectNowError("starting up"), redis_errors.ConnectionError("Connection refused"),
     redis_errors.TimeoutError("Timeout reading from socket")],
)
async def test_a_real_outage_is_503_with_retry_after(problem):
    async def endpoint(request):
        raise problem

    answer = await call(tiny_app(endpoint))
    assert answer.status_code == 503
    assert answer.headers["retry-after"] == "5"
    assert "retry later" in answer.json()["error"]


async def test_a_value_postgresql_refuses_is_400_without_the_value():
    async def endpoint(request):
        error = asyncpg.CharacterNotInRepertoireError('invalid byte sequence for encoding "UTF8": 0x00 in "jane@x.org"')
        error.sqlstate = "22021"
        raise error

    answer = await call(tiny_app(endpoint))
    assert answer.status_code == 400
    assert "22021" in answer.json()["error"] and "jane" not in answer.text


async def test_a_get_whose_connection_died_is_run_once_more_before_answering():
    calls = []

    async def endpoint(request):
        calls.append(1)
        if len(calls) == 1:
            raise asyncpg.ConnectionDoesNotExistError("connection was closed in the middle of operation")
        return JSONResponse({"ok": True})

    answer = await call(tiny_app(endpoint))
    assert (answer.status_code, len(calls)) == (200, 2)


async def test_a_write_whose_connection_died_is_not_run_twice():
    calls = []

    async def endpoint(request):
        calls.append(1)
        raise asyncpg.ConnectionDoesNotExistError("connection was closed in the middle of operation")

    answer = await call(tiny_app(endpoint, methods=["POST"]), "POST")
    assert (answer.status_code, len(calls)) == (503, 1)


async def test_a_bug_is_logged_and_answered_500_without_a_traceback():
    async def endpoint(request):
        raise KeyError("secret detail")

    with structlog.testing.capture_logs() as logs:
        answer = await call(tiny_app(endpoint))
    assert answer.status_code == 500
    assert "Traceback" not in answer.text and "secret detail" not in answer.text
    assert [line["event"] for line in logs] == ["request_failed"]


async def test_a_refused_request_logs_its_path_cut_short():
    async def endpoint(request):
        raise BadInput("no such thing")

    app = Starlette(routes=[Route("/{rest:path}", endpoint)], middleware=[Middleware(ErrorAnswers)])
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    with structlog.testing.capture_logs() as logs:
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
            answer = await client.get("/" + "x" * 20_000)
    assert answer.status_code == 400
    [line] = logs
    assert line["event"] == "request_refused"
    assert line["path"].startswith("/xxx") and len(line["path"]) <= 210


async def test_nul_in_any_path_id_is_400_not_an_outage(client):
    requests = [
        ("GET", "/api/customers/%00"),
        ("GET", "/api/customers/%00/events"),
        ("GET", "/api/customers/%00/attributes"),
        ("PUT", "/api/customers/%00/attributes"),
        ("GET", "/api/customers/%00/tags"),
        ("POST", "/api/customers/%00/tags"),
        ("DELETE", "/api/customers/cus_1/tags/%00"),
        ("GET", "/api/events/%00"),
        ("POST", "/api/events/%00/retry"),
        ("GET", "/api/segments/customers/customers?after=%00"),
        ("GET", "/api/customers/cus_1/events?after=a%00b"),
    ]
    for method, path in requests:
        answer = await client.request(method, path, json={"tag": "vip"} if method == "POST" else {})
        assert answer.status_code == 400, (method, path, answer.text)
        assert "NUL" in answer.json()["error"]


async def test_nul_in_attribute_json_is_400(client, conn):
    await conn.execute("INSERT INTO customers (id, email) VALUES ('cus_errors1', 'errors@example.com')")
    for body in ('{"note": "a\\u0000b"}', '{"no\\u0000te": "ab"}'):
        answer = await client.put("/api/customers/cus_errors1/attributes", content=body)
        assert answer.status_code == 400 and "NUL" in answer.json()["error"]


async def test_limit_in_digits_python_would_not_parse_is_400(client, conn):
    await conn.execute("INSERT INTO customers (id) VALUES ('cus_errors1')")
    for limit in ("²", "١٢", "1e3", "-1", "0", "501", " 5"):
        answer = await client.get("/api/customers/cus_errors1/events", params={"limit": limit})
        assert answer.status_code == 400, limit


async def test_api_answers_are_never_cached(client, settings, redis):
    for path, token in [("/api/sync", API_TOKEN), ("/api/sync", "wrong"), ("/api/customers/cus_none", API_TOKEN),
                        ("/api/customers/%00", API_TOKEN)]:
        answer = await client.get(path, headers={"authorization": f"Bearer {token}"})
        assert answer.headers["cache-control"] == "no-store", path
    broken = await create_pool(unreachable_postgres(), min_size=0)
    async with serving(create_app(settings, pool=broken, redis=redis), API_TOKEN) as down:
        answer = await down.get("/api/sync")
    await broken.close()
    assert (answer.status_code, answer.headers["cache-control"]) == (503, "no-store")
    assert "cache-control" not in (await client.get("/healthz")).headers


async def test_api_outage_is_503_and_logged_once(settings, redis):
    broken = await create_pool(unreachable_postgres(), min_size=0)
    with structlog.testing.capture_logs() as logs:
        async with serving(create_app(settings, pool=broken, redis=redis), API_TOKEN) as client:
            statuses = [(await client.get(path)).status_code for path in ["/api/sync", "/api/segments"] * 3]
    await broken.close()
    assert statuses == [503] * 6
    assert [line["dependency"] for line in logs if line["event"] == "dependency_unavailable"] == ["postgres"]
