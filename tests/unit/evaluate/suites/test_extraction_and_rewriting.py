"""The shipped extraction and rewriting suites: their items are the SFT tasks' held-out items, and their scoring."""

import json

import pytest
from helpers.suites import load_jsonl, load_module

from recoverlm.tasks import HELDOUT_SEED, TASKS


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
