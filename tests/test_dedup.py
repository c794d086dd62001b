"""Near-duplicate detection checked against the plain-Python reference rule."""

from __future__ import annotations

import itertools
import random

import numpy as np
import pytest
from planted import edit

from tuneforge.data.bundled import load_bundled
from tuneforge.data.dedup import (
    UnionFind,
    collision_probability,
    exact_groups,
    exact_key,
    is_near_duplicate,
    jaccard,
    keep_first,
    lsh_params,
    near_duplicates,
    normalize,
    shingles,
)


def test_normalisation():
    assert exact_key("  Cafe\u0301   au\tlait \n") == "Café au lait"
    assert exact_key("A film.") != exact_key("a film")
    assert normalize("The FILM -- was   GREAT!!! (2019)") == "the film was great 2019"
    assert normalize("Ｆｕｌｌ width, café") == "full width café"  # NFKC, non-ASCII path
    assert shingles("a b a c", 2) == {("a", "b"), ("b", "a"), ("a", "c")}
    assert shingles("one", 2) == {("one",)} and shingles("...", 1) == set()
    assert jaccard("a b c d", "a b c e") == pytest.approx(3 / 5)
    assert exact_groups(["x", " x ", "y", "x"]) == [[0, 1, 3]]


def test_union_find():
    uf = UnionFind(6)
    uf.union(4, 2)
    uf.union(2, 0)
    uf.union(3, 5)
    assert uf.groups() == [[0, 2, 4], [3, 5]]
    assert uf.find(4) == 0


def test_lsh_parameters_favour_recall():
    for t in (0.5, 0.7, 0.8, 0.9):
        bands, rows = lsh_params(t, 128)
        assert bands * rows <= 128
        assert collision_probability(t, bands, rows) >= 0.99
        assert collision_probability(t + (1 - t) / 2, bands, rows) > 0.9999
    assert collision_probability(0.3, *lsh_params(0.8, 128)) < 0.02


@pytest.fixture(scope="module")
def corpus():
    """300 real review snippets plus edited copies: small edits, case/punctuation changes and exact copies."""
    rows = load_bundled("rotten-tomatoes")["train"].rows
    texts = [r["text"] for r in rows if len(r["text"].split()) >= 12][:300]
    rng = random.Random(3)
    kinds = ["substitute", "delete", "insert", "typo", "case"]
    copies = [edit(texts[i], kinds[k % 5], rng) for k, i in enumerate(rng.sample(range(300), 40))]
    copies += [texts[i] for i in rng.sample(range(300), 10)]
    two_edits = [edit(edit(texts[i], "substitute", rng), "insert", rng) for i in rng.sample(range(300), 10)]
    return texts + copies + two_edits + ["", "!!!", "!!!"]


def test_matches_the_reference_exactly(corpus):
    """Every pair the reference rule accepts is found (recall); every pair found is accepted (precision)."""
    nd = near_duplicates(corpus, 0.8)
    ref = UnionFind(len(corpus))
    n_ref = 0
    norm = [normalize(t) for t in corpus]
    words, pairs = [shingles(t, 1) for t in corpus], [shingles(t, 2) for t in corpus]
    for i, j in itertools.combinations(range(len(corpus)), 2):  # is_near_duplicate, with the shingles cached
        if not norm[i]:
            continue
        a, b = words[i], words[j]
        if norm[i] == norm[j] or (
            len(a & b) >= 0.8 * len(a | b) and len(pairs[i] & pairs[j]) >= 0.4 * len(pairs[i] | pairs[j])
        ):
            ref.union(i, j)
            n_ref += 1
    assert n_ref >= 60
    assert nd.clusters == ref.groups()
    for i, j, s in nd.pairs:
        assert s == pytest.approx(jaccard(corpus[i], corpus[j]), abs=1e-3) and s >= 0.8
        assert is_near_duplicate(corpus[i], corpus[j]) or normalize(corpus[i]) == normalize(corpus[j])
    assert nd.similarity(0, 0) == 1.0
    # texts without words never match, even each other
    assert nd.cluster_of[-1] == nd.cluster_of[-2] == -1


def test_word_order_check_keeps_reordered_templates_apart():
    teams = "braves reds padres giants rockies astros dodgers marlins mets phillies pirates cardinals".split()
    rng = random.Random(0)
    days = []
    for _ in range(5):  # a daily table: the same teams and digits, in another order with other scores
        rng.shuffle(teams)
        days.append("standings " + " ".join(f"{t} {rng.randrange(10)} {rng.randrange(10)}" for t in teams))
    assert jaccard(days[0], days[1]) >= 0.8  # same words...
    assert near_duplicates(days, 0.8).pairs == []  # ...in another order: not copies


def test_deterministic_and_threshold(corpus):
    a, b = near_duplicates(corpus, 0.8), near_duplicates(list(corpus), 0.8)
    assert a.pairs == b.pairs and np.array_equal(a.cluster_of, b.cluster_of)
    strict = near_duplicates(corpus, 0.95)
    assert {(i, j) for i, j, _ in strict.pairs} <= {(i, j) for i, j, _ in a.pairs}
    assert all(s >= 0.95 for _, _, s in strict.pairs)
    with pytest.raises(ValueError):
        near_duplicates(corpus, 0.0)


def test_large_groups_of_one_template():
    """500 copies of a template with one slot: a single cluster, without checking all 125,000 pairs."""
    texts = [
        f"your order number {i} has shipped and will arrive within three to five business days"
        for i in range(500)
    ]
    nd = near_duplicates(texts + ["something else entirely"], 0.8)
    assert len(nd.clusters) == 1 and len(nd.clusters[0]) == 500
    assert nd.candidates < 20_000


def test_keep_first():
    texts = ["A good film.", "a good film", "A good film.", "Something else", "something else entirely here"]
    assert keep_first(texts) == [0, 3, 4]
    assert keep_first(texts, threshold=None) == [0, 1, 3, 4]


def _headlines(n: int = 120, seed: int = 0):
    """News-like pairs with repeated headlines: each headline 1-4 times, some copies edited by one word."""
    from tuneforge.data.formats import Example

    rng = random.Random(seed)
    vocab = [f"w{k}" for k in range(3000)]
    out = []
    for h in range(n):
        words = rng.sample(vocab, 12)
        for c in range(rng.choice([1, 1, 2, 3, 4])):
            w = list(words)
            if c and rng.random() < 0.5:
                w[rng.randrange(1, 11)] = rng.choice(vocab)  # a near-duplicate (one word changed)
            label = "sport" if h % 3 else "politics"
            out.append(Example(text=" ".join(w), label=label, source=f"news.jsonl:{len(out) + 1}"))
    return out


def test_split_grouped_never_creates_leakage():
    from tuneforge.data.audit import audit_splits
    from tuneforge.data.split import split, split_grouped

    items = _headlines()
    by_label = lambda e: e.label  # noqa: E731
    train, test = split_grouped(items, 0.2, seed=1, key=by_label)
    train, validation = split_grouped(train, 0.1, seed=0, key=by_label)
    r = audit_splits({"train": train, "validation": validation, "test": test}, "classification", pii=False)
    assert r.leaked == 0 and not [f for f in r.findings if f.code in ("leakage", "split_overlap")]
    assert sorted(e.source for e in train + validation + test) == sorted(e.source for e in items)
    assert abs(len(test) - 0.2 * len(items)) <= 4 and {e.label for e in test} == {"sport", "politics"}
    assert [e.source for e in test] == [e.source for e in items if e in test]  # file order kept
    assert split_grouped(items, 0.2, seed=1, key=by_label) == split_grouped(items, 0.2, seed=1, key=by_label)
    # the plain split divides the repeated headlines: the case the grouped split exists for
    plain_train, plain_test = split(items, 0.2, seed=1, key=by_label)
    assert audit_splits({"train": plain_train, "test": plain_test}, "classification", pii=False).leaked > 0
