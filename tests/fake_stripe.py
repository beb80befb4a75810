"""A local stand-in for Stripe's list endpoints, the only thing our tests fake.

`FakeStripe` serves /v1/customers, /v1/products, /v1/prices, /v1/subscriptions, /v1/invoices
and /v1/events from objects a test adds, paginated as Stripe does (newest first, `limit`,
`starting_after`, `has_more`; `status=all` for subscriptions, `created[gte]` for events). It
can answer an error status (429 with or without Retry-After, 500) or drop the connection for
the next requests to a resource, and records every request so tests can assert backoff and
resume. Runs http.server in a thread on 127.0.0.1 at a random port.
"""

from __future__ import annotations

import itertools
import socket
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlparse

import orjson

from tests import factories
from tests import stripe_objects as objects

API_KEY = "rk_test_fake_read_only"
RESOURCES = ("customers", "products", "prices", "subscriptions", "invoices", "events")
_serial = itertools.count(1)


def stripe_id(prefix: str) -> str:
    return f"{prefix}_fake{next(_serial):010d}"


@dataclass
class Fault:
    resource: str
    status: int | None  # None: drop the connection without answering
    times: int
    skip: int = 0  # matching requests to let through first
    retry_after: str | None = None


@dataclass
class Request:
    resource: str
    params: dict[str, str]
    answered: int | None  # the status sent, None when dropped


@dataclass
class FakeStripe:
    objects: dict[str, list[dict[str, Any]]] = field(default_factory=lambda: {r: [] for r in RESOURCES})
    faults: list[Fault] = field(default_factory=list)
    requests: list[Request] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _server: ThreadingHTTPServer | None = None

    # --- what tests use -----------------------------------------------------------

    @property
    def url(self) -> str:
        assert self._server is not None, "start() first"
        return f"http://127.0.0.1:{self._server.server_port}"

    def add(self, resource: str, obj: dict[str, Any]) -> dict[str, Any]:
        with self._lock:
            self.objects[resource].append(obj)
        return obj

    def fail(
        self, resource: str, status: int | None, *, times: int = 1, skip: int = 0, retry_after: str | None = None
    ) -> None:
        """The next `times` requests to `resource` (after `skip`) get `status`; None drops the connection."""
        with self._lock:
            self.faults.append(Fault(resource, status, times, skip, retry_after))

    def clear_faults(self) -> None:
        with self._lock:
            self.faults.clear()

    def requests_to(self, resource: str) -> list[Request]:
        with self._lock:
            return [r for r in self.requests if r.resource == resource]

    def start(self) -> FakeStripe:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self) -> None:  # noqa: N802 - http.server's name
                fake._answer(self)

            def log_message(self, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()

    # --- serving --------------------------------------------------------------------

    def _answer(self, handler: BaseHTTPRequestHandler) -> None:
        url = urlparse(handler.path)
        resource = url.path.removeprefix("/v1/")
        params = {key: values[-1] for key, values in parse_qs(url.query).items()}
        if handler.headers.get("Authorization") != f"Bearer {API_KEY}":
            self._send(handler, resource, params, 401, _error("invalid_request_error", "Invalid API Key provided"))
            return
        if resource not in RESOURCES:
            self._send(handler, resource, params, 404, _error("invalid_request_error", "Unrecognized request URL"))
            return
        fault = self._take_fault(resource)
        if fault is not None and fault.status is None:
            with self._lock:
                self.requests.append(Request(resource, params, None))
            handler.close_connection = True
            handler.request.shutdown(socket.SHUT_RDWR)
            return
        if fault is not None:
            kind = "rate_limit_error" if fault.status == 429 else "api_error"
            headers = {"Retry-After": fault.retry_after} if fault.retry_after is not None else {}
            self._send(handler, resource, params, fault.status, _error(kind, "scripted failure"), headers)
            return
        self._send(handler, resource, params, *self._page(resource, params))

    def _take_fault(self, resource: str) -> Fault | None:
        with self._lock:
            for fault in self.faults:
                if fault.resource != resource or fault.times <= 0:
                    continue
                if fault.skip > 0:
                    fault.skip -= 1
                    return None
                fault.times -= 1
                return fault
        return None

    def _page(self, resource: str, params: dict[str, str]) -> tuple[int, dict[str, Any]]:
        with self._lock:
            listed = list(self.objects[resource])
        if resource == "subscriptions" and params.get("status") != "all":
            listed = [s for s in listed if s.get("status") != "canceled"]  # Stripe's default
        if "created[gte]" in params:
            listed = [o for o in listed if o["created"] >= int(params["created[gte]"])]
        listed.sort(key=lambda o: (o["created"], o["id"]), reverse=True)
        limit = min(int(params.get("limit", 10)), 100)
        start = 0
        if "starting_after" in params:
            ids = [o["id"] for o in listed]
            if params["starting_after"] not in ids:
                return 400, _error("invalid_request_error", "No such object: starting_after")
            start = ids.index(params["starting_after"]) + 1
        data = listed[start : start + limit]
        return 200, {"object": "list", "url": f"/v1/{resource}", "has_more": start + limit < len(listed), "data": data}

    def _send(
        self,
        handler: BaseHTTPRequestHandler,
        resource: str,
        params: dict[str, str],
        status: int,
        body: dict[str, Any],
        headers: dict[str, str] | None = None,
    ) -> None:
        with self._lock:
            self.requests.append(Request(resource, params, status))
        raw = orjson.dumps(body)
        handler.send_response(status)
        handler.send_header("Content-Type", "application/json")
        handler.send_header("Content-Length", str(len(raw)))
        handler.send_header("Request-Id", f"req_{next(_serial)}")
        for name, value in (headers or {}).items():
            handler.send_header(name, value)
        handler.end_headers()
        handler.wfile.write(raw)


def _error(kind: str, message: str) -> dict[str, Any]:
    return {"error": {"type": kind, "message": message}}


# --- Stripe objects, shaped as the API returns them (basil, every field) --------------------


def product(**fields: Any) -> dict[str, Any]:
    return {**objects.product_object(stripe_id("prod"), name="Pro", created=int(time.time()) - 86400), **fields}


def price(product_id: str, **fields: Any) -> dict[str, Any]:
    created = int(time.time()) - 86400
    return {**objects.price_object(stripe_id("price"), product=product_id, unit_amount=2900, created=created), **fields}


def customer(created: int | None = None, **fields: Any) -> dict[str, Any]:
    cid = stripe_id("cus")
    created = created if created is not None else int(time.time()) - 86400
    base = objects.customer_object(cid, email=f"{cid}@example.com", name="Ada Lovelace", currency="usd",
                                   created=created)
    return {**base, **fields}


def subscription(customer_id: str, price_obj: dict[str, Any], status: str = "active", **fields: Any) -> dict[str, Any]:
    now = int(time.time())
    ended = now if status == "canceled" else None
    base = objects.subscription_object(
        customer_id, [(price_obj, 1)], id=stripe_id("sub"), status=status, created=now - 86400,
        period=(now - 86400, now + 29 * 86400), canceled_at=ended, ended_at=ended, item_ids=[stripe_id("si")],
    )
    return {**base, **fields}


def invoice(customer_id: str, subscription_id: str | None = None, **fields: Any) -> dict[str, Any]:
    now = int(time.time())
    base = objects.invoice_object(
        customer_id, subscription=subscription_id, id=stripe_id("in"), status="paid", amount_due=2900,
        amount_paid=2900, billing_reason="subscription_cycle", created=now - 3600, finalized_at=now - 3600,
        paid_at=now - 3500, line_description="1 × Pro (at $29.00 / month)",
    )
    return {**base, "period_start": now - 86400, "period_end": now, **fields}


def event(type: str, obj: dict[str, Any], created: int) -> dict[str, Any]:
    payload = factories.event(type, obj, created=created, id=stripe_id("evt"), api_version=objects.NEW_API_VERSION)
    payload["pending_webhooks"] = 0
    return payload
