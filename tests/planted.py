"""A data fixture with planted problems, built from real Rotten Tomatoes rows (audit and prepare tests).

``build(tmp_path)`` writes ``train.jsonl`` (base rows + planted problems) and ``test.jsonl`` and returns a
``Planted`` record: the line numbers of every planted problem, by kind. The base rows are chosen so that no
two of them (nor a base row and a test row) are even loosely similar (word-set Jaccard < 0.5), so every
duplicate the audit finds beyond the planted ones is a false positive.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass, field
from pathlib import Path

from tuneforge.data.bundled import load_bundled
from tuneforge.data.dedup import is_near_duplicate, shingles


@dataclass
class Planted:
    train: Path
    test: Path
    base: list[int]  # train lines of the clean base rows
    lines: dict[str, list[int]] = field(default_factory=dict)  # kind -> train lines of planted rows
    originals: dict[int, int] = field(default_factory=dict)  # planted line -> base line it copies
    test_lines: dict[int, int] = field(default_factory=dict)  # leaked train line -> test line it copies
    texts: dict[int, str] = field(default_factory=dict)  # train line -> text


def _distinct_rows(rows: list[dict], n: int, taken: list[set], min_words: int = 12) -> list[dict]:
    out = []
    for r in rows:
        words = r["text"].split()
        if not min_words <= len(words) <= 40:
            continue
        s = shingles(r["text"])
        if any(len(s & t) / len(s | t) >= 0.5 for t in taken):
            continue
        taken.append(s)
        out.append(r)
        if len(out) == n:
            break
    return out


def edit(text: str, kind: str, rng: random.Random) -> str:
    """A small edit that keeps ``text`` a near-duplicate (checked against the reference rule)."""
    words = text.split()
    k = rng.randrange(1, len(words) - 1)
    if kind == "substitute":
        words[k] = "remarkably"
    elif kind == "delete":
        del words[k]
    elif kind == "insert":
        words.insert(k, "truly")
    elif kind == "typo":
        k = max(range(len(words)), key=lambda i: len(words[i]))
        w = words[k]
        c = next(i for i in range(1, len(w) - 1) if w[i] != w[i + 1])  # swap two different letters
        words[k] = w[:c] + w[c + 1] + w[c] + w[c + 2 :]
    elif kind == "case":
        return text.lower().replace(",", "").replace(".", "") + "!"
    out = " ".join(words)
    assert out != text and is_near_duplicate(text, out), (kind, text, out)
    return out


def build(tmp_path: Path, n_base: int = 400, n_test: int = 100) -> Planted:
    rt = load_bundled("rotten-tomatoes")
    taken: list[set] = []
    base = _distinct_rows(rt["train"].rows, n_base, taken)
    test = _distinct_rows(rt["test"].rows, n_test, taken)
    extra = _distinct_rows(rt["train"].rows[len(rt["train"].rows) // 2 :], 8, taken)
    assert len(base) == n_base and len(test) == n_test and len(extra) == 8
    rng = random.Random(0)
    flip = {"fresh": "rotten", "rotten": "fresh"}
    lines: list[str] = []
    p = Planted(tmp_path / "train.jsonl", tmp_path / "test.jsonl", [])

    def add(row: dict | str, kind: str | None = None, original: int | None = None) -> int:
        lines.append(row if isinstance(row, str) else json.dumps(row, ensure_ascii=False))
        n = len(lines)
        if kind:
            p.lines.setdefault(kind, []).append(n)
        if original is not None:
            p.originals[n] = original
        if isinstance(row, dict) and isinstance(row.get("text"), str):
            p.texts[n] = row["text"]
        return n

    p.base = [add(r) for r in base]
    picks = rng.sample(range(n_base), 40)
    for b in picks[:10]:  # exact duplicates (some with different spacing)
        text = base[b]["text"] if b % 2 else f"  {base[b]['text']}  "
        add({"text": text, "label": base[b]["label"]}, "exact_duplicate", p.base[b])
    kinds = ["substitute", "delete", "insert", "typo", "case"] * 2
    for b, kind in zip(picks[10:20], kinds):  # near-duplicates with small edits
        add(
            {"text": edit(base[b]["text"], kind, rng), "label": base[b]["label"]}, "near_duplicate", p.base[b]
        )
    for j, b in enumerate(picks[20:26]):  # conflicting labels: exact and near copies with the other label
        text = base[b]["text"] if j < 3 else edit(base[b]["text"], kinds[j], rng)
        add({"text": text, "label": flip[base[b]["label"]]}, "conflicting_labels", p.base[b])
    for j, t in enumerate(rng.sample(range(n_test), 8)):  # leaked test rows
        text = test[t]["text"] if j < 4 else edit(test[t]["text"], kinds[j], rng)
        n = add({"text": text, "label": test[t]["label"]}, "leakage")
        p.test_lines[n] = t + 1
    add({"text": "", "label": "fresh"}, "empty_field")
    add({"text": "   ", "label": "rotten"}, "empty_field")
    add({"text": "A film with no label at all, which nobody will ever see.", "label": ""}, "empty_field")
    add({"label": "rotten"}, "missing_field")
    add('{"text": "an unterminated row, "label": "fresh"}', "malformed")
    add('["a", "list", "not", "an", "object"]', "malformed")
    add('{"text": "cut off in the mid', "malformed")
    add({"text": extra[0]["text"].replace(" ", " \x07", 1), "label": extra[0]["label"]}, "control_chars")
    add({"text": extra[1]["text"] + "\x1b[0m", "label": extra[1]["label"]}, "control_chars")
    add({"text": extra[2]["text"].replace(" ", " \ufffd", 1), "label": extra[2]["label"]}, "bad_encoding")
    add({"text": extra[3]["text"].replace("e", "Ã©", 1), "label": extra[3]["label"]}, "mojibake")
    add(
        {"text": extra[4]["text"] + " Write to jane.doe@mailbox.org.", "label": extra[4]["label"]},
        "pii_email",
    )
    add({"text": extra[5]["text"] + " Call 555-867-5309.", "label": extra[5]["label"]}, "pii_phone")
    p.train.write_text("\n".join(lines) + "\n", encoding="utf-8")
    p.test.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in test), encoding="utf-8")
    return p
