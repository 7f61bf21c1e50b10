"""The shipped arithmetic suite: reproducible data and its scoring."""

import importlib.util

from helpers.suites import load_jsonl, load_module as load_utils

from recoverlm.evaluate.lm_eval_runner import SUITES_DIR


def test_arithmetic_data_is_reproducible():
    rows = load_jsonl("arithmetic")
    assert len(rows) == 200 and len({r["question"] for r in rows}) == 200
    gen = importlib.util.spec_from_file_location("_arith_gen", SUITES_DIR / "arithmetic" / "generate.py")
    module = importlib.util.module_from_spec(gen)
    gen.loader.exec_module(module)
    assert module.generate() == rows
    for r in rows:
        a, op, b = r["question"].removeprefix("What is ").removesuffix("?").split()
        assert max(len(a), len(b)) <= 2 and int(r["answer"]) == {"plus": int.__add__, "minus": int.__sub__,
                                                                 "times": int.__mul__}[op](int(a), int(b))


def test_arithmetic_scoring():
    utils = load_utils("arithmetic")
    assert utils.first_integer(" 1,234 apples and 5") == "1234"
    assert utils.first_integer("no digits") is None
    doc = {"answer": "42"}
    assert utils.process_results(doc, [" 42.\nQuestion: 7"]) == {"exact_match": 1}
    assert utils.process_results(doc, ["It is 41"]) == {"exact_match": 0}
