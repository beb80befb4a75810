"""Which of several events of one object in one second came last, from the payloads alone.

Stripe's `created` has one-second resolution and deliveries arrive in any order, so the
events of one object in one second must be ordered by what they prove. The rule, a pure
function of the SET of those events (so every arrival order converges on the same answer):

1. Rank first (a hard constraint). Each object's module gives every event a rank from its
   type and payload alone: a `*.created` first, a deletion last, invoice status only forward
   (draft < open < paid/void/uncollectible; within a status the event that enters it, e.g.
   `invoice.finalized`, first), a subscription in a final status (`canceled`,
   `incomplete_expired`) after every live one.
2. Within a rank, the order that the most evidence supports wins. Scoring the step A -> B:
   - B has `data.previous_attributes`: +1 when they match A's object on those keys (B's
     "before" is A's "after"), -1 when they do not;
   - B has none (e.g. `invoice.paid`): +1 when B's stored row equals A's (Stripe sends such
     notifications beside the `*.updated` carrying the same state), -1 when they differ inside
     one rank, 0 when B opens a new rank (it is the event that made the change).
   The best-scoring sequence of all the events is found exactly (a dynamic programme over
   subsets, per rank) for up to EXACT_LIMIT events of one rank, greedily beyond that.
3. Ties in score go to the larger event id.

What no rule can see: an attribute changed and changed back within one second, with no
other event of that second to anchor the chain, looks the same in both orders; the event id
decides. Events of earlier seconds are deliberately not consulted, so that the answer for one
second never depends on which events of another second have arrived.
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import groupby
from typing import Any

# Above this many events of one rank in one second, order greedily instead of exactly.
EXACT_LIMIT = 9


@dataclass(frozen=True, slots=True)
class Candidate:
    """One event of the object: its id, rank, payload object, previous attributes and row."""

    id: str
    rank: int
    obj: dict[str, Any]
    previous: dict[str, Any] | None
    state: Any  # what the event would write; equal states are the same state for us


def matches(previous: dict[str, Any], obj: dict[str, Any]) -> bool:
    """True when `obj` holds every value of `previous` (nested hashes compared key by key,
    as Stripe reports a changed metadata key alone)."""
    for key, before in previous.items():
        actual = obj.get(key)
        if isinstance(before, dict) and isinstance(actual, dict):
            if not matches(before, actual):
                return False
        elif before != actual:
            return False
    return True


def step_score(a: Candidate, b: Candidate, opens_rank: bool) -> int:
    """The evidence that `b` came right after `a` (see the module docstring)."""
    if b.previous:
        return 1 if matches(b.previous, a.obj) else -1
    if b.state == a.state:
        return 1
    return 0 if opens_rank else -1


def last_of(candidates: list[Candidate]) -> Candidate:
    """The event that came last among events of one object in one second."""
    unique = {c.id: c for c in candidates}
    ordered = sorted(unique.values(), key=lambda c: (c.rank, c.id))
    if len(ordered) == 1:
        return ordered[0]
    # Best score of a sequence that covers every group so far and ends with each event.
    ends: dict[str, tuple[int, Candidate]] = {}
    previous_group: list[Candidate] = []
    for _, members in groupby(ordered, key=lambda c: c.rank):
        group = list(members)
        entry = []
        for b in group:
            if previous_group:
                entry.append(max(ends[a.id][0] + step_score(a, b, True) for a in previous_group))
            else:
                entry.append(0)
        scores = _exact(group, entry) if len(group) <= EXACT_LIMIT else _greedy(group, entry)
        ends = {b.id: (score, b) for b, score in zip(group, scores)}
        previous_group = group
    best = max(ends.values(), key=lambda pair: (pair[0], pair[1].id))
    return best[1]


def _exact(group: list[Candidate], entry: list[int]) -> list[int]:
    """For each event, the best score of an order of the whole group that ends with it."""
    n = len(group)
    step = [[step_score(a, b, False) if a is not b else 0 for b in group] for a in group]
    unset = None
    best: list[list[int | None]] = [[unset] * n for _ in range(1 << n)]
    for j in range(n):
        best[1 << j][j] = entry[j]
    for mask in range(1, 1 << n):
        row = best[mask]
        for j in range(n):
            score = row[j]
            if score is None:
                continue
            for k in range(n):
                if mask & (1 << k):
                    continue
                candidate = score + step[j][k]
                target = best[mask | (1 << k)]
                if target[k] is None or candidate > target[k]:
                    target[k] = candidate
    full = best[(1 << n) - 1]
    return [s if s is not None else -(10**9) for s in full]


def _greedy(group: list[Candidate], entry: list[int]) -> list[int]:
    """A deterministic approximation for large groups: follow the best next step each time."""
    n = len(group)
    start = max(range(n), key=lambda j: (entry[j], group[j].id))
    order, score, left = [start], entry[start], set(range(n)) - {start}
    while left:
        current = group[order[-1]]
        nxt = max(left, key=lambda k: (step_score(current, group[k], False), group[k].id))
        score += step_score(current, group[nxt], False)
        order.append(nxt)
        left.remove(nxt)
    scores = [-(10**9)] * n
    scores[order[-1]] = score
    return scores
