"""Registries for tests: the product's, or the product's with some handlers replaced.

Tests hand their registry to what they run (processing, replay, import, the worker's ctx), as
the product does; none patches a global list of handlers.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

from stripeline import handlers
from stripeline.model.context import Handler, Registry


def product() -> Registry:
    return handlers.registry()


def replacing(replaced: Mapping[str, Handler], base: Registry | None = None) -> Registry:
    """`base` (the product's) with these event types handled by these handlers."""
    base = base or product()
    return dataclasses.replace(base, handlers={**base.handlers, **replaced})
