"""A simulated Stripe account: event streams as Stripe sends them, and the final truth.

Customers sign up, subscribe (with or without a trial), change quantity, price and
cancel_at_period_end, get discounts, fail and recover payments, pause, cancel, and some are
deleted (Stripe cancels their subscriptions; a refund of an old charge may still come later);
the catalog changes; now and then `stripeline backfill` lists an object (a synthetic snapshot
event, as app/commands/backfill.py stores it). Each action emits the events Stripe emits, in Stripe's order, with Stripe's
same-second bursts (a subscription's creation, its first invoice's creation, finalization and
payment, the charge, the invoice payment and the customer's currency all share a second) and
`previous_attributes` on every `*.updated` event. Each customer uses one API version shape.

The account keeps the final state of every object, which is the truth the model must reach.
One thing Stripe may do that the account never does: bring an object back, within one second,
to a state it already had in that second (app/model/ordering.py explains why nothing can order
that from the payloads); it moves to the next second instead.
"""

from __future__ import annotations

import copy
import random
from dataclasses import dataclass, field
from typing import Any

import orjson

from tests import factories as f

MONTH = 30 * 86400
# What Stripe does on its own, not in answer to an API request.
AUTOMATIC_EVENTS = frozenset({"customer.subscription.trial_will_end", "invoice.payment_failed", "charge.failed"})


@dataclass
class Account:
    rng: random.Random
    clock: int
    # Probability that an action starts a new second (else it shares the current one).
    new_second: float = 0.4
    # Share of actions that sign up a new customer (while fewer than max_customers).
    new_customers: float = 0.12
    max_customers: int = 10**9
    # How far the clock jumps when it moves (seconds).
    jumps: tuple[int, ...] = (1, 1, 1, 2, 5, 3600)
    api_versions: tuple[str, ...] = (f.OLD_API_VERSION, f.NEW_API_VERSION)
    events: list[dict[str, Any]] = field(default_factory=list)
    objects: dict[str, dict[str, Any]] = field(default_factory=dict)
    customers: list[str] = field(default_factory=list)
    subscriptions: list[str] = field(default_factory=list)
    prices: list[str] = field(default_factory=list)
    products: list[str] = field(default_factory=list)
    version_of: dict[str, str] = field(default_factory=dict)  # customer -> API version
    owner: dict[str, str] = field(default_factory=dict)  # subscription -> customer
    open_invoice: dict[str, str] = field(default_factory=dict)  # subscription -> unpaid invoice
    discount_of: dict[str, str] = field(default_factory=dict)  # subscription -> discount
    deleted: set[str] = field(default_factory=set)  # invoices and discounts deleted
    gone: set[str] = field(default_factory=set)  # customers deleted in Stripe
    present: list[str] = field(default_factory=list)  # customers not deleted
    subscriptions_of: dict[str, list[str]] = field(default_factory=dict)  # customer -> its subscriptions
    refundable: list[str] = field(default_factory=list)  # succeeded charges not refunded yet
    # States each object had in the current second (an object never returns to one of them).
    _seen: dict[str, tuple[int, set[bytes]]] = field(default_factory=dict)
    _counter: int = 0

    # --- plumbing -------------------------------------------------------------------------

    def _next(self) -> int:
        self._counter += 1
        return self._counter

    def _id(self, prefix: str, width: int = 24) -> str:
        """An id as long as Stripe's (14 characters after `cus_` or `si_`, 24 after `sub_` or
        `in_`): a counter, for uniqueness, then random digits."""
        body = f"{self._next():x}{self.rng.getrandbits(4 * width):0{width}x}"
        return f"{prefix}_{body[:width]}"

    def tick(self, seconds: int = 1) -> None:
        self.clock += seconds

    def maybe_tick(self) -> None:
        if self.rng.random() < self.new_second:
            self.tick(self.rng.choice(self.jumps))

    def _fingerprint(self, obj: dict[str, Any]) -> bytes:
        return orjson.dumps(obj, option=orjson.OPT_SORT_KEYS)

    def _remember(self, obj: dict[str, Any]) -> None:
        second, seen = self._seen.get(obj["id"], (None, set()))
        if second != self.clock:
            # The state the object entered this second with counts as seen in it.
            earlier = self.objects.get(obj["id"])
            seen = {self._fingerprint(self._render(f.json_copy(earlier)))} if earlier is not None else set()
        seen.add(self._fingerprint(obj))
        self._seen[obj["id"]] = (self.clock, seen)

    def _fresh_in_this_second(self, obj: dict[str, Any]) -> bool:
        second, seen = self._seen.get(obj["id"], (None, set()))
        if second != self.clock:
            earlier = self.objects.get(obj["id"])
            return earlier is None or self._fingerprint(self._render(f.json_copy(earlier))) != self._fingerprint(obj)
        return self._fingerprint(obj) not in seen

    def _render(self, obj: dict[str, Any]) -> dict[str, Any]:
        """Stripe renders expanded objects as they are when the event is made."""
        if obj.get("object") == "subscription":
            version = self.version_of.get(obj["customer"], f.NEW_API_VERSION)
            for item in obj["items"]["data"]:
                if "price" in item:
                    item["price"] = f.price_in_version(self.objects[item["price"]["id"]], version)
                    if "plan" in item:
                        item["plan"] = f.plan_from_price(item["price"], version)
            if "plan" in obj and obj["items"]["data"]:
                obj["plan"] = copy.deepcopy(obj["items"]["data"][0].get("plan"))
        elif obj.get("object") == "invoice":
            # The customer's details are copied in when the invoice is made.
            customer = self.objects.get(obj.get("customer")) if obj["id"] not in self.objects else None
            f.rendered_invoice(obj, customer)
        return obj

    def emit(self, type: str, obj: dict[str, Any], previous: dict[str, Any] | None = None,
             api_version: str = f.NEW_API_VERSION) -> None:
        obj = self._render(f.json_copy(obj))
        self._remember(obj)
        self.objects[obj["id"]] = f.json_copy(obj)
        bits = self.rng.getrandbits(64)
        # Events of one action in one second share the API request that caused them; Stripe's
        # own reminders and retries name none.
        owner = obj.get("customer") or obj.get("invoice") or obj["id"]
        request = None if type in AUTOMATIC_EVENTS else f.api_request(f"{self.clock}:{owner}")
        self.events.append(
            f.event(type, f.json_copy(obj), created=self.clock, previous_attributes=f.json_copy(previous),
                    api_version=api_version, id=f.derived("evt", f"{bits:016x}"), request=request)
        )

    def update(self, type: str, object_id: str, api_version: str, **changes: Any) -> dict[str, Any]:
        """Emit a `*.updated`-like event for `changes`, in a later second if the new state
        was already seen in this one."""
        after, previous = f.changed(self.objects[object_id], **changes)
        after = self._render(after)
        if not self._fresh_in_this_second(after):
            self.tick()
        self.emit(type, after, previous, api_version)
        return after

    def notify(self, type: str, object_id: str, api_version: str, **changes: Any) -> dict[str, Any]:
        """Emit an event without previous_attributes (finalized, paid, paused, ...)."""
        after, _ = f.changed(self.objects[object_id], **changes)
        after = self._render(after)
        if changes and not self._fresh_in_this_second(after):
            self.tick()
        self.emit(type, after, None, api_version)
        return after

    # --- catalog --------------------------------------------------------------------------

    def new_price(self, *, own_events: bool = True) -> str:
        product = f.product_object(self._id("prod", 14), name=f"Plan {self._next()}",
                                   created=self.clock)
        interval, count = self.rng.choice((("month", 1), ("month", 1), ("year", 1), ("week", 2), ("day", 30),
                                           ("month", 3)))
        price = f.price_object(self._id("price"), product=product["id"],
                               unit_amount=self.rng.choice((500, 999, 1000, 2900, 4900, 12000)), interval=interval,
                               interval_count=count, nickname=f"nick {self._next()}", created=self.clock)
        self.products.append(product["id"])
        self.prices.append(price["id"])
        if own_events:
            self.emit("product.created", product)
            self.emit("price.created", price)
        else:
            self.objects[product["id"]] = product
            self.objects[price["id"]] = price
        return price["id"]

    def rename_price(self) -> None:
        price_id = self.rng.choice(self.prices)
        self.tick()  # one change per price per second: prices are ordered context-free
        self.update("price.updated", price_id, f.NEW_API_VERSION, nickname=f"nick {self._next()}")

    def rename_product(self) -> None:
        product_id = self.rng.choice(self.products)
        self.tick()
        self.update("product.updated", product_id, f.NEW_API_VERSION, name=f"Plan {self._next()}")

    # --- customers ------------------------------------------------------------------------

    def new_customer(self) -> str:
        version = self.rng.choice(self.api_versions)
        n = self._next()
        customer = f.customer_object(self._id("cus", 14), email=f"user{n}@example.com",
                                     name=f"User {n}", created=self.clock, api_version=version,
                                     address=f.address() if self.rng.random() < 0.5 else None)
        self.customers.append(customer["id"])
        self.present.append(customer["id"])
        self.version_of[customer["id"]] = version
        self.emit("customer.created", customer, api_version=version)
        return customer["id"]

    def update_customer(self, customer_id: str) -> None:
        version = self.version_of[customer_id]
        n = self._next()
        change = self.rng.choice(("email", "name", "phone", "metadata", "delinquent"))
        current = self.objects[customer_id]
        values = {
            "email": f"user{n}@example.org",
            "name": f"Renamed {n}",
            "phone": f"+1555{n:07d}",
            "metadata": {**current["metadata"], "crm": f"c{n}"},
            "delinquent": not current["delinquent"],
        }
        self.update("customer.updated", customer_id, version, **{change: values[change]})

    # --- subscriptions --------------------------------------------------------------------

    def subscribe(self, customer_id: str) -> str:
        version = self.version_of[customer_id]
        if not self.prices:
            self.new_price(own_events=self.rng.random() < 0.5)
        price = self.objects[self.rng.choice(self.prices)]
        trial = self.rng.random() < 0.4
        n = self._next()
        sub_id = self._id("sub")
        quantity = self.rng.randint(1, 5)
        period = (self.clock, self.clock + MONTH)
        sub = f.subscription_object(
            customer_id, [(price, quantity)], id=sub_id, status="trialing" if trial else "incomplete",
            created=self.clock, trial_start=self.clock if trial else None,
            trial_end=self.clock + 14 * 86400 if trial else None, period=period, currency=price["currency"],
            item_ids=[self._id("si", 14)], api_version=version,
        )
        self.subscriptions.append(sub_id)
        self.subscriptions_of.setdefault(customer_id, []).append(sub_id)
        self.owner[sub_id] = customer_id
        self.emit("customer.subscription.created", sub, api_version=version)
        if self.objects[customer_id].get("currency") is None:
            self.update("customer.updated", customer_id, version, currency=price["currency"])
        amount = 0 if trial else price["unit_amount"] * quantity
        invoice_id = self._invoice(customer_id, sub_id, amount, version)
        if not trial:
            self._pay(customer_id, invoice_id, version)
            self.update("customer.subscription.updated", sub_id, version, status="active")
        return sub_id

    def _invoice(self, customer_id: str, sub_id: str, amount: int, version: str) -> str:
        n = self._next()
        invoice = f.invoice_object(customer_id, subscription=sub_id, id=self._id("in"),
                                   amount_due=amount, currency="usd", created=self.clock, api_version=version,
                                   number=None, line_description=f"{amount} for {sub_id}")
        self.emit("invoice.created", invoice, api_version=version)
        self.notify("invoice.finalized", invoice["id"], version, status="open", number=f"INV-{n}",
                    status_transitions={**invoice["status_transitions"], "finalized_at": self.clock})
        if amount == 0:
            self._mark_paid(invoice["id"], version, charge=None)
        else:
            self.open_invoice[sub_id] = invoice["id"]
        return invoice["id"]

    def _mark_paid(self, invoice_id: str, version: str, charge: str | None) -> None:
        invoice = self.objects[invoice_id]
        changes = {
            "status": "paid",
            "amount_paid": invoice["amount_due"],
            "amount_remaining": 0,
            "status_transitions": {**invoice["status_transitions"], "paid_at": self.clock},
            "next_payment_attempt": None,
        }
        if not f.is_basil(version):
            changes.update(paid=True, charge=charge)
        after, previous = f.changed(invoice, **changes)
        if not self._fresh_in_this_second(after):
            self.tick()
        # Both notifications carry the same state; sometimes Stripe reports it as
        # invoice.updated too, anywhere among them.
        kinds = ["invoice.paid", "invoice.payment_succeeded"]
        self.rng.shuffle(kinds)
        if self.rng.random() < 0.5:
            kinds.insert(self.rng.randint(0, 2), "invoice.updated")
        for kind in kinds:
            self.emit(kind, after, previous if kind == "invoice.updated" else None, version)
        for sub_id, open_id in list(self.open_invoice.items()):
            if open_id == invoice_id:
                del self.open_invoice[sub_id]

    def _pay(self, customer_id: str, invoice_id: str, version: str) -> None:
        invoice = self.objects[invoice_id]
        n = self._next()
        charge = f.charge_object(customer_id, amount=invoice["amount_due"], id=self._id("ch"),
                                 invoice=invoice_id, created=self.clock, api_version=version,
                                 description="Subscription update")
        self.emit("charge.succeeded", charge, api_version=version)
        self.refundable.append(charge["id"])
        self._mark_paid(invoice_id, version, charge["id"])
        if f.is_basil(version):
            payment = f.invoice_payment_object(invoice_id, amount=invoice["amount_due"], paid_at=self.clock,
                                               id=self._id("inpay"), created=self.clock)
            self.emit("invoice_payment.paid", payment, api_version=version)

    def _live(self, statuses: tuple[str, ...]) -> list[str]:
        return [s for s in self.subscriptions if self.objects[s]["status"] in statuses]

    def change_subscription(self, sub_id: str) -> None:
        sub = self.objects[sub_id]
        version = self.version_of[self.owner[sub_id]]
        what = self.rng.choice(("quantity", "price", "cancel_at_period_end", "metadata"))
        if what in ("quantity", "price"):
            items = copy.deepcopy(sub["items"])
            item = items["data"][0]
            if what == "quantity":
                item["quantity"] = item.get("quantity", 1) + self.rng.randint(1, 3)
            else:
                if len(self.prices) < 2 or self.rng.random() < 0.3:
                    self.new_price(own_events=self.rng.random() < 0.5)
                price = self.objects[self.rng.choice([p for p in self.prices if p != _price_id(item)] or self.prices)]
                item["price"] = copy.deepcopy(price)
                item["plan"] = f.plan_from_price(price)
            changes: dict[str, Any] = {"items": items}
            if "plan" in sub:
                changes.update(plan=item["plan"], quantity=item.get("quantity"))
            self.update("customer.subscription.updated", sub_id, version, **changes)
        elif what == "cancel_at_period_end":
            flag = not sub["cancel_at_period_end"]
            end = sub.get("current_period_end") or sub["items"]["data"][0].get("current_period_end")
            self.update("customer.subscription.updated", sub_id, version, cancel_at_period_end=flag,
                        cancel_at=end if flag else None)
        else:
            self.update("customer.subscription.updated", sub_id, version,
                        metadata={**sub["metadata"], "seats": str(self._next())})

    def end_trial(self, sub_id: str) -> None:
        sub = self.objects[sub_id]
        customer_id = self.owner[sub_id]
        version = self.version_of[customer_id]
        item = sub["items"]["data"][0]
        price = self.objects.get(_price_id(item)) or item.get("price") or item["plan"]
        amount = (price.get("unit_amount") or price.get("amount") or 0) * (item.get("quantity") or 1)
        invoice_id = self._invoice(customer_id, sub_id, amount, version)
        if amount:
            self._pay(customer_id, invoice_id, version)
        self.update("customer.subscription.updated", sub_id, version, status="active")

    def fail_payment(self, sub_id: str) -> None:
        customer_id = self.owner[sub_id]
        version = self.version_of[customer_id]
        sub = self.objects[sub_id]
        item = sub["items"]["data"][0]
        price = item.get("price") or item["plan"]
        amount = (price.get("unit_amount") or price.get("amount") or 100) * (item.get("quantity") or 1)
        invoice_id = self.open_invoice.get(sub_id) or self._invoice(customer_id, sub_id, amount or 100, version)
        invoice = self.objects[invoice_id]
        n = self._next()
        charge = f.charge_object(customer_id, amount=invoice["amount_due"], status="failed",
                                 id=self._id("ch"), invoice=invoice_id,
                                 failure_code="card_declined", created=self.clock, api_version=version)
        self.emit("charge.failed", charge, api_version=version)
        changes = {"attempt_count": invoice["attempt_count"] + 1, "attempted": True,
                   "next_payment_attempt": self.clock + 3 * 86400}
        self.notify("invoice.payment_failed", invoice_id, version, **changes)
        # ... and the same change as invoice.updated, with what it was before.
        after = self.objects[invoice_id]
        self.emit("invoice.updated", after, {k: invoice.get(k) for k in changes}, version)
        if sub["status"] == "active":
            self.update("customer.subscription.updated", sub_id, version, status="past_due")

    def recover(self, sub_id: str) -> None:
        customer_id = self.owner[sub_id]
        version = self.version_of[customer_id]
        invoice_id = self.open_invoice.get(sub_id)
        if invoice_id:
            self._pay(customer_id, invoice_id, version)
        self.update("customer.subscription.updated", sub_id, version, status="active")

    def pause(self, sub_id: str) -> None:
        version = self.version_of[self.owner[sub_id]]
        paused = self.objects[sub_id]["status"] != "paused"
        status = "paused" if paused else "active"
        self.update("customer.subscription.updated", sub_id, version, status=status)
        self.emit("customer.subscription.paused" if paused else "customer.subscription.resumed",
                  self.objects[sub_id], None, version)

    def trial_will_end(self, sub_id: str) -> None:
        version = self.version_of[self.owner[sub_id]]
        self.emit("customer.subscription.trial_will_end", self.objects[sub_id], None, version)

    def cancel(self, sub_id: str) -> None:
        version = self.version_of[self.owner[sub_id]]
        self.notify("customer.subscription.deleted", sub_id, version, status="canceled", canceled_at=self.clock,
                    ended_at=self.clock)

    def add_discount(self, sub_id: str) -> None:
        customer_id = self.owner[sub_id]
        version = self.version_of[customer_id]
        n = self._next()
        coupon = (f.coupon_object(f"co_{n}", percent_off=self.rng.choice((10, 25, 50)))
                  if self.rng.random() < 0.6
                  else f.coupon_object(f"co_{n}", amount_off=self.rng.choice((100, 500)), currency="usd"))
        discount = f.discount_object(customer_id, coupon, subscription=sub_id,
                                     id=self._id("di"), start=self.clock)
        self.discount_of[sub_id] = discount["id"]
        self.emit("customer.discount.created", discount, api_version=version)
        changes: dict[str, Any] = {"discounts": [discount["id"]]}
        if not f.is_basil(version):
            changes["discount"] = discount
        self.update("customer.subscription.updated", sub_id, version, **changes)

    def remove_discount(self, sub_id: str) -> None:
        customer_id = self.owner[sub_id]
        version = self.version_of[customer_id]
        discount_id = self.discount_of.pop(sub_id)
        self.deleted.add(discount_id)
        self.emit("customer.discount.deleted", self.objects[discount_id], api_version=version)
        changes: dict[str, Any] = {"discounts": []}
        if not f.is_basil(version):
            changes["discount"] = None
        self.update("customer.subscription.updated", sub_id, version, **changes)

    def refund(self) -> None:
        if not self.refundable:
            return
        charge = self.objects[self.refundable.pop(self.rng.randrange(len(self.refundable)))]
        version = self.version_of[charge["customer"]]
        self.notify("charge.refunded", charge["id"], version, amount_refunded=charge["amount"], refunded=True)

    def draft_deleted(self, customer_id: str) -> None:
        version = self.version_of[customer_id]
        n = self._next()
        invoice = f.invoice_object(customer_id, id=self._id("in"), amount_due=700,
                                   created=self.clock, api_version=version, billing_reason="manual")
        self.emit("invoice.created", invoice, api_version=version)
        self.update("invoice.updated", invoice["id"], version, description=f"Consulting {n}")
        self.maybe_tick()
        self.notify("invoice.deleted", invoice["id"], version)
        self.deleted.add(invoice["id"])

    def delete_customer(self, customer_id: str) -> None:
        """Stripe cancels the customer's live subscriptions at once, then deletes it."""
        version = self.version_of[customer_id]
        for sub_id in self.subscriptions_of.get(customer_id, []):
            if self.objects[sub_id]["status"] not in ("canceled", "incomplete_expired"):
                self.cancel(sub_id)
        self.emit("customer.deleted", self.objects[customer_id], api_version=version)
        self.gone.add(customer_id)
        self.present.remove(customer_id)

    def snapshot(self) -> None:
        """`stripeline backfill` lists a live object: a synthetic `*.updated` event of its current
        state, dated when the listing started, with the id app/commands/backfill.py gives it."""
        kinds = {"customer": "customer.updated", "subscription": "customer.subscription.updated",
                 "invoice": "invoice.updated", "price": "price.updated", "product": "product.updated"}

        def listable(obj: dict[str, Any]) -> bool:
            return (obj.get("object") in kinds and obj["id"] not in self.deleted and obj["id"] not in self.gone
                    and obj.get("customer") not in self.gone)

        ids = list(self.objects)  # insertion order: the same choice for the same seed
        candidates = (self.objects[ids[self.rng.randrange(len(ids))]] for _ in range(50))
        obj = next((o for o in candidates if listable(o)), None)
        if obj is None:
            return
        self.tick()  # a listing starts on a second of its own (one snapshot per object and second)
        version = self.version_of.get(obj.get("customer") or obj["id"], f.NEW_API_VERSION)
        self.emit(kinds[obj["object"]], obj, None, version)
        self.events[-1]["id"] = f"evt_backfill_{obj['id']}_{self.clock}"
        self.events[-1]["pending_webhooks"] = 0

    # --- a whole stream -------------------------------------------------------------------

    def act(self) -> None:
        """One random action of a random customer (or of the catalog)."""
        self.maybe_tick()
        roll = self.rng.random()
        if not self.customers or (roll < self.new_customers and len(self.customers) < self.max_customers):
            customer_id = self.new_customer()
            if self.rng.random() < 0.7:
                self.subscribe(customer_id)
            return
        roll = self.rng.random()  # what an existing customer, or the catalog, does
        if roll < 0.045 and self.prices:
            self.rng.choice((self.rename_price, self.rename_product))()
            return
        present = self.present
        if roll < 0.052 and len(present) > 1:
            self.delete_customer(self.rng.choice(present))
            return
        if roll < 0.08:
            self.snapshot()
            return
        if not present:
            return
        customer_id = self.rng.choice(present)
        subs = self.subscriptions_of.get(customer_id, [])
        live = [s for s in subs if self.objects[s]["status"] not in ("canceled", "incomplete_expired")]
        if not live:
            self.rng.choice((self.subscribe, self.update_customer, self.draft_deleted))(customer_id)
            return
        sub_id = self.rng.choice(live)
        status = self.objects[sub_id]["status"]
        options = [self.change_subscription, self.change_subscription, self.cancel, self.refund_for]
        if status == "trialing":
            options += [self.end_trial, self.end_trial, self.trial_will_end]
        if status == "active":
            options += [self.fail_payment, self.pause]
        if status == "past_due":
            options += [self.recover, self.recover, self.fail_payment]
        if status == "paused":
            options += [self.pause]
        if status in ("active", "trialing", "past_due"):
            options += [self.remove_discount if sub_id in self.discount_of else self.add_discount]
        options += [lambda _: self.update_customer(customer_id)]
        self.rng.choice(options)(sub_id)

    def refund_for(self, sub_id: str) -> None:
        self.refund()


def _price_id(item: dict[str, Any]) -> str:
    return (item.get("price") or item["plan"])["id"]


def generate(seed: int, actions: int, *, start: int = 1_700_000_000, new_second: float = 0.4,
             api_versions: tuple[str, ...] | None = None, max_customers: int = 10**9,
             new_customers: float = 0.12) -> Account:
    """An account after `actions` random actions."""
    account = Account(random.Random(seed), start, new_second=new_second, max_customers=max_customers,
                      new_customers=new_customers)
    if api_versions:
        account.api_versions = api_versions
    for _ in range(actions):
        account.act()
    return account
