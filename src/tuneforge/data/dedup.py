"""Exact and near-duplicate detection: normalisation, hashing, MinHash/LSH and union-find clusters.

Two texts are **exact duplicates** when they are equal after ``exact_key`` (Unicode NFC, runs of
whitespace collapsed, ends stripped): what a person would call "the same row".

Two texts are **near-duplicates** when, after ``normalize`` (NFKC, case-folded, punctuation removed):

- the Jaccard similarity of their sets of words is at least ``threshold`` (one changed word in a
  20-word text gives 19/21 = 0.90; in a 10-word text 9/11 = 0.82), and
- their word order mostly agrees: the Jaccard similarity of their sets of word pairs (2-word
  shingles) is at least ``threshold / 2``. This keeps templated texts that share a vocabulary but
  not a sequence (e.g. daily sports tables listing the same teams in another order) apart.

Finding them takes three steps, all deterministic:

1. **MinHash**: each text's word set is summarised by ``num_perm`` minimum hash values
   (numpy-vectorised over all words of all texts at once; multiply-shift hashing).
2. **LSH banding**: the signature is cut into ``bands`` bands of ``rows`` values; texts that agree
   on a whole band become candidate pairs. ``lsh_params`` picks the bands so that a pair exactly at
   the threshold becomes a candidate with probability >= 0.99 (recall first).
3. **Verification**: every candidate pair's real similarities are computed from the shingle sets;
   pairs that fail the rule above are discarded, so MinHash noise never causes a false positive.
   Verified pairs are joined into clusters with union-find.

Texts with the same normalised form (case or punctuation edits) skip MinHash and are joined with
similarity 1.0. ``is_near_duplicate`` is the plain-Python reference the tests compare against.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from tuneforge.data.progress import track

_NON_WORD = re.compile(r"[\W_]+")
_ASCII_NON_WORD = str.maketrans({c: " " for c in map(chr, range(128)) if not c.isalnum()})
ORDER_FACTOR = 0.5  # word-pair similarity must reach this fraction of the threshold


def exact_key(text: str) -> str:
    """The form two texts must share to be exact duplicates: NFC, whitespace collapsed, stripped."""
    return " ".join(unicodedata.normalize("NFC", text).split())


def normalize(text: str) -> str:
    """The form near-duplicates are compared in: NFKC, case-folded, punctuation and extra spaces removed."""
    return " ".join(words_of(text))


def words_of(text: str) -> list[str]:
    """The words of the normalised text."""
    t = unicodedata.normalize("NFKC", text).casefold()
    return (t.translate(_ASCII_NON_WORD) if t.isascii() else _NON_WORD.sub(" ", t)).split()


def shingles(text: str, ngram: int = 1) -> set[tuple[str, ...]]:
    """Word ``ngram``-shingles of the normalised text (a text shorter than ``ngram`` words is one shingle)."""
    words = words_of(text)
    if not words:
        return set()
    if len(words) < ngram:
        return {tuple(words)}
    return {tuple(words[i : i + ngram]) for i in range(len(words) - ngram + 1)}


def jaccard(a: str, b: str, ngram: int = 1) -> float:
    """Reference Jaccard similarity of two texts' word-``ngram`` sets (plain Python; 0.0 if both empty)."""
    sa, sb = shingles(a, ngram), shingles(b, ngram)
    if not sa and not sb:
        return 0.0
    return len(sa & sb) / len(sa | sb)


def is_near_duplicate(a: str, b: str, threshold: float = 0.8) -> bool:
    """Reference rule: word-set Jaccard >= threshold and word-pair Jaccard >= threshold / 2."""
    return jaccard(a, b, 1) >= threshold and jaccard(a, b, 2) >= threshold * ORDER_FACTOR


class UnionFind:
    """Disjoint sets over 0..n-1 with path halving; the root of a set is its smallest member."""

    def __init__(self, n: int) -> None:
        self.parent = list(range(n))

    def find(self, x: int) -> int:
        parent = self.parent
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    def union(self, a: int, b: int) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            if rb < ra:
                ra, rb = rb, ra
            self.parent[rb] = ra

    def groups(self, min_size: int = 2) -> list[list[int]]:
        """Sets with at least ``min_size`` members, each sorted, ordered by their smallest member."""
        out: dict[int, list[int]] = {}
        for i in range(len(self.parent)):
            out.setdefault(self.find(i), []).append(i)
        return [g for _, g in sorted(out.items()) if len(g) >= min_size]


def exact_groups(texts: Sequence[str]) -> list[list[int]]:
    """Indices of texts with equal ``exact_key``: groups of two or more, in order of first appearance."""
    seen: dict[str, list[int]] = {}
    for i, t in enumerate(texts):
        seen.setdefault(exact_key(t), []).append(i)
    return [g for g in seen.values() if len(g) > 1]


def duplicate_groups(texts: Sequence[str], threshold: float | None = 0.8) -> list[list[int]]:
    """Every index in exactly one group: exact duplicates and (unless ``threshold`` is None) near-duplicates
    joined, singletons for the rest; groups sorted by their first index. What a split must keep together."""
    uf = UnionFind(len(texts))
    for g in exact_groups(texts):
        for i in g[1:]:
            uf.union(g[0], i)
    if threshold is not None:
        for g in near_duplicates(texts, threshold).clusters:
            for i in g[1:]:
                uf.union(g[0], i)
    return uf.groups(min_size=1)


def collision_probability(similarity: float, bands: int, rows: int) -> float:
    """Probability that two texts of this word-set similarity agree on at least one whole band."""
    return 1.0 - (1.0 - similarity**rows) ** bands


def lsh_params(threshold: float, num_perm: int, recall: float = 0.99) -> tuple[int, int]:
    """(bands, rows): the most rows per band (fewest needless candidates) that still make a pair *at* the
    threshold a candidate with probability >= ``recall`` (more similar pairs: higher still).

    False candidates only cost a verification; missed pairs are lost, so recall comes first.
    At threshold 0.8 with 128 permutations this gives 21 bands of 6 rows: P(candidate) is 0.998 at
    similarity 0.8, 0.28 at 0.5 and 0.015 at 0.3.
    """
    for rows in range(num_perm, 0, -1):
        bands = num_perm // rows
        if collision_probability(threshold, bands, rows) >= recall:
            return bands, rows
    return num_perm, 1


def _splitmix64(x: np.ndarray) -> np.ndarray:
    """A strong 64-bit mixing function (uint64 in, uint64 out; wraps around by design)."""
    x = x + np.uint64(0x9E3779B97F4A7C15)
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


@dataclass
class _Sets:
    """Sorted unique shingle hashes of many texts, concatenated: text k is ``h[offsets[k]:offsets[k+1]]``."""

    h: np.ndarray  # (S,) uint64
    offsets: np.ndarray  # (D + 1,) int64

    def __getitem__(self, k: int) -> np.ndarray:
        return self.h[self.offsets[k] : self.offsets[k + 1]]


@dataclass
class NearDuplicates:
    """Result of ``near_duplicates``: verified pairs and clusters over the input indices."""

    n: int
    threshold: float
    clusters: list[list[int]]  # sets of 2+ indices, each sorted, ordered by first index
    pairs: list[tuple[int, int, float]]  # verified (i, j, word-set similarity), i < j, sorted
    candidates: int = 0  # LSH candidate pairs verified
    bands: int = 0
    rows: int = 0
    # (n,) cluster id of each text, or -1
    cluster_of: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    _rep: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64), repr=False)
    _words: _Sets | None = field(default=None, repr=False)
    _pairs: _Sets | None = field(default=None, repr=False)

    def similarity(self, i: int, j: int) -> float:
        """Word-set Jaccard similarity of texts ``i`` and ``j`` (the figure reported for a pair)."""
        ri, rj = int(self._rep[i]), int(self._rep[j])
        assert self._words is not None
        if ri == rj:
            return 1.0 if self._words[ri].size else 0.0
        return _jaccard_sorted(self._words[ri], self._words[rj])


def _jaccard_sorted(a: np.ndarray, b: np.ndarray) -> float:
    if a.size == 0 or b.size == 0:
        return 0.0
    inter = np.intersect1d(a, b, assume_unique=True).size
    return inter / (a.size + b.size - inter)


def _word_hashes(texts: list[list[str]]) -> tuple[np.ndarray, np.ndarray]:
    """(W,) uint64 hash of every word of every text, concatenated, and (D,) words per text.

    Words get ids in order of first appearance (deterministic, unlike Python's salted ``hash``).
    """
    words = [w for t in texts for w in t]
    index = {w: i for i, w in enumerate(dict.fromkeys(words))}
    ids = np.fromiter(map(index.__getitem__, words), dtype=np.uint64, count=len(words))
    lengths = np.fromiter(map(len, texts), dtype=np.int64, count=len(texts))
    return _splitmix64(ids + np.uint64(1)), lengths


def _shingle_sets(flat: np.ndarray, lengths: np.ndarray, ngram: int) -> _Sets:
    """Sets of hashed word-``ngram`` shingles per text (a text under ``ngram`` words is one shingle)."""
    d = lengths.size
    starts = np.zeros(d + 1, dtype=np.int64)
    np.cumsum(lengths, out=starts[1:])
    n_win = np.maximum(lengths - ngram + 1, 0)  # (D,) windows per text
    doc = np.repeat(np.arange(d), n_win)  # (S,) text of each window
    pos = np.arange(int(n_win.sum())) - np.repeat(np.cumsum(n_win) - n_win, n_win) + starts[:-1][doc]
    h = np.zeros(pos.size, dtype=np.uint64)
    for k in range(ngram):
        h = _splitmix64(h * np.uint64(0x100000001B3) ^ flat[pos + k])
    short = np.nonzero((lengths > 0) & (lengths < ngram))[0]
    if short.size:
        hs = np.zeros(short.size, dtype=np.uint64)
        for k in range(ngram - 1):
            on = lengths[short] > k
            hs[on] = _splitmix64(hs[on] * np.uint64(0x100000001B3) ^ flat[starts[short[on]] + k])
        h, doc = np.concatenate([h, hs]), np.concatenate([doc, short])
    # Sort by (text, hash) with one uint64 sort: text index in the high bits, the hash's top bits below it.
    doc_bits = max(1, int(d).bit_length())
    key = np.sort((doc.astype(np.uint64) << np.uint64(64 - doc_bits)) | (h >> np.uint64(doc_bits)))
    key = key[np.concatenate([[True], key[1:] != key[:-1]])] if key.size else key
    doc = (key >> np.uint64(64 - doc_bits)).astype(np.int64)
    h = key & np.uint64((1 << (64 - doc_bits)) - 1)  # (S,) shingle hashes of 64 - doc_bits bits
    offsets = np.zeros(d + 1, dtype=np.int64)
    np.cumsum(np.bincount(doc, minlength=d), out=offsets[1:])
    return _Sets(h, offsets)


def _minhash(sets: _Sets, num_perm: int, seed: int) -> np.ndarray:
    """(D, num_perm) uint32 MinHash signatures; every text must have at least one shingle."""
    rng = np.random.default_rng(seed)
    a = rng.integers(1, 2**63, size=num_perm, dtype=np.uint64) | np.uint64(1)
    b = rng.integers(0, 2**63, size=num_perm, dtype=np.uint64)
    sig = np.empty((sets.offsets.size - 1, num_perm), dtype=np.uint32)
    starts = sets.offsets[:-1]
    for k in range(num_perm):
        v = ((sets.h * a[k] + b[k]) >> np.uint64(32)).astype(np.uint32)  # (S,) hash k of every shingle
        sig[:, k] = np.minimum.reduceat(v, starts)
    return sig


def _candidates(sig: np.ndarray, bands: int, rows: int, max_bucket: int = 50) -> np.ndarray:
    """Candidate pairs (P, 2) of signature rows that agree on a whole band, i < j, unique.

    Within a bucket every pair is a candidate; buckets larger than ``max_bucket`` (many copies of one
    template) give a chain and a star instead, which still joins them into one cluster.
    """
    rng = np.random.default_rng(12345)
    mult = rng.integers(1, 2**63, size=rows, dtype=np.uint64) | np.uint64(1)
    out: list[np.ndarray] = []
    for band in range(bands):
        block = sig[:, band * rows : (band + 1) * rows].astype(np.uint64)  # (D, rows)
        key = _splitmix64((block * mult).sum(axis=1, dtype=np.uint64) + np.uint64(band))  # (D,)
        order = np.argsort(key, kind="stable")
        ks = key[order]
        same = ks[1:] == ks[:-1]
        if not same.any():
            continue
        idx = np.nonzero(same)[0]
        out.append(np.stack([order[idx], order[idx + 1]], axis=1))  # neighbours in each bucket (a chain)
        edges = np.flatnonzero(np.diff(np.concatenate([[0], same.astype(np.int8), [0]])))
        for s, e in zip(edges[::2].tolist(), edges[1::2].tolist()):
            members = order[s : e + 1]
            if 2 < members.size <= max_bucket:
                i, j = np.triu_indices(members.size, k=2)
                out.append(np.stack([members[i], members[j]], axis=1))
            elif members.size > max_bucket:
                out.append(np.stack([np.full(members.size - 1, members[0]), members[1:]], axis=1))
    if not out:
        return np.zeros((0, 2), dtype=np.int64)
    pairs = np.sort(np.concatenate(out), axis=1).astype(np.int64)
    return np.unique(pairs, axis=0)


def near_duplicates(
    texts: Sequence[str], threshold: float = 0.8, num_perm: int = 128, seed: int = 1
) -> NearDuplicates:
    """Find near-duplicate texts (see the module docstring for the rule), verified and clustered.

    Texts whose normalised form is empty (no letters or digits) never match anything.
    """
    if not 0.0 < threshold <= 1.0:
        raise ValueError(f"near-duplicate threshold must be in (0, 1], got {threshold}")
    n = len(texts)
    first: dict[str, int] = {}
    rep = np.empty(n, dtype=np.int64)  # (n,) each text's index in `uniq`
    uniq: list[list[str]] = []  # words of each distinct normalised text
    uniq_of: list[int] = []  # first input index of each distinct text
    for i, t in enumerate(track(texts, "near-duplicates: reading words", n)):
        w = words_of(t)
        key = " ".join(w)
        k = first.get(key)
        if k is None:
            k = first[key] = len(uniq)
            uniq.append(w)
            uniq_of.append(i)
        rep[i] = k
    flat, lengths = _word_hashes(uniq)
    words, bigrams = _shingle_sets(flat, lengths, 1), _shingle_sets(flat, lengths, 2)
    bands, rows = lsh_params(threshold, num_perm)
    uf = UnionFind(n)
    pairs: list[tuple[int, int, float]] = []
    # The same normalised text: similarity 1.0 (unless it is empty), no hashing needed.
    first_of: dict[int, int] = {}
    for i in range(n):
        k = int(rep[i])
        if lengths[k] == 0:
            continue
        if k in first_of:
            uf.union(first_of[k], i)
            pairs.append((first_of[k], i, 1.0))
        else:
            first_of[k] = i
    # Distinct normalised texts: MinHash + LSH candidates, then verification with the real similarities.
    nonempty = np.nonzero(lengths > 0)[0]
    n_cand = 0
    if nonempty.size > 1:
        sub = (
            words
            if nonempty.size == len(uniq)
            else _Sets(
                np.concatenate([words[k] for k in nonempty]),
                np.concatenate([[0], np.cumsum(np.diff(words.offsets)[nonempty])]),
            )
        )
        cand = nonempty[_candidates(_minhash(sub, num_perm, seed), bands, rows)]
        n_cand = len(cand)
        for a, b in track(cand.tolist(), "near-duplicates: verifying candidate pairs", n_cand):
            s = _jaccard_sorted(words[a], words[b])
            if s >= threshold and _jaccard_sorted(bigrams[a], bigrams[b]) >= threshold * ORDER_FACTOR:
                i, j = uniq_of[a], uniq_of[b]
                uf.union(i, j)
                pairs.append((min(i, j), max(i, j), round(s, 4)))
    clusters = uf.groups()
    cluster_of = np.full(n, -1, dtype=np.int64)
    for c, g in enumerate(clusters):
        cluster_of[g] = c
    pairs.sort()
    return NearDuplicates(n, threshold, clusters, pairs, n_cand, bands, rows, cluster_of, rep, words, bigrams)


def keep_first(texts: Sequence[str], threshold: float | None = 0.8) -> list[int]:
    """Indices of the texts to keep when de-duplicating: the first of each group of exact duplicates and,
    unless ``threshold`` is None, of near-duplicates (e.g. to clean a corpus before splitting it)."""
    drop: set[int] = set()
    for g in exact_groups(texts):
        drop.update(g[1:])
    if threshold is not None:
        for g in near_duplicates(texts, threshold).clusters:
            drop.update(g[1:])
    return [i for i in range(len(texts)) if i not in drop]
