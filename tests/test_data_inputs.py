"""Bad data inputs, table-driven: each becomes a clear DataError naming the file, line or field and the fix,
or simply works; ``data prepare`` accounts for every row (rows in = rows kept + rows rejected)."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest

from tuneforge.data import io as data_io
from tuneforge.data.audit import audit
from tuneforge.data.formats import to_examples
from tuneforge.data.io import read_table
from tuneforge.data.prepare import prepare
from tuneforge.errors import DataError

CHAT = {
    "messages": [{"role": "user", "content": "hi there"}, {"role": "assistant", "content": "hello to you"}]
}


def _jsonl(*rows) -> bytes:
    return b"".join((r if isinstance(r, bytes) else json.dumps(r).encode()) + b"\n" for r in rows)


def _examples(path: Path):
    return to_examples(read_table(path))


def _prepare_into_file(path: Path):
    out = path.parent / "out.txt"
    out.write_text("not a folder")
    return prepare(path, out)


# name, file name, bytes, action, regex the DataError message must match (in order)
ERRORS = [
    (
        "duplicated CSV header",
        "d.csv",
        b"text,label,text\na,b,c\n",
        read_table,
        r"d\.csv:1: the header names column 'text' twice \(columns 1 and 3\).*Rename one",
    ),
    (
        "gzip suffix on a plain file",
        "d.jsonl.gz",
        _jsonl({"text": "a", "label": "b"}),
        read_table,
        r"d\.jsonl\.gz: not a valid gzip file.*remove the '\.gz' suffix",
    ),
    (
        "bz2 suffix on a plain file",
        "d.csv.bz2",
        b"text,label\na,b\n",
        read_table,
        r"d\.csv\.bz2: not a valid bzip2 file.*remove the '\.bz2' suffix",
    ),
    (
        "bytes that are not UTF-8 in JSONL (latin-1 export)",
        "d.jsonl",
        _jsonl({"text": "fine", "label": "a"}, b'{"text": "caf\xe9 au lait", "label": "b"}'),
        read_table,
        r"d\.jsonl:2: bytes that are not UTF-8 \(0xE9 at column 14\); re-export the file as UTF-8",
    ),
    (
        "bytes that are not UTF-8 in CSV",
        "d.csv",
        b"text,label\nfine,a\nna\xefve,b\n",
        read_table,
        r"d\.csv:3: bytes that are not UTF-8 \(0xEF at column 3\)",
    ),
    (
        "a JSON object where the text should be",
        "d.jsonl",
        _jsonl({"text": "ok", "label": "a"}, {"text": {"title": "x"}, "label": "b"}),
        _examples,
        r"d\.jsonl:2: field 'text' is a JSON object, not text.*as a string",
    ),
    (
        "null assistant content",
        "d.jsonl",
        _jsonl(
            CHAT, {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": None}]}
        ),
        _examples,
        r"d\.jsonl:2: messages\[1\] \(a 'assistant' turn\) has no content \(null\).*data prepare",
    ),
    (
        "a label that is a list",
        "d.jsonl",
        _jsonl({"text": "ok", "label": ["a", "b"]}),
        _examples,
        r"d\.jsonl:1: field 'label' is a list; a label must be a string, number or boolean",
    ),
    (
        "audit of a CSV with custom columns",
        "d.csv",
        b"sentence,target\nhello there,a\n",
        audit,
        r"d\.csv: cannot tell the format.*--text-column NAME --label-column NAME",
    ),
    (
        "data prepare --out an existing file",
        "d.jsonl",
        _jsonl({"text": "a b c", "label": "x"}),
        _prepare_into_file,
        r"out\.txt: --out exists and is a file; give a folder",
    ),
]


@pytest.mark.parametrize("name,file,data,action,pattern", ERRORS, ids=[e[0] for e in ERRORS])
def test_bad_input_is_a_clear_error(tmp_path, name, file, data, action, pattern):
    path = tmp_path / file
    path.write_bytes(data)
    with pytest.raises(DataError) as e:
        action(path)
    assert re.search(pattern, str(e.value), re.S), str(e.value)


def test_csv_field_over_the_limit_names_the_line(tmp_path, monkeypatch):
    monkeypatch.setattr(data_io, "CSV_FIELD_LIMIT", 2**20)  # the real limit is 64 MiB: same path, less disk
    path = tmp_path / "big.csv"
    path.write_text("text,label\nsmall,a\n" + "x" * (2**20 + 10) + ",b\n")
    with pytest.raises(DataError, match=r"big\.csv:3: a field is longer than 1 MiB.*JSONL"):
        read_table(path)


def test_named_pipe_is_refused_without_hanging(tmp_path):
    fifo = tmp_path / "data.jsonl"
    os.mkfifo(fifo)  # opening it for reading would block until a writer appears
    with pytest.raises(
        DataError, match=r"data\.jsonl: not a regular file \(a named pipe.*save the data to a file"
    ):
        read_table(fifo)
    with pytest.raises(DataError, match="not a regular file"):
        audit(fifo)


# name, file name, bytes, check of what is read
WORKS = [
    (
        "UTF-8 BOM in CSV (Excel 'CSV UTF-8')",
        "d.csv",
        "\ufefftext,label\ngood film,pos\n".encode(),
        lambda t: t.rows == [{"text": "good film", "label": "pos"}],
    ),
    (
        "UTF-8 BOM in JSONL",
        "d.jsonl",
        b"\xef\xbb\xbf" + _jsonl({"text": "good film", "label": "pos"}),
        lambda t: t.rows == [{"text": "good film", "label": "pos"}] and not t.bad,
    ),
    (
        "a CSV field over 128 KB",
        "d.csv",
        b"text,label\n" + b"word " * 40_000 + b",pos\n",
        lambda t: len(t.rows[0]["text"]) == 200_000 and t.rows[0]["label"] == "pos",
    ),
    (
        "label spellings 0, 1, 1.0, '1', ' 1.0 ', true",
        "d.jsonl",
        _jsonl(
            *({"text": f"row {i}", "label": v} for i, v in enumerate([0, 1, 1.0, "1", " 1.0 ", True, 2.5]))
        ),
        lambda t: [e.label for e in to_examples(t)[0]] == ["0", "1", "1", "1", "1", "true", "2.5"],
    ),
    (
        "numbers as text",
        "d.jsonl",
        _jsonl({"text": 42, "label": "a"}),
        lambda t: to_examples(t)[0][0].text == "42",
    ),
]


@pytest.mark.parametrize("name,file,data,check", WORKS, ids=[w[0] for w in WORKS])
def test_input_that_must_simply_work(tmp_path, name, file, data, check):
    path = tmp_path / file
    path.write_bytes(data)
    assert check(read_table(path))


def _records(path: Path) -> int:
    """Data records in a file, counted independently of tuneforge: non-blank lines (minus a CSV header)."""
    lines = [x for x in path.read_bytes().split(b"\n") if x.strip()]
    return len(lines) - (path.suffix == ".csv")


BAD_FILES = {  # file -> (bytes, {reason: rows rejected for it})
    "empty-records.csv": (
        b"text,label\nthe first film,pos\n,\n , \nthe second film,neg\n,,\n",
        {"empty_field": 2, "malformed": 1},
    ),
    "mixed.jsonl": (
        _jsonl(
            {"text": "a film about dogs and their people", "label": "pos"},
            b'{"text": "caf\xe9", "label": "neg"}',
            b'{"text": "cut off',
            {"text": None, "label": "pos"},
            {"text": {"nested": 1}, "label": "pos"},
            {"text": "a film about cats and the sea", "label": "Neg"},
            {"text": "a third film about trains", "label": "neg"},
            {"text": "a fourth film about planes", "label": "neg"},
        ),
        {"bad_encoding": 1, "malformed": 1, "empty_field": 1, "invalid_row": 1},
    ),
    "chat.jsonl": (
        _jsonl(
            CHAT,
            {"messages": [{"role": "user", "content": "anyone there?"}]},
            {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": None}]},
            {
                "messages": [
                    {"role": "user", "content": "what is two plus two"},
                    {"role": "assistant", "content": "four"},
                ]
            },
        ),
        {"no_assistant_turn": 1, "empty_turn": 1},
    ),
    "pairs.jsonl": (
        _jsonl(
            {"prompt": "say hello", "chosen": "hello there", "rejected": "go away"},
            {"prompt": "say bye", "chosen": "goodbye", "rejected": "goodbye"},
            {"prompt": "count to three", "chosen": "one two three", "rejected": "three two one"},
        ),
        {"chosen_equals_rejected": 1},
    ),
}


@pytest.mark.parametrize("file", list(BAD_FILES))
def test_prepare_accounts_for_every_row(tmp_path, file):
    data, expected = BAD_FILES[file]
    path = tmp_path / file
    path.write_bytes(data)
    result = prepare(path, tmp_path / "out", validation_fraction=0, test_fraction=0)
    rejects = [json.loads(x) for x in (tmp_path / "out" / "rejects.jsonl").read_text().splitlines()]
    kept = sum(len((tmp_path / "out" / f"{s}.jsonl").read_text().splitlines()) for s in result.kept)
    assert result.rows_in == _records(path) == kept + len(rejects)
    assert result.rejected == expected
    assert all(r["source"].startswith(f"{path}:") and r["detail"] for r in rejects)
    if file == "mixed.jsonl":  # 'Neg' takes the more common spelling 'neg'
        rows = [json.loads(x) for x in (tmp_path / "out" / "train.jsonl").read_text().splitlines()]
        assert {r["label"] for r in rows} == {"pos", "neg"} and result.cleaned["label_spelling"] == 1


def _cli(argv: list[str], capsys) -> tuple[int, str]:
    """Run the CLI; (exit code, everything it printed with all whitespace removed: rich wraps lines)."""
    from tuneforge.cli import main

    code = 0
    try:
        main(argv)
    except SystemExit as e:
        code = e.code
    out = capsys.readouterr()
    return code, re.sub(r"\s+", "", out.out + out.err)


def test_cli_strict_audit_fails_on_null_assistant_content(tmp_path, capsys):
    path = tmp_path / "chat.jsonl"
    path.write_bytes(BAD_FILES["chat.jsonl"][0])
    code, out = _cli(["data", "audit", str(path), "--out", str(tmp_path / "a"), "--strict"], capsys)
    assert code == 1 and "errorfinding(s)covering2rows" in out and "tuneforgedataprepare" in out
    found = json.loads((tmp_path / "a" / "audit.json").read_text())["findings"]
    rows = {f["code"]: f["where"] for f in found if f["severity"] == "error"}
    assert rows == {"empty_turn": [f"{path}:3"], "no_assistant_turn": [f"{path}:2"]}
    assert any("messages[1] (a 'assistant' turn) has no content (null)" in f["what"] for f in found)


def test_cli_names_the_column_flags_and_refuses_out_file(tmp_path, capsys):
    path = tmp_path / "custom.csv"
    path.write_text("sentence,target\nhello there,a\n")
    code, out = _cli(["data", "audit", str(path), "--out", str(tmp_path / "a")], capsys)
    assert code == 2 and "--text-columnNAME--label-columnNAME" in out and "Traceback" not in out
    (tmp_path / "taken").write_text("x")
    code, out = _cli(["data", "prepare", str(path), "--text-column", "sentence", "--label-column", "target",
                      "--out", str(tmp_path / "taken")], capsys)  # fmt: skip
    assert code == 2 and "--outexistsandisafile" in out
