"""The dashboard in headless Chromium, as an operator uses it: sign in, read the health, find a
customer and its timeline, find a failed event and retry it, follow a segment's members.

The data comes through the product: signed webhooks to /webhooks/stripe, processed by the
worker. Any console error fails the test, and each page is saved as a screenshot in the
directory the test prints (STRIPELINE_SCREENSHOTS to choose it).

Chromium is Debian's (`apt-get install chromium`; .ci/run installs it); Playwright only drives
it (`playwright install` cannot download browsers here).
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import pytest

from tests import factories as f
from tests.app.test_worker import run_worker_until_idle
from tests.conftest import API_TOKEN, WEBHOOK_SECRET
from tests.live_server import live_server

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
if CHROMIUM is None and not os.environ.get("CI"):
    pytest.skip("no chromium on this machine (apt-get install chromium)", allow_module_level=True)

playwright_api = pytest.importorskip("playwright.async_api")

DAY = 86400
# Chromium reports an HTTP error answer of fetch() as a console error; the steps that expect
# one (an unknown id, a wrong token) take it out, every other console error fails the test.
HTTP_ERROR = "Failed to load resource: the server responded with a status of"


def stream(now: int) -> list[dict]:
    """What Stripe sends for a few customers of a small SaaS, in order."""
    team = f.product_object(name="Team", created=now - 90 * DAY)
    monthly = f.price_object(product=team["id"], unit_amount=4900, interval="month", nickname="Team monthly")
    yearly = f.price_object(
        product=team["id"], unit_amount=49000, interval="year", nickname="Team yearly", currency="eur"
    )
    events = [
        f.event("product.created", team, created=now - 90 * DAY),
        f.event("price.created", monthly, created=now - 90 * DAY),
        f.event("price.created", yearly, created=now - 90 * DAY),
    ]

    customers = {}

    def customer(name, email, days_ago, **kwargs):
        obj = f.customer_object(name=name, email=email, created=now - days_ago * DAY, **kwargs)
        customers[obj["id"]] = obj
        events.append(f.event("customer.created", obj, created=now - days_ago * DAY))
        return obj["id"]

    def subscribe(customer_id, price, days_ago, **kwargs):
        length = 365 if price["recurring"]["interval"] == "year" else 30
        start = now - (days_ago % length) * DAY
        sub = f.subscription_object(
            customer_id,
            [(price, kwargs.pop("quantity", 1))],
            created=now - days_ago * DAY,
            period=(start, start + length * DAY),
            **kwargs,
        )
        events.append(f.event("customer.subscription.created", sub, created=now - days_ago * DAY))
        # Stripe sets the customer's currency with its first subscription, and says so.
        if customers[customer_id]["currency"] is None:
            updated, previous = f.changed(customers[customer_id], currency=price["currency"])
            customers[customer_id] = updated
            events.append(
                f.event("customer.updated", updated, created=now - days_ago * DAY, previous_attributes=previous)
            )
        return sub

    def pay(customer_id, sub, amount, days_ago, currency="usd"):
        invoice = f.invoice_object(
            customer_id,
            subscription=sub["id"],
            status="paid",
            amount_due=amount,
            amount_paid=amount,
            paid_at=now - days_ago * DAY,
            created=now - days_ago * DAY,
            currency=currency,
            number=f"INV-{len(events):04d}",
        )
        charge = f.charge_object(
            customer_id, amount=amount, currency=currency, created=now - days_ago * DAY, invoice=invoice["id"]
        )
        events.extend(
            [
                f.event("invoice.created", {**invoice, "status": "draft"}, created=now - days_ago * DAY),
                f.event("charge.succeeded", charge, created=now - days_ago * DAY),
                f.event("invoice.paid", invoice, created=now - days_ago * DAY),
            ]
        )

    ada = customer("Ada Lovelace", "ada@analytical.example", 60)
    trial = subscribe(
        ada, monthly, 40, status="trialing", trial_start=now - 40 * DAY, trial_end=now - 26 * DAY, quantity=3
    )
    active, previous = f.changed(trial, status="active")
    events.append(
        f.event("customer.subscription.updated", active, created=now - 26 * DAY, previous_attributes=previous)
    )
    pay(ada, trial, 14700, 26)
    grace = customer("Grace Hopper", "grace@cobol.example", 3)
    subscribe(grace, monthly, 3, status="trialing", trial_start=now - 3 * DAY, trial_end=now + 11 * DAY)
    alan = customer("Alan Turing", "alan@bletchley.example", 50)
    late = subscribe(alan, monthly, 45, status="active")
    pay(alan, late, 4900, 45)
    overdue, previous = f.changed(late, status="past_due")
    failed_invoice = f.invoice_object(
        alan,
        subscription=late["id"],
        status="open",
        amount_due=4900,
        attempt_count=2,
        created=now - 15 * DAY,
        number="INV-9001",
    )
    events += [
        f.event("invoice.payment_failed", failed_invoice, created=now - 15 * DAY),
        f.event("customer.subscription.updated", overdue, created=now - 14 * DAY, previous_attributes=previous),
    ]
    margaret = customer("Margaret Hamilton", "margaret@apollo.example", 80)
    subscribe(margaret, yearly, 80, status="active")
    pay(margaret, {"id": events[-1]["data"]["object"]["id"]}, 49000, 80, currency="eur")
    ada_two = customer("Ada Byron", "byron@poetry.example", 20)
    gone = subscribe(ada_two, monthly, 20, status="active")
    events.append(
        f.event(
            "customer.subscription.deleted",
            {**gone, "status": "canceled", "canceled_at": now - 5 * DAY},
            created=now - 5 * DAY,
        )
    )
    return events


def unknown_status(events: list[dict]) -> dict:
    """Stripe names a subscription status this version does not know yet: the event fails on
    every attempt until a release handles it, and is then retried from the dashboard."""
    subscription = next(e["data"]["object"] for e in events if e["type"] == "customer.subscription.updated")
    future, previous = f.changed(subscription, status="pending_activation")
    return f.event("customer.subscription.updated", future, created=int(time.time()) - 60, previous_attributes=previous)


@pytest.fixture
async def dashboard(app, client, settings, pool):
    events = stream(int(time.time()))
    # The failing event comes last, on its own: a batch it joined would leave the others for
    # the worker's sweeper, which does not run in these burst-mode workers.
    for batch in (events, [unknown_status(events)]):
        for payload in batch:
            body, headers = f.signed(payload, WEBHOOK_SECRET)
            answer = await client.post("/webhooks/stripe", content=body, headers=headers)
            assert answer.status_code == 200, answer.text
        await run_worker_until_idle(settings, pool)
    async with live_server(app) as base_url:
        yield base_url


@pytest.fixture
def screens(tmp_path_factory, capsys):
    where = Path(os.environ.get("STRIPELINE_SCREENSHOTS") or tmp_path_factory.mktemp("screens"))
    where.mkdir(parents=True, exist_ok=True)
    with capsys.disabled():
        print(f"\nscreenshots: {where}")
    return where


@pytest.fixture
async def browser():
    async with playwright_api.async_playwright() as playwright:
        chromium = await playwright.chromium.launch(
            executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu", "--disable-background-networking"]
        )
        try:
            yield chromium
        finally:
            await chromium.close()


class Session:
    """A page with its console watched and its screenshots numbered."""

    def __init__(self, page, screens: Path):
        self.page = page
        self.screens = screens
        self.errors: list[str] = []
        page.on("console", lambda message: message.type == "error" and self.errors.append(message.text))
        page.on("pageerror", lambda error: self.errors.append(f"uncaught: {error}"))

    async def shot(self, name: str) -> None:
        await self.page.screenshot(path=str(self.screens / f"{name}.png"), full_page=True)

    def expect_http_error(self, status: int) -> None:
        """Exactly one HTTP error answer of this status was reported in the console: take it out."""
        expected = [e for e in self.errors if e.startswith(HTTP_ERROR) and f" {status} " in e]
        assert len(expected) == 1, f"expected one {status} answer in the console, saw {self.errors}"
        self.errors.remove(expected[0])

    async def go(self, section: str) -> None:
        await self.page.get_by_role("navigation").get_by_role("link", name=section).click()

    async def heading(self, text: str) -> None:
        await self.page.get_by_role("heading", level=1, name=text).wait_for()


async def open_session(browser, screens, base_url, color_scheme="light") -> Session:
    context = await browser.new_context(viewport={"width": 1280, "height": 860}, color_scheme=color_scheme)
    context.set_default_timeout(10_000)
    session = Session(await context.new_page(), screens)
    await session.page.goto(f"{base_url}/dashboard")
    return session


async def sign_in(session: Session, token: str = API_TOKEN) -> None:
    await session.page.get_by_label("API token").fill(token)
    await session.page.get_by_role("button", name="Sign in").click()


async def test_an_operator_finds_a_customer_and_retries_a_failed_event(dashboard, browser, screens, conn):
    session = await open_session(browser, screens, dashboard)
    page = session.page
    await page.get_by_role("heading", name="Sign in").wait_for()
    await session.shot("01-sign-in")

    await sign_in(session)
    await session.heading("Overview")
    await page.locator(".banner.failing").wait_for()
    assert await page.locator(".figure.bad .value").inner_text() == "1"
    await page.locator(".chart svg rect.received").first.wait_for()
    await session.shot("02-overview")

    # Customers: search by a name prefix, in any case.
    await session.go("Customers")
    await page.get_by_role("searchbox").fill("ADA")
    await page.get_by_role("button", name="Search").click()
    # The list of every customer shows first; wait for the search's own answer.
    await page.get_by_text("Id, email or name starting with “ADA”").wait_for()
    assert "#/customers?q=ADA" in page.url
    assert await page.locator("tbody tr").count() == 2
    await session.shot("03-customer-search")

    await page.get_by_role("link", name="Ada Lovelace").click()
    await session.heading("Ada Lovelace")
    timeline = page.locator("section", has=page.get_by_role("heading", name="Billing timeline"))
    await timeline.get_by_text("Invoice paid").wait_for()
    assert await timeline.get_by_text("$147.00").count() >= 1
    assert "trialing" in await timeline.inner_text() and "active" in await timeline.inner_text()
    assert await page.locator("time").first.get_attribute("title")  # the exact time on hover
    await session.shot("04-customer-timeline")

    # Events: the failed one, its payload and error, and a retry.
    await session.go("Overview")
    await page.locator("a.figure.bad").click()
    await session.heading("Events")
    assert "status=failed" in page.url
    await session.shot("05-failed-events")
    await page.get_by_role("link", name="customer.subscription.updated").click()
    await page.locator(".error-box").wait_for()
    assert "pending_activation" in await page.locator(".json").inner_text()
    await session.shot("06-failed-event")
    event_id = page.url.rsplit("/", 1)[1]
    await page.get_by_role("button", name="Retry this event").click()
    await page.get_by_text("Queued for retry").wait_for()
    assert await page.locator(".badge.pending").count() == 1
    assert await conn.fetchval("SELECT status FROM stripe_events WHERE id = $1", event_id) == "pending"
    await session.shot("07-event-retried")

    # Segments: follow a member to its customer page.
    await session.go("Segments")
    await page.get_by_role("link", name="Past Due Subscriptions").click()
    await session.heading("Past Due Subscriptions")
    await page.get_by_role("link", name="Alan Turing").wait_for()
    await session.shot("08-segment-members")
    await page.get_by_role("link", name="Alan Turing").click()
    await session.heading("Alan Turing")
    await session.shot("09-segment-member")

    assert session.errors == []


async def test_links_are_real_and_state_lives_in_the_url(dashboard, browser, screens):
    session = await open_session(browser, screens, dashboard)
    await sign_in(session)
    page = session.page
    await session.heading("Overview")
    for name in ("Overview", "Segments", "Customers", "Events"):
        link = page.get_by_role("navigation").get_by_role("link", name=name)
        assert (await link.get_attribute("href")).startswith("#/")
    # A shared URL opens the same view, filters included; the keyboard reaches the links.
    await page.goto(f"{dashboard}/dashboard#/events?status=processed&type=invoice.*")
    await session.heading("Events")
    assert await page.locator("select[name=status]").input_value() == "processed"
    types = await page.locator("tbody tr td:nth-child(2) a").all_inner_texts()
    assert types and all(t.startswith("invoice.") for t in types)
    await page.reload()
    await session.heading("Events")
    reached = []
    for _ in range(5):
        await page.keyboard.press("Tab")
        reached.append(await page.evaluate("document.activeElement.getAttribute('href')"))
    assert reached == ["#/", "#/", "#/segments", "#/customers", "#/events"]
    await page.keyboard.press("Enter")  # on Events: the list without the filters
    await page.wait_for_url("**/dashboard#/events")
    await page.locator("tbody tr").nth(20).wait_for()
    assert session.errors == []


async def test_empty_and_error_states_show_where_the_user_looks(dashboard, browser, screens):
    session = await open_session(browser, screens, dashboard, color_scheme="dark")
    page = session.page
    await sign_in(session, "not-the-token")
    await page.get_by_role("alert").get_by_text("That token is not accepted.").wait_for()
    session.expect_http_error(401)
    await session.shot("10-sign-in-refused-dark")

    await sign_in(session)
    await session.heading("Overview")
    await page.locator(".chart").wait_for()
    await session.shot("11-overview-dark")

    await page.goto(f"{dashboard}/dashboard#/customers?q=nobody-here")
    await page.get_by_text("No customer's id, email or name starts with “nobody-here”.").wait_for()
    await session.shot("12-search-empty-dark")

    await page.goto(f"{dashboard}/dashboard#/customers/cus_unknown")
    await page.get_by_role("alert").get_by_text("No customer with id cus_unknown.").wait_for()
    session.expect_http_error(404)
    await session.shot("13-unknown-customer-dark")
    assert session.errors == []
