"""``prepare``: every dropped row has a reason, splits do not leak, and runs are repeatable."""

from __future__ import annotations

import json
from collections import Counter

import pytest
from planted import build

from tuneforge.data.audit import audit
from tuneforge.data.prepare import clean_text, prepare, split_groups
from tuneforge.errors import DataError


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    return build(tmp_path_factory.mktemp("planted"))


@pytest.fixture(scope="module")
def prepared(planted, tmp_path_factory):
    out = tmp_path_factory.mktemp("prepared")
    return prepare(planted.train, out, against=[planted.test]), out


def _read(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_every_row_is_kept_or_rejected_with_a_reason(planted, prepared):
    result, out = prepared
    rejects = _read(out / "rejects.jsonl")
    total_lines = len(planted.train.read_text().splitlines())
    assert result.rows_in == total_lines
    assert sum(result.kept.values()) + len(rejects) == total_lines
    assert Counter(r["reason"] for r in rejects) == Counter(result.rejected)
    by_line = {int(r["source"].rsplit(":", 1)[1]): r for r in rejects}
    assert len(by_line) == len(rejects)  # one reason per dropped row
    expected = {
        "exact_duplicate": "exact_duplicate",
        "near_duplicate": "near_duplicate",
        "leakage": "leakage",
        "empty_field": "empty_field",
        "missing_field": "missing_field",
        "malformed": "malformed",
        "bad_encoding": "bad_encoding",
        "conflicting_labels": "conflicting_labels",
    }
    for kind, reason in expected.items():
        for line in planted.lines[kind]:
            assert line in by_line and by_line[line]["reason"] == reason, (kind, line, by_line.get(line))
    for line in planted.lines["exact_duplicate"]:
        assert by_line[line]["detail"] == f"exact duplicate of line {planted.originals[line]}"
    for line in planted.lines["near_duplicate"]:
        assert by_line[line]["detail"].startswith(
            f"near-duplicate of line {planted.originals[line]} (similarity"
        )
    for line in planted.lines["leakage"]:
        assert f"test.jsonl:{planted.test_lines[line]}" in by_line[line]["detail"]
    for line in planted.lines["conflicting_labels"]:  # the contradicted base row goes too
        assert by_line[planted.originals[line]]["reason"] == "conflicting_labels"
    assert by_line[planted.lines["malformed"][0]]["raw"].startswith('{"text": "an unterminated')
    # rows with fixable problems are kept, cleaned; base rows are never rejected except for conflicts
    conflicts = {planted.originals[n] for n in planted.lines["conflicting_labels"]}
    assert not (set(planted.base) - conflicts) & set(by_line)
    assert result.cleaned["control_chars"] == 2
    kept = [r for s in ("train", "validation", "test") for r in _read(out / f"{s}.jsonl")]
    assert not any("\x07" in r["text"] or "\x1b" in r["text"] or r["text"] != r["text"].strip() for r in kept)


def test_outputs_are_clean_and_split_without_leakage(planted, prepared):
    result, out = prepared
    assert set(result.kept) == {"train", "validation", "test"}
    n = sum(result.kept.values())
    assert result.kept["test"] == pytest.approx(0.1 * n, abs=2) and result.kept[
        "validation"
    ] == pytest.approx(0.1 * n, abs=2)
    for split, counts in result.labels.items():  # stratified: each split keeps the label mix
        share = counts["fresh"] / sum(counts.values())
        overall = sum(c["fresh"] for c in result.labels.values()) / n
        assert share == pytest.approx(overall, abs=0.05), split
    r = audit([out / "train.jsonl", out / "validation.jsonl", out / "test.jsonl", planted.test], pii=False)
    assert r.leaked == 0 and not any(f.code in ("split_overlap", "leakage") for f in r.findings)
    assert all(s.exact_duplicates == s.near_duplicates == s.conflicting_labels == 0 for s in r.splits)
    summary = json.loads((out / "prepare.json").read_text())
    assert summary["kept"] == result.kept and summary["rejected"] == result.rejected


def test_running_twice_gives_identical_files(planted, prepared, tmp_path):
    _, out = prepared
    prepare(planted.train, tmp_path, against=[planted.test])
    for name in ("train.jsonl", "validation.jsonl", "test.jsonl", "rejects.jsonl", "prepare.json"):
        assert (tmp_path / name).read_bytes() == (out / name).read_bytes(), name
    prepare(planted.train, tmp_path, against=[planted.test])  # and again into the same folder
    assert (tmp_path / "train.jsonl").read_bytes() == (out / "train.jsonl").read_bytes()
    other = prepare(planted.train, tmp_path / "seed7", against=[planted.test], seed=7)
    assert (tmp_path / "seed7" / "test.jsonl").read_bytes() != (out / "test.jsonl").read_bytes()
    assert sum(other.kept.values()) == sum(prepared[0].kept.values())


def test_keep_near_duplicates_keeps_each_group_in_one_split(planted, tmp_path):
    result = prepare(
        planted.train, tmp_path, drop_near_duplicates=False, test_fraction=0.3, validation_fraction=0.3
    )
    assert "near_duplicate" not in result.rejected
    where = {}
    for split in ("train", "validation", "test"):
        for row in _read(tmp_path / f"{split}.jsonl"):
            where.setdefault(row["text"], set()).add(split)
    for line in planted.lines["near_duplicate"]:
        assert where[planted.texts[line]] == where[planted.texts[planted.originals[line]]]


def test_on_conflict_majority(tmp_path):
    rows = [{"text": "a film about nothing much at all", "label": lab} for lab in ("pos", "pos", "neg")]
    rows += [{"text": "two people argue about a film", "label": lab} for lab in ("pos", "neg")]
    rows += [{"text": f"filler row number {i} with its own words", "label": "pos"} for i in range(10)]
    path = tmp_path / "rows.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    result = prepare(path, tmp_path / "out", on_conflict="majority", validation_fraction=0, test_fraction=0)
    rejects = _read(tmp_path / "out" / "rejects.jsonl")
    reasons = {int(r["source"].rsplit(":", 1)[1]): r["reason"] for r in rejects}
    assert reasons == {
        2: "exact_duplicate",
        3: "conflicting_labels",
        4: "conflicting_labels",
        5: "conflicting_labels",
    }
    assert result.kept == {"train": 11, "validation": 0, "test": 0}
    with pytest.raises(DataError, match="on_conflict"):
        prepare(path, tmp_path / "x", on_conflict="vote")


def test_cleaning():
    assert clean_text("  Cafe\u0301\x07 \u200b ") == (
        "Café",
        {"unicode_nfc", "control_chars", "invisible_chars", "whitespace_stripped"},
    )
    assert clean_text("fine") == ("fine", set())


def test_control_characters_only_is_rejected(tmp_path):
    path = tmp_path / "rows.jsonl"
    path.write_text(
        json.dumps({"text": "\x07\x08", "label": "a"})
        + "\n"
        + json.dumps({"text": "ok", "label": "a"})
        + "\n"
    )
    prepare(path, tmp_path / "out", validation_fraction=0, test_fraction=0)
    (rej,) = _read(tmp_path / "out" / "rejects.jsonl")
    assert rej["reason"] == "unfixable_control_chars" and rej["row"] == {"text": "\x07\x08", "label": "a"}


def test_chat_rows(tmp_path):
    rows = [
        {
            "messages": [
                {"role": "user", "content": f"question {i} about films"},
                {"role": "assistant", "content": f"answer {i} with detail"},
            ]
        }
        for i in range(20)
    ]
    rows.append(rows[3])
    rows.append({"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": " "}]})
    path = tmp_path / "chat.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    result = prepare(path, tmp_path / "out")
    assert result.format == "messages" and result.rejected == {"empty_turn": 1, "exact_duplicate": 1}
    assert sum(result.kept.values()) == 20


def test_split_groups_is_stratified_and_seeded():
    groups = [[i] for i in range(100)]
    strata = ["a" if i < 80 else "b" for i in range(100)]
    out = split_groups(groups, strata, 0.1, 0.2, seed=1)
    c = Counter((s, out[i]) for i, s in enumerate(strata))
    assert (
        c[("a", "test")] == 16
        and c[("b", "test")] == 4
        and c[("a", "validation")] == 8
        and c[("b", "validation")] == 2
    )
    assert (
        out
        == split_groups(groups, strata, 0.1, 0.2, seed=1)
        != split_groups(groups, strata, 0.1, 0.2, seed=2)
    )
