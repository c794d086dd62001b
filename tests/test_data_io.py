import json

import pytest

from tuneforge.data.bundled import resolve
from tuneforge.data.formats import detect_format, to_examples
from tuneforge.data.io import read_table
from tuneforge.errors import DataError


def test_reads_jsonl_csv_tsv_parquet_with_line_numbers(tmp_path):
    rows = [{"text": "good film", "label": "pos"}, {"text": "bad, very bad", "label": "neg"}]
    (tmp_path / "a.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    (tmp_path / "a.csv").write_text('text,label\ngood film,pos\n"bad, very bad",neg\n')
    (tmp_path / "a.tsv").write_text("text\tlabel\ngood film\tpos\nbad, very bad\tneg\n")
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "a.parquet")
    for name in ("a.jsonl", "a.csv", "a.tsv", "a.parquet"):
        t = read_table(tmp_path / name)
        assert t.rows == rows, name
    assert read_table(tmp_path / "a.csv").lines == [2, 3]


def test_malformed_rows_name_file_and_line(tmp_path):
    p = tmp_path / "bad.jsonl"
    p.write_text('{"text": "ok", "label": "a"}\n{"text": "broken", \n[1, 2]\n')
    with pytest.raises(
        DataError,
        match=r"(?s)bad.jsonl:2: not valid JSON.*bad.jsonl:3: expected a JSON object.*tuneforge data prepare",
    ):
        read_table(p)
    t = read_table(p, strict=False)
    assert len(t.rows) == 1 and [b.line for b in t.bad] == [2, 3]
    c = tmp_path / "bad.csv"
    c.write_text("text,label\nfine,a\ntoo,many,fields\n")
    with pytest.raises(DataError, match="bad.csv:3: has 3 fields, the header has 2"):
        read_table(c)


def test_missing_file_and_unknown_type(tmp_path):
    with pytest.raises(DataError, match="file not found"):
        read_table(tmp_path / "nope.jsonl")
    (tmp_path / "x.xlsx").write_text("")
    with pytest.raises(DataError, match="unknown file type"):
        read_table(tmp_path / "x.xlsx")
    with pytest.raises(DataError, match="not a bundled dataset"):
        resolve("no-such-data")


def test_missing_column_is_explained(tmp_path):
    p = tmp_path / "d.jsonl"
    p.write_text(json.dumps({"review": "x", "label": "a"}) + "\n")
    t = read_table(p)
    with pytest.raises(DataError, match="column 'text' not found.*data.text_column"):
        to_examples(t, "classification")
    with pytest.raises(DataError, match="(?s)cannot tell the format.*Accepted row shapes"):
        detect_format(t)
    exs, fmt = to_examples(t, "auto", text_column="review")
    assert fmt == "classification" and exs[0].text == "x" and exs[0].source.endswith("d.jsonl:1")


def test_bundled_aliases_have_their_splits():
    train, fmt = resolve("rotten-tomatoes")
    test, _ = resolve("rotten-tomatoes:test")
    assert fmt == "classification" and len(train) == 10196 and len(test) == 2549
    labels = {r["label"] for r in train.rows}
    assert labels == {"fresh", "rotten"}
    news, _ = resolve("20newsgroups")
    assert len({r["label"] for r in news.rows}) == 20
