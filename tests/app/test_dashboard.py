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


def api_paths_the_script_reads() -> list[str]:
    """The paths the script fetches, with sample values in place of its ${...} parts."""
    script = (resources.files("app") / "static" / "dashboard.js").read_text()
    paths = re.findall(r'api\(\s*[`"](/api/[^`"]*)[`"]', script)
    return [re.sub(r"\$\{[^}]*\}", "x", path).split("?")[0] for path in paths]


async def test_every_api_route_the_script_reads_exists_and_needs_the_token(client):
    paths = api_paths_the_script_reads()
    assert {"/api/sync", "/api/segments", "/api/segments/x/customers", "/api/customers/x",
            "/api/customers/x/events"} <= set(paths)
    for path in paths:
        path = path.replace("/segments/x/", "/segments/customers/")
        with_token = await client.get(path)
        without = await client.get(path, headers={"authorization": ""})
        assert without.status_code == 401, path
        # A route that exists answers JSON, even for an unknown customer (404 with a message).
        assert with_token.headers["content-type"] == "application/json", path
        assert with_token.status_code in (200, 404), path
        if with_token.status_code == 404:
            assert with_token.json()["error"], path
