"""The registry is derived from what each handler module declares, once."""

from __future__ import annotations

import importlib
import pkgutil

from stripeline import handlers


def test_no_event_type_is_declared_by_two_projections():
    declared = [event_type for projection in handlers.PROJECTIONS for event_type in projection.events]
    assert len(declared) == len(set(declared)) == len(handlers.HANDLERS)


def test_every_module_that_declares_projections_is_in_the_registry():
    declaring = set()
    for module in pkgutil.iter_modules(handlers.__path__):
        imported = importlib.import_module(f"{handlers.__name__}.{module.name}")
        if hasattr(imported, "PROJECTIONS"):
            declaring.add(imported)
    assert declaring == set(handlers.MODULES)


def test_every_handled_event_type_says_why_we_care():
    assert all(why.strip() for why in handlers.WHY.values())
    assert handlers.WHY.keys() == handlers.HANDLERS.keys()
