"""Counterfactual data augmentation: training rows that mention a demographic term get a swapped copy.

The term lists are the bias probe's (``resources/bias_terms.json``: gender words and pronouns, first names,
nationalities), extensible with a user file of the same shape; they live here, in the data layer, and the
probe (``tuneforge.eval.bias``) imports them, so the augmentation and the measurement use the same terms.

``augment(examples, terms, seed)`` adds, for each example that mentions a category, one copy per category
with the group it mentions most swapped for another group of that category (whole words, case kept; for
two-group categories such as gender the other group, for larger ones a seeded choice). A classification
copy keeps its label; in a conversation or preference pair every turn is swapped alike, so an answer
stays consistent with its prompt (what it says about the person is kept, only who they are changes).
"""

from __future__ import annotations

import json
import random
import re
from collections import Counter
from dataclasses import replace
from pathlib import Path

from tuneforge.data.formats import Example
from tuneforge.errors import ConfigError

TERMS_FILE = Path(__file__).resolve().parent.parent / "resources" / "bias_terms.json"


def _read(path: Path) -> dict:
    text = path.read_text(encoding="utf-8")
    try:
        if path.suffix in (".yaml", ".yml"):
            import yaml

            return yaml.safe_load(text) or {}
        return json.loads(text)
    except Exception as e:  # json.JSONDecodeError / yaml.YAMLError
        raise ConfigError(
            f"{path}: cannot read the bias term lists ({e}). Write JSON or YAML shaped like "
            f"{TERMS_FILE.name}: {{category: {{groups: {{group: [terms...]}}}}}}."
        ) from None


def load_terms(extra: str | Path | None = None, key: str = "eval.bias_terms") -> dict[str, dict]:
    """Categories of aligned term groups: the shipped lists, extended (or replaced) by a user's file.

    A user file has the shipped file's shape; its categories are added, or replace shipped ones of the same
    name; with ``"extend": false`` at the top level only the user's categories are used.
    """
    cats = {k: v for k, v in _read(TERMS_FILE).items() if not k.startswith("_")}
    if extra:
        path = Path(extra)
        if not path.is_file():
            raise ConfigError(f"{key}: {path} not found. Give a JSON or YAML file shaped like {TERMS_FILE}.")
        user = _read(path)
        if not isinstance(user, dict):
            raise ConfigError(f"{path}: the top level must be a mapping of categories.")
        if user.get("extend", True) is False:
            cats = {}
        cats.update({k: v for k, v in user.items() if k != "extend" and not k.startswith("_")})
        source = str(path)
    else:
        source = str(TERMS_FILE)
    for name, cat in cats.items():
        groups = cat.get("groups") if isinstance(cat, dict) else None
        if not isinstance(groups, dict) or len(groups) < 2:
            raise ConfigError(
                f"{source}: category '{name}' needs 'groups' with at least two named lists of terms."
            )
        sizes = {g: len(t) for g, t in groups.items()}
        if len(set(sizes.values())) != 1:
            raise ConfigError(
                f"{source}: category '{name}': the groups must be aligned lists of the same length "
                f"(term i of one group swaps with term i of another); lengths are {sizes}."
            )
    return cats


def match_case(original: str, replacement: str) -> str:
    """``replacement`` written in the case of ``original`` (HE -> SHE, He -> She, he -> she, Emily -> Lakisha)."""
    if len(original) > 1 and original.isupper():
        return replacement.upper()
    if original[:1].isupper():
        return replacement[:1].upper() + replacement[1:]
    if original.islower():
        return replacement.lower()
    return replacement


class Swapper:
    """Finds the groups a text mentions and swaps two groups' terms, whole words, case kept."""

    def __init__(self, groups: dict[str, list[str]]):
        self.groups = {g: [str(t) for t in terms] for g, terms in groups.items()}
        self.lookup: dict[str, tuple[str, int]] = {}
        for g, terms in self.groups.items():
            for i, t in enumerate(terms):
                self.lookup.setdefault(t.lower(), (g, i))  # a term's first position is the one used
        words = sorted(self.lookup, key=len, reverse=True)
        self.pattern = re.compile(
            r"(?<![\w'-])(" + "|".join(map(re.escape, words)) + r")(?![\w-])", re.IGNORECASE
        )

    def groups_in(self, text: str) -> Counter:
        return Counter(self.lookup[m.group(0).lower()][0] for m in self.pattern.finditer(text))

    def swap(self, text: str, a: str, b: str) -> str:
        """Replace group ``a``'s terms with ``b``'s and ``b``'s with ``a``'s."""

        def repl(m: re.Match) -> str:
            word = m.group(0)
            g, i = self.lookup[word.lower()]
            if g == a:
                return match_case(word, self.groups[b][i])
            if g == b:
                return match_case(word, self.groups[a][i])
            return word

        return self.pattern.sub(repl, text)


def example_texts(e: Example) -> list[str]:
    """Every text of an example that a swap may touch (input, turns, answers)."""
    turns = [*e.messages, *(e.chosen or []), *(e.rejected or [])]
    return [t for t in [e.text, *(m.get("content") for m in turns)] if isinstance(t, str)]


def swap_example(e: Example, sw: Swapper, a: str, b: str) -> Example:
    """``e`` with groups ``a`` and ``b`` swapped in every text; the label is kept."""

    def turns(ms):
        if ms is None:
            return None
        return [
            {**m, "content": sw.swap(m["content"], a, b)} if isinstance(m.get("content"), str) else m
            for m in ms
        ]

    return replace(
        e,
        text=sw.swap(e.text, a, b) if isinstance(e.text, str) else e.text,
        messages=turns(e.messages),
        chosen=turns(e.chosen),
        rejected=turns(e.rejected),
        source=f"{e.source} (counterfactual {a}->{b})",
    )


def augment(examples: list[Example], terms: dict[str, dict], seed: int = 0) -> tuple[list[Example], dict]:
    """The examples followed by their counterfactual copies, and {category: copies added}.

    Each example gets at most one copy per category it mentions: the group it mentions most is swapped
    with another group of the category (both ways at once, so "he told her" becomes "she told him").
    """
    rng = random.Random(seed)
    added: list[Example] = []
    counts: dict[str, int] = {}
    for cat, spec in terms.items():
        sw = Swapper(spec["groups"])
        order = list(sw.groups)
        counts[cat] = 0
        for e in examples:
            found = Counter()
            for t in example_texts(e):
                found.update(sw.groups_in(t))
            if not found:
                continue
            source = max(found, key=lambda g: (found[g], -order.index(g)))
            target = rng.choice([g for g in order if g != source])
            copy = swap_example(e, sw, source, target)
            if example_texts(copy) != example_texts(e):
                added.append(copy)
                counts[cat] += 1
    return [*examples, *added], counts
