"""Source formats -> one shared ``Example`` type.

Accepted row shapes (detected from the columns, or named with ``data.format``):

- classification:     {"text": ..., "label": ...}               (columns configurable)
- messages:           {"messages": [{"role": "user", "content": ...}, ...]}
- sharegpt:           {"conversations": [{"from": "human", "value": ...}, ...]}
- alpaca:             {"instruction": ..., "input": ..., "output": ...}
- prompt_completion:  {"prompt": ..., "completion": ...}
- text:               {"text": ...}                              (continued pre-training)
- preference:         {"prompt": ..., "chosen": ..., "rejected": ...}   (strings or messages)
- kto:                {"prompt": ..., "completion": ..., "label": true/false}

Values: text fields and turn contents must be strings (numbers are written as text); a JSON object, a
list or a null where text belongs is an error naming the row and the field, never the text "None".
Labels are normalised by one rule (``normalize_label``): booleans become ``"true"``/``"false"``,
integral numbers become integers (``1``, ``1.0`` and ``"1.0"`` are all ``"1"``), other numbers are written
as Python writes them, and strings are stripped of surrounding spaces. Labels that still differ only in
case or spelling (``"Positive"``/``"positive"``, ``"1"``/``"true"``) are reported by the audit as an error.

Tokenisation is a separate step (``tuneforge.data.tokenize``), owned by the model side.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from tuneforge.config import DATA_FORMATS
from tuneforge.data.io import Table
from tuneforge.errors import DataError

FORMATS = tuple(f for f in DATA_FORMATS if f != "auto")  # the schema's list is the one list

SHAPES = """Accepted row shapes:
  classification     {"text": "...", "label": "..."}  (set data.text_column / data.label_column)
  messages           {"messages": [{"role": "user", "content": "..."}, {"role": "assistant", "content": "..."}]}
  sharegpt           {"conversations": [{"from": "human", "value": "..."}, {"from": "gpt", "value": "..."}]}
  alpaca             {"instruction": "...", "input": "...", "output": "..."}
  prompt_completion  {"prompt": "...", "completion": "..."}
  text               {"text": "..."}
  preference         {"prompt": "...", "chosen": "...", "rejected": "..."}
  kto                {"prompt": "...", "completion": "...", "label": true}"""

ROLE_ALIASES = {
    "human": "user",
    "user": "user",
    "gpt": "assistant",
    "assistant": "assistant",
    "bot": "assistant",
    "model": "assistant",
    "system": "system",
    "tool": "tool",
}


_INTEGRAL = re.compile(r"[+-]?\d+\.0+")  # "1.0", "-2.00": an integer written as a decimal


def _kind(value: Any) -> str:
    return {dict: "a JSON object", list: "a list", bool: "a boolean"}.get(type(value), type(value).__name__)


def as_text(value: Any, where: str, key: str) -> str:
    """A text field's value as a string: strings as they are, numbers written out; anything else (an
    object, a list, a boolean, null) is an error naming the row and the field."""
    if isinstance(value, str):
        return value
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value)
    if value is None:
        raise DataError(
            f"{where}: field '{key}' is null. Fill it in or delete the row (`tuneforge data prepare` drops "
            f"such rows with a report)."
        )
    raise DataError(
        f"{where}: field '{key}' is {_kind(value)}, not text ({str(value)[:60]!r}). Put the text itself in "
        f"'{key}' as a string, or name the right column (data.text_column)."
    )


def normalize_label(value: Any, where: str = "", key: str = "label") -> str:
    """One spelling per label value: ``True`` -> ``"true"``; ``1``, ``1.0``, ``"1.0"`` -> ``"1"``; ``2.5`` ->
    ``"2.5"``; strings stripped. An object or a list is an error naming the row."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return str(int(value)) if value.is_integer() else str(value)
    if isinstance(value, str):
        s = value.strip()
        return s.split(".")[0].lstrip("+") if _INTEGRAL.fullmatch(s) else s
    raise DataError(f"{where}: field '{key}' is {_kind(value)}; a label must be a string, number or boolean.")


@dataclass
class Example:
    """One training example, whatever file format it came from."""

    text: str | None = None  # classification input, or raw text
    label: str | None = None  # classification label; kto: "true"/"false"
    messages: list[dict[str, str]] = field(
        default_factory=list
    )  # chat turns (prompt side for preference/kto)
    chosen: list[dict[str, str]] | None = None  # preference: preferred assistant turn(s); kto: the completion
    rejected: list[dict[str, str]] | None = None  # preference: dispreferred assistant turn(s)
    source: str = ""  # "file:line", for error messages


def detect_format(table: Table, text_column: str = "text", label_column: str = "label") -> str:
    """Guess the format from the columns of the first rows; a clear error when nothing fits."""
    cols = set(table.columns)
    if not table.rows:
        raise DataError(f"{table.path}: no rows to read.")
    if "messages" in cols:
        return "messages"
    if "conversations" in cols:
        return "sharegpt"
    if {"prompt", "chosen", "rejected"} <= cols:
        return "preference"
    if {"prompt", "completion", "label"} <= cols:
        return "kto"
    if {"instruction", "output"} <= cols:
        return "alpaca"
    if {"prompt", "completion"} <= cols:
        return "prompt_completion"
    if {text_column, label_column} <= cols:
        return "classification"
    if text_column in cols:
        return "text"
    raise DataError(f"{table.path}: cannot tell the format from columns {sorted(cols)}.\n{SHAPES}")


def _need(row: dict[str, Any], key: str, where: str, fmt: str) -> Any:
    if key not in row:
        raise DataError(f"{where}: missing field '{key}' for format '{fmt}'.\n{SHAPES}")
    value = row[key]
    if value is None or (isinstance(value, str) and not value.strip()):
        raise DataError(
            f"{where}: field '{key}' is empty. Remove the row or fill it (`tuneforge data prepare` drops such rows with a report)."
        )
    return value


def _turns(value: Any, where: str, key: str) -> list[dict[str, str]]:
    """A string becomes one assistant turn; a list of {role, content} is checked and kept."""
    if not isinstance(value, list):
        return [{"role": "assistant", "content": as_text(value, where, key)}]
    return _messages(value, where, key)


def _messages(
    value: Any, where: str, key: str = "messages", role_key: str = "role", content_key: str = "content"
) -> list[dict[str, str]]:
    if isinstance(value, str):
        return [{"role": "user", "content": value}]
    if not isinstance(value, list) or not value:
        raise DataError(f"{where}: '{key}' must be a non-empty list of turns.")
    out = []
    for k, turn in enumerate(value):
        if not isinstance(turn, dict) or role_key not in turn or content_key not in turn:
            raise DataError(f"{where}: {key}[{k}] must be an object with '{role_key}' and '{content_key}'.")
        role = ROLE_ALIASES.get(str(turn[role_key]).lower())
        if role is None:
            raise DataError(
                f"{where}: {key}[{k}] has unknown role '{turn[role_key]}'; use system, user or assistant."
            )
        if turn[content_key] is None:
            raise DataError(
                f"{where}: {key}[{k}] (a '{role}' turn) has no content (null). Fill in the turn or delete the "
                f"row (`tuneforge data prepare` drops such rows with a report)."
            )
        out.append({"role": role, "content": as_text(turn[content_key], where, f"{key}[{k}].{content_key}")})
    return out


def to_example(
    row: dict[str, Any], fmt: str, where: str, text_column: str = "text", label_column: str = "label"
) -> Example:
    """Convert one row of a known format to an ``Example``."""
    if fmt == "classification":
        text = as_text(_need(row, text_column, where, fmt), where, text_column)
        label = normalize_label(_need(row, label_column, where, fmt), where, label_column)
        if not label:
            raise DataError(f"{where}: field '{label_column}' is empty. Fill it in or delete the row.")
        return Example(text=text, label=label, source=where)
    if fmt == "text":
        return Example(text=as_text(_need(row, text_column, where, fmt), where, text_column), source=where)
    if fmt == "messages":
        return Example(messages=_messages(_need(row, "messages", where, fmt), where), source=where)
    if fmt == "sharegpt":
        conv = _need(row, "conversations", where, fmt)
        return Example(messages=_messages(conv, where, "conversations", "from", "value"), source=where)
    if fmt == "alpaca":
        instruction = as_text(_need(row, "instruction", where, fmt), where, "instruction")
        extra = as_text(row.get("input") or "", where, "input").strip()
        user = f"{instruction}\n\n{extra}" if extra else instruction
        messages = []
        if row.get("system"):
            messages.append({"role": "system", "content": as_text(row["system"], where, "system")})
        messages += [
            {"role": "user", "content": user},
            {"role": "assistant", "content": as_text(_need(row, "output", where, fmt), where, "output")},
        ]
        return Example(messages=messages, source=where)
    if fmt == "prompt_completion":
        prompt = _messages(_need(row, "prompt", where, fmt), where, "prompt")
        return Example(
            messages=prompt + _turns(_need(row, "completion", where, fmt), where, "completion"), source=where
        )
    if fmt == "preference":
        prompt = _messages(_need(row, "prompt", where, fmt), where, "prompt")
        chosen = _turns(_need(row, "chosen", where, fmt), where, "chosen")
        rejected = _turns(_need(row, "rejected", where, fmt), where, "rejected")
        return Example(messages=prompt, chosen=chosen, rejected=rejected, source=where)
    if fmt == "kto":
        prompt = _messages(_need(row, "prompt", where, fmt), where, "prompt")
        label = row.get("label")
        norm = normalize_label(label, where).lower() if label is not None else ""
        if norm not in ("true", "false", "1", "0"):
            raise DataError(f"{where}: kto 'label' must be true or false, got {label!r}.")
        good = norm in ("true", "1")
        return Example(
            messages=prompt,
            chosen=_turns(_need(row, "completion", where, fmt), where, "completion"),
            label="true" if good else "false",
            source=where,
        )
    raise DataError(f"unknown data format '{fmt}'. Choose one of {', '.join(FORMATS)}.")


def to_examples(
    table: Table, fmt: str = "auto", text_column: str = "text", label_column: str = "label"
) -> tuple[list[Example], str]:
    """Convert every row of a table; returns the examples and the format used."""
    if fmt == "auto":
        fmt = detect_format(table, text_column, label_column)
    if fmt not in FORMATS:
        raise DataError(f"data.format '{fmt}' is unknown. Choose one of auto, {', '.join(FORMATS)}.")
    if fmt == "classification":
        missing = [c for c in (text_column, label_column) if c not in table.columns]
        if missing:
            raise DataError(
                f"{table.path}: column '{missing[0]}' not found (columns: {', '.join(table.columns)}). "
                f"Set data.text_column / data.label_column to the right names."
            )
    return [
        to_example(r, fmt, table.where(i), text_column, label_column) for i, r in enumerate(table.rows)
    ], fmt
