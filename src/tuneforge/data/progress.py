"""Progress bars for long data work (reading rows, the near-duplicate search, token lengths).

``with phases():`` shows one rich progress display (description, bar, count, elapsed time, ETA) on
tuneforge's console; inside it, ``track(items, "what", total)`` adds a bar for one phase. Outside a
``phases()`` block, or when ``TUNEFORGE_NO_PROGRESS`` is set, or when the console is not a terminal,
``track`` returns the items untouched. The bar is updated every ``every`` items, so a loop over 100,000
rows pays a generator step per row and nothing more.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

T = TypeVar("T")
F = TypeVar("F", bound=Callable[..., Any])
_active: list = []  # the Progress of the outermost open ``phases()`` block, if it shows anything


@contextmanager
def phases(enabled: bool = True) -> Iterator[None]:
    """Show the bars of the ``track`` calls made inside this block (nested blocks share the outer one)."""
    from tuneforge.utils import console, new_progress

    if _active or not enabled or os.environ.get("TUNEFORGE_NO_PROGRESS") or not console.is_terminal:
        yield
        return
    progress = new_progress()
    _active.append(progress)
    try:
        with progress:
            yield
    finally:
        _active.remove(progress)


def shows_progress(fn: F) -> F:
    """Decorator: run ``fn`` inside ``phases()``, so the phases it tracks show their bars."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        with phases():
            return fn(*args, **kwargs)

    return wrapper  # type: ignore[return-value]


def track(items: Iterable[T], description: str, total: int | None = None, every: int = 1000) -> Iterable[T]:
    """``items`` with a bar for this phase when a ``phases()`` block shows progress, else ``items`` itself."""
    if not _active:
        return items
    return _tracked(_active[0], items, description, total, every)


def _tracked(progress, items: Iterable[T], description: str, total: int | None, every: int) -> Iterator[T]:
    if total is None and hasattr(items, "__len__"):
        total = len(items)  # type: ignore[arg-type]
    task = progress.add_task(description, total=total)
    k = 0
    try:
        for k, item in enumerate(items, start=1):
            yield item
            if k % every == 0:
                progress.update(task, completed=k)
    finally:
        progress.update(task, completed=total if total is not None else k, visible=False)
