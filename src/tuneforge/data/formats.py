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

Tokenisation is a separate step (``tuneforge.data.tokenize``), owned by the model side.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from tuneforge.data.io import Table
from tuneforge.errors import DataError

FORMATS = (
    "classification",
    "messages",
    "sharegpt",
    "alpaca",
    "prompt_completion",
    "text",
    "preference",
    "kto",
)

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
    if isinstance(value, str):
        return [{"role": "assistant", "content": value}]
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
        out.append({"role": role, "content": str(turn[content_key])})
    return out


def to_example(
    row: dict[str, Any], fmt: str, where: str, text_column: str = "text", label_column: str = "label"
) -> Example:
    """Convert one row of a known format to an ``Example``."""
    if fmt == "classification":
        text = _need(row, text_column, where, fmt)
        label = _need(row, label_column, where, fmt)
        return Example(text=str(text), label=str(label), source=where)
    if fmt == "text":
        return Example(text=str(_need(row, text_column, where, fmt)), source=where)
    if fmt == "messages":
        return Example(messages=_messages(_need(row, "messages", where, fmt), where), source=where)
    if fmt == "sharegpt":
        conv = _need(row, "conversations", where, fmt)
        return Example(messages=_messages(conv, where, "conversations", "from", "value"), source=where)
    if fmt == "alpaca":
        instruction = str(_need(row, "instruction", where, fmt))
        extra = str(row.get("input") or "").strip()
        user = f"{instruction}\n\n{extra}" if extra else instruction
        messages = [{"role": "system", "content": str(row["system"])}] if row.get("system") else []
        messages += [
            {"role": "user", "content": user},
            {"role": "assistant", "content": str(_need(row, "output", where, fmt))},
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
        if not isinstance(label, bool) and str(label).lower() not in ("true", "false", "1", "0"):
            raise DataError(f"{where}: kto 'label' must be true or false, got {label!r}.")
        good = label if isinstance(label, bool) else str(label).lower() in ("true", "1")
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
