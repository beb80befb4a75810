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
   - B has `data.previous_attributes`: +1 when they match A's object on those keys and B's
     object with them put back (B's "before") is A's row, -1 otherwise;
   - B has none (e.g. `invoice.paid`): +1 when B's stored row equals A's (Stripe sends such
     notifications beside the `*.updated` carrying the same state), -1 when they differ inside
     one rank, 0 when B opens a new rank (it is the event that made the change).
   The best-scoring sequence of all the events is found exactly (a dynamic programme over
   subsets, per rank) for up to EXACT_LIMIT events of one rank. Beyond that (a long burst of
   updates), the updates are read as a walk through states, each going from its "before" to
   its "after": the walk ends in the one state entered once more than it is left (or, when
   every state is left as often as entered, where it began).
3. Ties in score go to the larger event id.

What no rule can see: an object that returns to a state it already had within the same
second (an attribute changed and changed back) may leave two orders equally supported; the
event id decides between them. Events of earlier seconds are deliberately not consulted, so that the answer for one
second never depends on which events of another second have arrived.
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import groupby
from typing import Any

import orjson

# Above this many events of one rank in one second, follow the walk of states instead of
# scoring every order (2^n work).
EXACT_LIMIT = 9


@dataclass(frozen=True, slots=True)
class Candidate:
    """One event of the object: its id, rank, payload object, previous attributes and rows."""

    id: str
    rank: int
    obj: dict[str, Any]
    previous: dict[str, Any] | None
    state: Any  # what the event would write; equal states are the same state for us
    before: Any = None  # what the object was just before, when previous attributes say


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


def restore(obj: dict[str, Any], previous: dict[str, Any], nested: bool = False) -> dict[str, Any]:
    """The object as it was before the change that `previous` describes.

    Stripe reports a changed hash by its changed keys alone, a key that was added as null
    (`{"metadata": {"tier": null}}`), and a changed array whole.
    """
    before = dict(obj)
    for key, value in previous.items():
        current = obj.get(key)
        if isinstance(value, dict) and isinstance(current, dict):
            before[key] = restore(current, value, nested=True)
        elif value is None and nested:
            before.pop(key, None)
        else:
            before[key] = value
    return before


def step_score(a: Candidate, b: Candidate, opens_rank: bool) -> int:
    """The evidence that `b` came right after `a` (see the module docstring)."""
    if b.previous:
        return 1 if b.before == a.state and matches(b.previous, a.obj) else -1
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
        if len(group) <= EXACT_LIMIT:
            scores = _exact(group, entry)
        else:
            start = max(ends.values(), key=lambda pair: (pair[0], pair[1].id))[1].state if ends else None
            scores = _walk(group, entry, start)
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


def _plain(value: Any) -> Any:
    """orjson writes tuples but not their subclasses (the named row types)."""
    if isinstance(value, tuple):
        return list(value)
    raise TypeError(type(value).__name__)


def _key(state: Any) -> bytes:
    return orjson.dumps(state, default=_plain, option=orjson.OPT_SORT_KEYS | orjson.OPT_NON_STR_KEYS)


def _walk(group: list[Candidate], entry: list[int], start: Any) -> list[int]:
    """For a large group: score 1 for the events that hold the state the walk ends in."""
    balance: dict[bytes, int] = {}
    for c in group:
        if c.previous and c.before is not None:
            balance[_key(c.before)] = balance.get(_key(c.before), 0) - 1
            balance[_key(c.state)] = balance.get(_key(c.state), 0) + 1
    ends = [state for state, b in balance.items() if b > 0]
    if len(ends) == 1:
        final = ends[0]
    elif not ends and balance and start is not None:
        final = _key(start)
    else:
        final = None
    holding = [j for j, c in enumerate(group) if final is not None and _key(c.state) == final]
    if not holding:  # no consistent walk: the latest-ranked evidence, then the id, decides
        holding = list(range(len(group)))
    scores = [-(10**9)] * len(group)
    for j in holding:
        scores[j] = max(entry) + len(group)
    return scores
