"""stripeline.model.scrub: personal data goes, billing facts stay, the input is never modified."""

from __future__ import annotations

import copy

import orjson
from hypothesis import given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st

from stripeline.model.scrub import scrub_document, scrub_event, scrub_object
from tests.factories import event
from tests.personal_data import Person, charge, customer, invoice, stream, subscription


def leaks(value, person: Person) -> list[str]:
    text = orjson.dumps(value).decode()
    return [needle for needle in person.needles() if needle in text]


def test_every_event_of_the_stream_loses_its_personal_data():
    person = Person()
    for payload in stream(person):
        assert leaks(payload, person), payload["type"]  # there was something to scrub
        assert leaks(scrub_event(payload), person) == [], payload["type"]


def test_billing_facts_survive():
    person = Person()
    sub = scrub_object(subscription(person))
    item = sub["items"]["data"][0]
    assert (sub["status"], sub["customer"]) == ("active", person.customer_id)
    assert item["current_period_end"] == subscription(person)["items"]["data"][0]["current_period_end"]
    assert (item["price"]["unit_amount"], item["price"]["nickname"], item["quantity"]) == (2500, "Pro monthly", 3)
    inv = scrub_object(invoice(person))
    assert (inv["total"], inv["amount_paid"], inv["number"], inv["status"]) == (7500, 7500, "7A3C2E1B-0001", "paid")
    assert inv["lines"]["data"][0]["amount"] == 7500
    paid = scrub_object(charge(person))
    assert (paid["amount"], paid["status"], paid["payment_method_details"]["type"]) == (7500, "succeeded", "card")
    cus = scrub_object(customer(person))
    assert (cus["currency"], cus["delinquent"], cus["created"]) == ("gbp", False, customer(person)["created"])


def test_erased_fields_keep_their_shape():
    person = Person()
    cus = scrub_object(customer(person))
    assert cus["address"] == {"city": None, "country": None, "line1": None, "line2": None, "postal_code": None,
                              "state": None}
    assert cus["metadata"] == {}
    assert cus["invoice_settings"]["custom_fields"] == []
    assert scrub_object(invoice(person))["customer_tax_ids"] == []


def test_previous_attributes_of_an_update_are_scrubbed():
    person = Person()
    update = event("customer.updated", customer(person), previous_attributes={
        "email": "old@example.org", "address": {"line1": "Old Street"}, "metadata": {"note": "old"}})
    previous = scrub_event(update)["data"]["previous_attributes"]
    assert previous == {"email": None, "address": {"line1": None}, "metadata": {}}


def test_the_input_is_not_modified():
    person = Person()
    for payload in stream(person):
        original = copy.deepcopy(payload)
        scrub_event(payload)
        assert payload == original


def test_catalog_objects_are_left_alone():
    product = {"id": "prod_1", "object": "product", "name": "Pro", "description": "The pro plan",
               "metadata": {"a": "b"}}
    assert scrub_object(product) == product


def test_unknown_objects_lose_the_usual_personal_fields():
    session = {"id": "cs_1", "object": "checkout.session", "customer_details": {"email": "a@b.c", "name": "Ann"},
               "amount_total": 500}
    assert scrub_object(session) == {"id": "cs_1", "object": "checkout.session",
                                     "customer_details": {"email": None, "name": None}, "amount_total": 500}
    future = {"id": "x_1", "object": "some_future_object", "email": "a@b.c", "amount": 5}
    assert scrub_object(future) == {"id": "x_1", "object": "some_future_object", "email": None, "amount": 5}


def test_payment_method_details_are_erased_by_type():
    method = {"id": "pm_1", "object": "payment_method", "type": "link", "link": {"email": "a@b.c"},
              "billing_details": {"email": "a@b.c", "name": "Ann"}, "customer": "cus_1"}
    assert scrub_object(method) == {"id": "pm_1", "object": "payment_method", "type": "link", "link": {"email": None},
                                    "billing_details": {"email": None, "name": None}, "customer": "cus_1"}


def test_our_own_documents_lose_personal_fields_at_any_depth():
    message = {"segment": "customers", "customer": {"id": "cus_1", "email": "a@b.c", "name": "Ann"}}
    assert scrub_document(message) == {"segment": "customers", "customer": {"id": "cus_1", "email": None, "name": None}}


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3)
    | st.dictionaries(st.sampled_from(["object", "email", "name", "metadata", "type", "data", "card", "x"]) | st.text(
        max_size=5), inner, max_size=4),
    max_leaves=20,
)


@hypothesis_settings(max_examples=100, deadline=None)
@given(payload=st.dictionaries(st.sampled_from(["id", "type", "data", "object"]), json_values, max_size=4)
       | st.fixed_dictionaries({"object": st.just("event"), "data": st.fixed_dictionaries(
           {"object": json_values, "previous_attributes": json_values})}))
def test_any_payload_is_scrubbed_without_error_and_scrubbing_twice_changes_nothing(payload):
    once = scrub_event(payload)
    assert scrub_event(once) == once
