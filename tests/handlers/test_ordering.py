"""The same-second rule: which event of one object in one second came last, from payloads alone."""

from __future__ import annotations

import itertools

from stripeline.model.ordering import EXACT_LIMIT, Candidate, last_of, matches, restore


def state(**fields):
    return tuple(sorted(fields.items()))


def update(id, rank, before, after):
    """An `*.updated` event: previous attributes are the keys that changed."""
    previous = {k: before.get(k) for k in after if before.get(k) != after.get(k)}
    return Candidate(id, rank, dict(after), previous, state(**after), state(**before))


def notification(id, rank, obj):
    """An event without previous_attributes (finalized, paid, trial_will_end, ...)."""
    return Candidate(id, rank, dict(obj), None, state(**obj))


def winners_over_every_order(candidates):
    return {last_of(list(order)).id for order in itertools.permutations(candidates)}


def test_created_is_first_and_deleted_is_last_whatever_the_ids():
    created = notification("evt_z", 10, {"status": "incomplete"})
    updated = update("evt_m", 20, {"status": "incomplete"}, {"status": "active"})
    deleted = notification("evt_a", 90, {"status": "canceled"})
    assert winners_over_every_order([created, updated, deleted]) == {"evt_a"}
    assert winners_over_every_order([created, updated]) == {"evt_m"}


def test_a_chain_of_updates_is_followed_by_previous_attributes_not_by_id():
    s0, s1, s2, s3 = ({"quantity": q, "status": "active"} for q in (1, 2, 3, 4))
    chain = [update("evt_c", 20, s0, s1), update("evt_b", 20, s1, s2), update("evt_a", 20, s2, s3)]
    assert winners_over_every_order(chain) == {"evt_a"}


def test_an_attribute_set_back_is_ordered_when_another_event_of_the_second_anchors_it():
    created = notification("evt_9", 10, {"status": "trialing", "q": 1})
    a = {"status": "active", "q": 1}
    b = {"status": "past_due", "q": 1}
    first = update("evt_2", 20, {"status": "trialing", "q": 1}, a)
    away = update("evt_1", 20, a, b)
    back = update("evt_0", 20, b, a)
    assert winners_over_every_order([created, first, away, back]) == {"evt_0"}


def test_a_notification_with_the_state_of_an_update_does_not_jump_ahead_of_later_updates():
    s1, s2 = {"status": "paused", "m": 1}, {"status": "paused", "m": 2}
    paused_update = update("evt_b", 20, {"status": "active", "m": 1}, s1)
    paused = notification("evt_z", 20, s1)
    later = update("evt_a", 20, s1, s2)
    assert winners_over_every_order([paused_update, paused, later]) == {"evt_a"}


def test_invoice_payment_failed_and_its_update_agree_whichever_wins():
    finalized = notification("evt_f", 30, {"status": "open", "attempt_count": 0})
    failed_state = {"status": "open", "attempt_count": 1}
    failed = notification("evt_a", 31, failed_state)
    reported = update("evt_b", 31, {"status": "open", "attempt_count": 0}, failed_state)
    winners = winners_over_every_order([finalized, failed, reported])
    assert len(winners) == 1 and winners <= {"evt_a", "evt_b"}


def test_a_missing_link_still_gives_one_answer_for_every_order():
    s = [{"q": q} for q in range(4)]
    partial = [update("evt_1", 20, s[0], s[1]), update("evt_3", 20, s[2], s[3])]
    assert len(winners_over_every_order(partial)) == 1


def test_a_long_burst_beyond_the_exact_limit_ends_where_the_walk_of_states_ends():
    states = [{"q": q, "status": "active" if q % 2 else "paused"} for q in range(EXACT_LIMIT + 6)]
    burst = [update(f"evt_{9 - i % 10}{i:02d}", 20, a, b) for i, (a, b) in enumerate(zip(states, states[1:]))]
    last = burst[-1].id
    for rotation in range(0, len(burst), 3):
        assert last_of(burst[rotation:] + burst[:rotation]).id == last


def test_matches_reads_a_changed_hash_by_its_changed_keys():
    assert matches({"metadata": {"tier": None}}, {"metadata": {"plan": "x"}})
    assert not matches({"metadata": {"tier": "gold"}}, {"metadata": {"tier": "silver"}})
    assert matches({"status": "open"}, {"status": "open", "other": 1})


def test_restore_puts_back_what_previous_attributes_say_and_removes_added_hash_keys():
    after = {"status": "paid", "metadata": {"tier": "gold", "seats": "3"}, "cancel_at": 5}
    previous = {"status": "open", "metadata": {"tier": None, "seats": "2"}, "cancel_at": None}
    assert restore(after, previous) == {"status": "open", "metadata": {"seats": "2"}, "cancel_at": None}
