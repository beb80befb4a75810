"""The dashboard: a page without data of its own, reading only the token-protected API."""

from __future__ import annotations

import re
from importlib import resources

from tests.factories import customer_object, event
from tests.handlers.billing_support import apply


async def test_dashboard_page_script_and_stylesheet_are_served_without_data(client, conn, settings):
    await apply(conn, settings, [event("customer.created", customer_object("cus_dash", email="dana@example.com"))])
    client.headers.pop("authorization")

    page = await client.get("/dashboard")
    script = await client.get("/dashboard/dashboard.js")
    style = await client.get("/dashboard/dashboard.css")

    assert page.status_code == script.status_code == style.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    assert script.headers["content-type"].startswith("text/javascript")
    assert style.headers["content-type"].startswith("text/css")
    for answer in (page, script, style):
        assert "script-src 'self'" in answer.headers["content-security-policy"]
        assert "cus_dash" not in answer.text and "dana@example.com" not in answer.text
    assert 'src="/dashboard/dashboard.js"' in page.text
    assert (await client.get("/", follow_redirects=False)).headers["location"] == "/dashboard"


def api_calls_the_script_makes() -> list[tuple[str, str]]:
    """(method, path) of each API call in the script, with sample values in place of its ${...} parts."""
    script = (resources.files("stripeline.http") / "static" / "dashboard.js").read_text()
    calls = re.findall(r'api\(\s*[`"](/api/[^`"]*)[`"](\s*,\s*\{\s*method:\s*"([A-Z]+)")?', script)
    return [(method or "GET", re.sub(r"\$\{[^}]*\}", "x", path).split("?")[0]) for path, _, method in calls]


async def test_every_api_route_the_script_calls_exists_and_needs_the_token(client):
    calls = api_calls_the_script_makes()
    assert {("GET", "/api/sync"), ("GET", "/api/sync/history"), ("GET", "/api/segments"),
            ("GET", "/api/segments/x/customers"), ("GET", "/api/customers"), ("GET", "/api/customers/x"),
            ("GET", "/api/customers/x/events"), ("GET", "/api/events"), ("GET", "/api/events/x"),
            ("POST", "/api/events/x/retry"), ("POST", "/api/events/retry")} <= set(calls)
    for method, path in calls:
        path = path.replace("/segments/x/", "/segments/customers/")
        with_token = await client.request(method, path, json={} if method == "POST" else None)
        without = await client.request(method, path, headers={"authorization": ""})
        assert without.status_code == 401, path
        # A route that exists answers JSON, even for an unknown customer (404 with a message).
        assert with_token.headers["content-type"] == "application/json", path
        assert with_token.status_code in (200, 202, 404), path
        if with_token.status_code == 404:
            assert with_token.json()["error"], path


async def test_the_page_allows_only_its_own_files_and_the_icon_is_served(client):
    page = await client.get("/dashboard")
    policy = page.headers["content-security-policy"]
    assert "default-src 'none'" in policy and "img-src 'self'" in policy and "'unsafe-inline'" not in policy
    assert 'href="/dashboard/favicon.svg"' in page.text
    icon = await client.get("/dashboard/favicon.svg")
    assert icon.status_code == 200 and icon.headers["content-type"].startswith("image/svg+xml")
    script = (await client.get("/dashboard/dashboard.js")).text
    # Data from Stripe is only ever set as text.
    assert "innerHTML" not in script and "insertAdjacentHTML" not in script and "eval(" not in script
