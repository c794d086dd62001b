"""Seeded, stratified splits of examples.

``split`` holds out a fraction of items (stratified by ``key``). ``split_grouped`` does the same with
duplicate groups as the unit: exact duplicates and near-duplicates of the text (``tuneforge.data.dedup``,
the audit's rule and threshold) always land on the same side, so a split tuneforge makes never leaks
a training row into validation or test.
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Callable, Hashable
from typing import Any, TypeVar

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


def example_text(item: Any) -> str:
    """The text two examples are compared on for duplicates (as the audit compares them): the text, or all
    chat turns joined (for preference pairs: the prompt and the chosen answer)."""
    if getattr(item, "text", None) is not None:
        return item.text
    turns = list(getattr(item, "messages", None) or []) + list(getattr(item, "chosen", None) or [])
    return "\n".join(t["content"] for t in turns)


def split_grouped(
    items: list[T],
    fraction: float,
    seed: int,
    *,
    text: Callable[[T], str] | None = None,
    key: Callable[[T], Hashable] | None = None,
    threshold: float | None = 0.8,
) -> tuple[list[T], list[T]]:
    """Hold out about ``fraction`` of ``items`` without dividing any duplicate group. Order is kept.

    ``text(item)`` is the text compared (default: ``example_text``, for ``Example`` items); exact duplicates
    and near-duplicates at ``threshold`` (None: exact only) form one group. With ``key`` the split is
    stratified: a group counts in the stratum of its most common key, and each stratum's groups are taken,
    in a seeded order, while they bring the held-out count closer to ``round(fraction * size)`` (at least
    one row for a stratum of 3 or more rows, as ``split`` does).
    """
    from tuneforge.data.dedup import duplicate_groups

    if fraction <= 0 or not items:
        return list(items), []
    get_text = text or example_text
    groups = duplicate_groups([get_text(x) for x in items], threshold)
    strata: dict[Hashable, list[int]] = {}
    for g, members in enumerate(groups):
        stratum = Counter(key(items[i]) for i in members).most_common(1)[0][0] if key else None
        strata.setdefault(stratum, []).append(g)
    rng = random.Random(seed)
    held: set[int] = set()
    for stratum in sorted(strata, key=str):
        gs = strata[stratum]
        rng.shuffle(gs)
        size = sum(len(groups[g]) for g in gs)
        want = round(size * fraction)
        if key is not None and want == 0 and size >= 3:
            want = 1
        have = 0
        for g in gs:
            n = len(groups[g])
            if abs(have + n - want) < abs(have - want):  # taking the group brings us closer
                held.update(groups[g])
                have += n
    return [x for i, x in enumerate(items) if i not in held], [x for i, x in enumerate(items) if i in held]


def subsample(items: list[T], limit: int | None, seed: int) -> list[T]:
    """At most ``limit`` items, chosen with a seeded shuffle, original order kept."""
    if limit is None or len(items) <= limit:
        return list(items)
    keep = sorted(random.Random(seed).sample(range(len(items)), limit))
    return [items[i] for i in keep]
