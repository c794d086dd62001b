"""Seeded, stratified splits of examples."""

from __future__ import annotations

import random
from typing import TypeVar

T = TypeVar("T")


def split(items: list[T], fraction: float, seed: int, key=None) -> tuple[list[T], list[T]]:
    """Hold out ``fraction`` of ``items`` (per ``key`` group when given: stratified). Order is kept."""
    if fraction <= 0 or not items:
        return list(items), []
    groups: dict[object, list[int]] = {}
    for i, item in enumerate(items):
        groups.setdefault(key(item) if key else None, []).append(i)
    rng = random.Random(seed)
    held: set[int] = set()
    for g in sorted(groups, key=str):
        idx = groups[g]
        rng.shuffle(idx)
        n = round(len(idx) * fraction)
        if key is not None and n == 0 and len(idx) >= 3:
            n = 1  # every class appears in the held-out split when it can
        held.update(idx[:n])
    return [x for i, x in enumerate(items) if i not in held], [x for i, x in enumerate(items) if i in held]


def subsample(items: list[T], limit: int | None, seed: int) -> list[T]:
    """At most ``limit`` items, chosen with a seeded shuffle, original order kept."""
    if limit is None or len(items) <= limit:
        return list(items)
    keep = sorted(random.Random(seed).sample(range(len(items)), limit))
    return [items[i] for i in keep]
