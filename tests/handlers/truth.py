"""What the model must hold after a simulated account's stream: read from its final objects.

Computed from the account's objects alone, independently of the handlers, so that a state
reached by processing can be checked against what Stripe knows.
"""

from __future__ import annotations

import math
from datetime import datetime, timezone
from fractions import Fraction
from typing import Any

from tests.simulation import Account

PER_MONTH = {"day": Fraction(365, 12), "week": Fraction(52, 12), "month": Fraction(1), "year": Fraction(1, 12)}


def _at(value: int | None) -> datetime | None:
    return None if value is None else datetime.fromtimestamp(value, timezone.utc)


def _price(item: dict[str, Any]) -> dict[str, Any]:
    return item.get("price") or item["plan"]


def _terms(price: dict[str, Any]) -> tuple[int, str, int]:
    if price.get("object") == "plan":
        return price["amount"], price["interval"], price["interval_count"]
    return price["unit_amount"], price["recurring"]["interval"], price["recurring"]["interval_count"]


def discount_ids(sub: dict[str, Any]) -> list[str]:
    ids = set(sub.get("discounts") or [])
    if isinstance(sub.get("discount"), dict):
        ids.add(sub["discount"]["id"])
    return sorted(ids)


def subscription_mrr(account: Account, sub: dict[str, Any]) -> int:
    monthly, per_invoice = Fraction(0), None
    for item in sub["items"]["data"]:
        amount, interval, count = _terms(_price(item))
        factor = PER_MONTH[interval] / count
        monthly += amount * item.get("quantity", 1) * factor
        per_invoice = factor if per_invoice is None else min(per_invoice, factor)
    percent, amount_off = Fraction(0), 0
    for discount_id in discount_ids(sub):
        if discount_id in account.deleted:
            continue
        coupon = account.objects[discount_id]["coupon"]
        percent += Fraction(str(coupon["percent_off"] or 0))
        amount_off += coupon["amount_off"] or 0
    value = monthly * (1 - min(percent, 100) / 100) - amount_off * (per_invoice or 0)
    return max(0, math.floor(value + Fraction(1, 2)))


def customer_mrr(account: Account, customer_id: str) -> int:
    return sum(
        subscription_mrr(account, account.objects[s])
        for s in account.subscriptions
        if account.owner[s] == customer_id and account.objects[s]["status"] in ("active", "past_due")
    )


def last_payment(account: Account, customer_id: str) -> tuple | None:
    found = []
    for obj in account.objects.values():
        if obj.get("customer") != customer_id:
            continue
        if obj["object"] == "invoice" and obj["status"] == "paid" and obj["amount_paid"] > 0 \
                and obj["id"] not in account.deleted:
            description = obj.get("description") or obj["lines"]["data"][0]["description"]
            found.append((obj["status_transitions"]["paid_at"], 1, obj["id"], obj["amount_paid"], description))
        if obj["object"] == "charge" and obj["status"] == "succeeded" and not obj.get("invoice"):
            found.append((obj["created"], 0, obj["id"], obj["amount"], obj["description"]))
    if not found:
        return None
    at, _, payment_id, amount, description = max(found)
    return payment_id, amount, description, _at(at)


def _owner(account: Account, obj: dict[str, Any]) -> str | None:
    """The customer an object belongs to (an invoice payment's is its invoice's)."""
    if obj.get("object") == "customer":
        return obj["id"]
    if obj.get("object") == "invoice_payment":
        return account.objects.get(obj["invoice"], {}).get("customer")
    return obj.get("customer") if isinstance(obj.get("customer"), str) else None


def mismatches(account: Account, state: dict[str, list[dict[str, Any]]], mode: str = "anonymize") -> list[str]:
    """Every way the model state differs from the account's truth (empty when it holds).

    A customer deleted in Stripe is, in `anonymize` mode, kept without personal data (its
    subscriptions canceled, its history kept); in `delete` mode nothing of it is left.
    """
    rows = {table: {r["id"]: r for r in found} for table, found in state.items()}
    problems = []
    if mode == "delete":
        for table, found in rows.items():
            for key, row in found.items():
                obj = account.objects.get(key)
                owner = row.get("customer_id") or (obj and _owner(account, obj))
                if key in account.gone or owner in account.gone:
                    problems.append(f"{table}.{key} of a deleted customer is still there")
    # Catalog objects the stream showed (a price may exist only in Stripe, never sent to us).
    shown = set()
    for event in account.events:
        obj = event["data"]["object"]
        shown.add(obj["id"])
        if obj["object"] == "subscription":
            shown.update(_price(item)["id"] for item in obj["items"]["data"])

    def check(what: str, got: Any, want: Any) -> None:
        if got != want:
            problems.append(f"{what}: got {got!r}, want {want!r}")

    gone = account.gone if mode == "delete" else set()
    anonymous = account.gone if mode == "anonymize" else set()
    for customer_id in account.customers:
        if customer_id in gone:
            continue
        obj, row = account.objects[customer_id], rows["customers"].get(customer_id)
        if row is None:
            problems.append(f"{customer_id} missing")
            continue
        deleted = customer_id in anonymous
        check(f"{customer_id}.deleted_in_stripe", row["deleted_in_stripe"], deleted)
        for key in ("email", "name", "phone", "currency", "delinquent", "metadata"):
            want = ({} if key == "metadata" else None) if deleted and key not in ("currency", "delinquent") else obj[key]
            check(f"{customer_id}.{key}", row[key], want)
        check(f"{customer_id}.mrr", row["mrr"], customer_mrr(account, customer_id))
        paid = (row["last_payment_id"], row["last_payment_amount"], row["last_payment_description"],
                row["last_payment_at"])
        want = last_payment(account, customer_id) or (None, None, None, None)
        if deleted and want[0] is not None:
            want = (want[0], want[1], None, want[3])  # the merchant's free text may name the person
        check(f"{customer_id}.last_payment", paid, want)
    for sub_id in account.subscriptions:
        if account.owner[sub_id] in gone:
            continue
        obj, row = account.objects[sub_id], rows["subscriptions"].get(sub_id)
        if row is None:
            problems.append(f"{sub_id} missing")
            continue
        for key in ("status", "cancel_at_period_end", "metadata"):
            want = {} if key == "metadata" and account.owner[sub_id] in anonymous else obj[key]
            check(f"{sub_id}.{key}", row[key], want)
        check(f"{sub_id}.discount_ids", row["discount_ids"], discount_ids(obj))
        items = sorted((i["id"], _price(i)["id"], i.get("quantity", 1)) for i in obj["items"]["data"])
        got = sorted((i["id"], i["price_id"], i["quantity"]) for i in state["subscription_items"]
                     if i["subscription_id"] == sub_id)
        check(f"{sub_id}.items", got, items)
    for obj in account.objects.values():
        kind = obj.get("object")
        if _owner(account, obj) in gone:
            continue
        if kind == "invoice":
            row = rows["invoices"].get(obj["id"])
            want = (obj["status"], obj["amount_paid"], obj["attempt_count"], obj["id"] in account.deleted)
            got = row and (row["status"], row["amount_paid"], row["attempt_count"], row["deleted"])
            check(obj["id"], got, want)
        elif kind == "charge":
            row = rows["payments"].get(obj["id"])
            check(obj["id"], row and (row["status"], row["amount_refunded"]), (obj["status"], obj["amount_refunded"]))
        elif kind == "invoice_payment":
            row = rows["payments"].get(obj["id"])
            check(obj["id"], row and (row["invoice_id"], row["amount"]), (obj["invoice"], obj["amount_paid"]))
        elif kind == "discount":
            row = rows["discounts"].get(obj["id"])
            check(obj["id"], row and row["deleted"], obj["id"] in account.deleted)
        elif kind in ("price", "product") and obj["id"] not in shown:
            continue
        elif kind == "price":
            row = rows["prices"].get(obj["id"])
            check(obj["id"], row and (row["nickname"], row["unit_amount"]), (obj["nickname"], obj["unit_amount"]))
        elif kind == "product":
            row = rows["products"].get(obj["id"])
            check(obj["id"], row and row["name"], obj["name"])
    return problems
