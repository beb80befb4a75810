"""The simulated stream (tests/simulation.py) weighs what Stripe's events weigh.

tests/data/real_event_sizes.json records the compact sizes of real events from public
repositories. A stream lighter than Stripe's would make every bench and every model test
friendlier than production; these tests fail when the factories or the simulation slim down.
"""

from __future__ import annotations

import json
import statistics
from collections import defaultdict
from pathlib import Path

import orjson
import pytest

from tests import factories as f
from tests.simulation import generate

REAL = json.loads((Path(__file__).parent / "data" / "real_event_sizes.json").read_text())["events"]
LOWEST, HIGHEST = 0.6, 1.6  # our median for a type over the real one's


@pytest.fixture(scope="module")
def stream() -> list[dict]:
    """Three accounts of about ten events per customer, as the benches generate them."""
    return [event for seed in (1, 2, 3) for event in generate(seed, 500, max_customers=50).events]


def size(payload: dict) -> int:
    return len(orjson.dumps(payload))


def test_median_event_is_at_least_3_5_kb_compact(stream):
    assert statistics.median(size(e) for e in stream) >= 3500


def test_every_event_type_weighs_within_0_6x_to_1_6x_of_the_real_ones(stream):
    real, ours = defaultdict(list), defaultdict(list)
    for row in REAL:
        real[row["type"]].append(row["bytes"])
    for payload in stream:
        ours[payload["type"]].append(size(payload))
    checked = sorted(real.keys() & ours.keys())
    ratios = {t: statistics.median(ours[t]) / statistics.median(real[t]) for t in checked}
    assert len(checked) >= 15, f"the stream lost event types: only {checked}"
    assert {t: round(r, 2) for t, r in ratios.items() if not LOWEST <= r <= HIGHEST} == {}


def test_each_api_version_has_its_own_shape(stream):
    subscriptions = {e["api_version"]: e["data"]["object"] for e in stream if e["type"].startswith("customer.sub")}
    invoices = {e["api_version"]: e["data"]["object"] for e in stream if e["type"] == "invoice.paid"}
    old, new = f.OLD_API_VERSION, f.NEW_API_VERSION
    assert "current_period_end" in subscriptions[old] and "current_period_end" not in subscriptions[new]
    assert "current_period_end" in subscriptions[new]["items"]["data"][0]
    assert {"price", "plan", "tax_amounts"} <= invoices[old]["lines"]["data"][0].keys()
    assert {"pricing", "parent", "taxes"} <= invoices[new]["lines"]["data"][0].keys()
    assert invoices[old]["subscription"] and invoices[new]["parent"]["subscription_details"]["subscription"]


@pytest.mark.parametrize("api_version", [f.OLD_API_VERSION, f.NEW_API_VERSION])
def test_a_price_change_sends_the_whole_items_list_back_and_weighs_about_4_8_kb(api_version):
    monthly, team = f.price_object(unit_amount=2900), f.price_object(unit_amount=4900)
    sub = f.subscription_object("cus_Q1b0Yi7UkcAh2A", [(monthly, 1)], api_version=api_version)
    items = f.json_copy(sub["items"])
    items["data"][0].update(price=team, plan=f.plan_from_price(team, api_version))
    after, previous = f.changed(sub, items=items, plan=items["data"][0]["plan"])
    payload = f.event("customer.subscription.updated", after, previous_attributes=previous, api_version=api_version,
                      request=f.api_request("price change"))
    assert previous["items"] == {"data": sub["items"]["data"]}
    assert 4300 <= size(payload) <= 5300
