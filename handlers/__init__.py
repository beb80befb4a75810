"""Event handlers, wired in one explicit list: event type -> handler.

A handler is `async def on_<object>_<verb>(conn, event, ctx) -> None`. It reads and writes
PostgreSQL through `conn` inside the caller's transaction and never commits, enqueues or
calls the network. An event type missing here is stored and marked `ignored`.

The billing handlers are projections: they stage row snapshots on `ctx.writes`, written in one
flush per batch (handlers/writes.py) before the refreshers run.
"""

from __future__ import annotations

from app.processing import Handler, Refresher, Registry
from handlers import billing, catalog, customers, deletion, discounts, invoices, payments, segments, subscriptions

HANDLERS: dict[str, Handler] = {
    # Customers: the fields Encharge maps (email, name, phone, address, currency, delinquent).
    "customer.created": customers.on_customer_created,
    "customer.updated": customers.on_customer_updated,
    # Tombstone, then anonymize or delete the customer (STRIPELINE_DELETED_CUSTOMERS).
    "customer.deleted": deletion.on_customer_deleted,
    # Subscriptions: status drives every segment; items and prices drive MRR.
    "customer.subscription.created": subscriptions.on_subscription_created,
    "customer.subscription.updated": subscriptions.on_subscription_updated,
    "customer.subscription.deleted": subscriptions.on_subscription_deleted,
    # Paused subscriptions leave MRR and the Customers segment until resumed.
    "customer.subscription.paused": subscriptions.on_subscription_paused,
    "customer.subscription.resumed": subscriptions.on_subscription_resumed,
    # Carries the subscription as it is three days before the trial ends (a fresh snapshot).
    "customer.subscription.trial_will_end": subscriptions.on_subscription_trial_will_end,
    # Pending updates (price/quantity after payment) change MRR when applied, not when expired.
    "customer.subscription.pending_update_applied": subscriptions.on_subscription_pending_update_applied,
    "customer.subscription.pending_update_expired": subscriptions.on_subscription_pending_update_expired,
    # Invoices: paid amount and time give the last payment; created/paid/failed are on the timeline.
    "invoice.created": invoices.on_invoice_created,
    "invoice.finalized": invoices.on_invoice_finalized,
    "invoice.updated": invoices.on_invoice_updated,
    "invoice.paid": invoices.on_invoice_paid,
    "invoice.payment_succeeded": invoices.on_invoice_payment_succeeded,
    "invoice.payment_failed": invoices.on_invoice_payment_failed,
    "invoice.payment_action_required": invoices.on_invoice_payment_action_required,
    "invoice.voided": invoices.on_invoice_voided,
    "invoice.marked_uncollectible": invoices.on_invoice_marked_uncollectible,
    # Only drafts can be deleted; the row is kept, marked deleted, so late events cannot revive it.
    "invoice.deleted": invoices.on_invoice_deleted,
    # basil: the payments that settled an invoice (the payload names no customer).
    "invoice_payment.paid": payments.on_invoice_payment_paid,
    # Charges: money in, declined or returned; the last payment and the timeline.
    "charge.succeeded": payments.on_charge_succeeded,
    "charge.failed": payments.on_charge_failed,
    "charge.refunded": payments.on_charge_refunded,
    # The catalog: amounts and intervals for MRR, names for subscription items.
    "price.created": catalog.on_price_created,
    "price.updated": catalog.on_price_updated,
    "price.deleted": catalog.on_price_deleted,
    "product.created": catalog.on_product_created,
    "product.updated": catalog.on_product_updated,
    "product.deleted": catalog.on_product_deleted,
    # Legacy plans, stored as the price of the same id (older accounts still send them).
    "plan.created": catalog.on_plan_created,
    "plan.updated": catalog.on_plan_updated,
    "plan.deleted": catalog.on_plan_deleted,
    # Coupons applied to customers and subscriptions: a subscription's discount lowers its MRR.
    "customer.discount.created": discounts.on_discount_created,
    "customer.discount.updated": discounts.on_discount_updated,
    "customer.discount.deleted": discounts.on_discount_deleted,
}

# Run after the handlers of a batch, for every customer the batch touched, in this order.
REFRESHERS: list[Refresher] = [
    # The deletion policy first: lay the anonymization over (or purge) what this batch wrote for
    # customers deleted in Stripe, so that MRR and segments are computed from the result.
    deletion.settle_deletions,
    # MRR and last payment next: other derived state may read them.
    billing.refresh_billing,
    # Last: segments read what every other refresher (MRR, ...) has written.
    segments.refresh_customers,
]


def registry() -> Registry:
    """The product's registry: these handlers and refreshers, and the deletion policy's guard."""
    return Registry(
        handlers=HANDLERS, refreshers=tuple(REFRESHERS), prepare=deletion.load_tombstones, admit=deletion.admit_event
    )
