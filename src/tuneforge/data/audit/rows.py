"""Rows -> examples for the audit: loading sources, checking each row, and the flat view every family of
findings works on (all examples of all splits in one list, with their texts, labels and exact keys)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from tuneforge.data.audit.report import LABELLED_FORMATS
from tuneforge.data.bundled import DATASETS, is_bundled, load_bundled
from tuneforge.data.dedup import exact_key
from tuneforge.data.formats import Example, to_example
from tuneforge.data.io import SUFFIXES, Table, read_table
from tuneforge.errors import DataError

Source = str | Path | Table
CHAT_KEYS = {"messages": "content", "conversations": "value", "prompt": "content", "completion": "content",
             "chosen": "content", "rejected": "content"}  # fmt: skip


def required_fields(fmt: str, text_column: str = "text", label_column: str = "label") -> tuple[str, ...]:
    """The fields a row of ``fmt`` must have, non-empty."""
    return {
        "classification": (text_column, label_column),
        "text": (text_column,),
        "messages": ("messages",),
        "sharegpt": ("conversations",),
        "alpaca": ("instruction", "output"),
        "prompt_completion": ("prompt", "completion"),
        "preference": ("prompt", "chosen", "rejected"),
        "kto": ("prompt", "completion", "label"),
    }[fmt]


def check_row(
    row: dict[str, Any], fmt: str, where: str, text_column: str = "text", label_column: str = "label"
) -> tuple[Example | None, str, str]:
    """Convert one row: ``(example, "", "")``, or ``(None, problem, detail)`` with problem one of
    ``missing_field``, ``empty_field``, ``empty_turn`` (also a null turn), ``invalid_row``."""
    for key in required_fields(fmt, text_column, label_column):
        if key not in row:
            return None, "missing_field", f"missing field '{key}'"
        v = row[key]
        if v is None or (isinstance(v, str) and not v.strip()) or (isinstance(v, (list, dict)) and not v):
            return None, "empty_field", f"field '{key}' is empty"
    for key, content in CHAT_KEYS.items():
        turns = row.get(key)
        if isinstance(turns, list):
            for k, t in enumerate(turns):
                if isinstance(t, dict) and content in t and t[content] is None:
                    role = t.get("from" if key == "conversations" else "role")
                    return None, "empty_turn", f"{key}[{k}] (a '{role}' turn) has no content (null)"
    try:
        ex = to_example(row, fmt, where, text_column, label_column)
    except DataError as e:
        msg = str(e).split("\n")[0]
        return None, "invalid_row", msg.removeprefix(f"{where}: ")
    for turn in ex.messages + (ex.chosen or []) + (ex.rejected or []):
        if not turn["content"].strip():
            return None, "empty_turn", f"a '{turn['role']}' turn is empty"
    return ex, "", ""


def joined(turns: list[dict[str, str]] | None) -> str:
    """The contents of chat turns, one per line."""
    return "\n".join(t["content"] for t in turns or [])


def example_text(ex: Example, fmt: str) -> str:
    """The text compared for duplicates: the text; chat turns joined; prompt + chosen for preference pairs."""
    if fmt in ("classification", "text"):
        return ex.text or ""
    return "\n".join(s for s in (joined(ex.messages), joined(ex.chosen)) if s)


def example_label(ex: Example, fmt: str) -> str | None:
    """The label duplicates must agree on (classification label; kto desirable/undesirable)."""
    return ex.label if fmt in LABELLED_FORMATS else None


def example_strings(ex: Example) -> list[str]:
    """Every piece of text in an example (for the encoding, control-character and personal-data checks)."""
    return ([ex.text] if ex.text else []) + [
        t["content"] for t in ex.messages + (ex.chosen or []) + (ex.rejected or [])
    ]


def load_source(spec: Source, strict: bool = False) -> list[tuple[str, Table, str | None, str]]:
    """A file, a prepared folder (its train/validation/test files), a ``Table``, ``alias:split`` or a
    bare alias (all its splits) -> ``[(split name, table, format hint, spec of that one split)]``."""
    if isinstance(spec, Table):
        return [(split_name(spec.path), spec, None, spec.path)]
    s, p = str(spec), Path(spec)
    if p.is_dir():
        files = [f for n in ("train", "validation", "test") for f in sorted(p.glob(f"{n}.*")) if _readable(f)]
        if not files:
            raise DataError(f"{s}: a folder without train/validation/test data files; give a data file.")
        return [(split_name(str(f)), read_table(f, strict=strict), None, str(f)) for f in files]
    if p.exists():
        return [(split_name(s), read_table(s, strict=strict), None, s)]
    if is_bundled(s):
        name, _, split = s.partition(":")
        splits, hint = load_bundled(name), DATASETS[name].format
        if not split:
            return [(k, t, hint, f"{name}:{k}") for k, t in splits.items()]
        if split not in splits:
            raise DataError(f"bundled dataset '{name}' has splits {', '.join(splits)}, not '{split}'.")
        return [(split, splits[split], hint, s)]
    raise DataError(
        f"{s}: file not found, and not a bundled dataset. Bundled: {', '.join(DATASETS)} "
        f"(use alias:split, e.g. rotten-tomatoes:test)."
    )


def _readable(f: Path) -> bool:
    suffixes = [x for x in f.suffixes if x not in (".gz", ".bz2")]
    return bool(suffixes) and suffixes[-1] in SUFFIXES


def split_name(path: str) -> str:
    """The split a file holds, from its name: test, validation, train, or the file's stem."""
    stem = Path(path).name.split(".")[0].lower()
    for key, name in (("test", "test"), ("valid", "validation"), ("dev", "validation"), ("train", "train")):
        if key in stem:
            return name
    return stem or "data"


def source_of(exs: list[Example]) -> str:
    """The file the examples came from (from the first one's ``file:line``)."""
    return exs[0].source.rsplit(":", 1)[0] if exs and exs[0].source else ""


class Flat:
    """All examples of all splits in one list, with what every check needs: texts, labels, exact keys."""

    def __init__(self, examples: list[Example], fmt: str, names: list[str], sizes: list[int]) -> None:
        self.examples, self.fmt, self.names = examples, fmt, names
        self.split_of = np.repeat(np.arange(len(names)), sizes)  # (N,) split index of each example
        self.texts = [example_text(ex, fmt) for ex in examples]
        self.labels = [example_label(ex, fmt) for ex in examples]
        self.keys = [exact_key(t) for t in self.texts]

    def indices(self, k: int) -> list[int]:
        return np.nonzero(self.split_of == k)[0].tolist()

    def where(self, idx: Sequence[int]) -> list[str]:
        return [self.examples[i].source for i in idx]

    def pair(self, i: int, j: int, similarity: float) -> dict[str, Any]:
        s = self.where([i, j])
        return {"a": s[0], "b": s[1], "text_a": self.texts[i][:300], "text_b": self.texts[j][:300],
                "similarity": round(similarity, 3)}  # fmt: skip

    def group(self, idx: Sequence[int]) -> dict[str, Any]:
        out: dict[str, Any] = {"rows": self.where(idx[:10]), "text": self.texts[idx[0]][:300]}
        if self.fmt in LABELLED_FORMATS:
            out["labels"] = [self.labels[i] for i in idx[:10]]
        return out

    def row(self, i: int) -> dict[str, Any]:
        """One row as an example of a finding: where it is and the start of its text."""
        return {"rows": [self.examples[i].source], "text": self.texts[i][:300]}
