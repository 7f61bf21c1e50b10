"""The perplexity loaders: text, markdown and JSONL files, saved datasets, and their errors."""

import json

import pytest

from recoverlm.errors import RecoverLMError
from recoverlm.evaluate.perplexity import load_texts


def test_load_texts_from_files(tmp_path):
    txt = tmp_path / "notes.txt"
    txt.write_text("line one\n\nline two\n")
    assert load_texts(txt) == ["line one\n\nline two\n"]
    md = tmp_path / "notes.md"
    md.write_text("# title\nbody\n")
    assert load_texts(str(md)) == ["# title\nbody\n"]
    rows = tmp_path / "rows.jsonl"
    rows.write_text(json.dumps({"body": "first"}) + "\n\n" + json.dumps({"body": "second", "x": 1}) + "\n")
    assert load_texts(rows, column="body") == ["first", "second"]
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"text": "ok"}) + "\n" + json.dumps({"text": "ok"}) + "\n" + json.dumps({"body": "no"}) + "\n")
    with pytest.raises(RecoverLMError, match=r"bad\.jsonl:3: missing required key\(s\) text"):
        load_texts(bad)
    wrong = tmp_path / "wrong.jsonl"
    wrong.write_text(json.dumps({"text": "ok"}) + "\n\n" + json.dumps({"text": 5}) + "\n")
    with pytest.raises(RecoverLMError, match=r"wrong\.jsonl:3: 'text' is int"):
        load_texts(wrong)


def test_load_texts_from_saved_datasets(tmp_path):
    from datasets import Dataset, DatasetDict

    ds = Dataset.from_dict({"text": ["alpha", "beta"], "n": [1, 2]})
    ds.save_to_disk(str(tmp_path / "flat"))
    assert load_texts(tmp_path / "flat") == ["alpha", "beta"]
    DatasetDict({"train": ds, "test": Dataset.from_dict({"text": ["gamma"]})}).save_to_disk(str(tmp_path / "dict"))
    assert load_texts(tmp_path / "dict") == ["gamma"]
    assert load_texts(tmp_path / "dict", split="train") == ["alpha", "beta"]
    with pytest.raises(RecoverLMError, match="no split 'validation'"):
        load_texts(tmp_path / "dict", split="validation")
    with pytest.raises(RecoverLMError, match="no column 'body'"):
        load_texts(tmp_path / "flat", column="body")
    with pytest.raises(RecoverLMError, match="'n' holds int"):
        load_texts(tmp_path / "flat", column="n")


def test_load_texts_errors(tmp_path):
    with pytest.raises(RecoverLMError, match="file not found"):
        load_texts(tmp_path / "missing.txt")
    empty = tmp_path / "empty.txt"
    empty.write_text("  \n")
    with pytest.raises(RecoverLMError, match="empty.txt is empty"):
        load_texts(empty)
    (tmp_path / "empty.jsonl").write_text("")
    with pytest.raises(RecoverLMError, match="holds no records"):
        load_texts(tmp_path / "empty.jsonl")
    (tmp_path / "table.csv").write_text("text\nhello\n")
    with pytest.raises(RecoverLMError, match="unsupported file type .csv"):
        load_texts(tmp_path / "table.csv")
    with pytest.raises(RecoverLMError, match="cannot load dataset 'no-such-dataset-recoverlm'"):
        load_texts("no-such-dataset-recoverlm")
