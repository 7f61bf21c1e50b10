"""The suite runner without a model: the shipped suites, which use the chat template, data-file checks."""

import pytest
import yaml

from recoverlm.errors import RecoverLMError
from recoverlm.evaluate import lm_eval_runner as suites
from recoverlm.evaluate.lm_eval_runner import available_suites, check_data_files, uses_chat_template


def test_suites_are_listed():
    assert available_suites() == ["arithmetic", "extraction", "gsm8k", "instructions", "knowledge", "rewriting"]


def test_malformed_jsonl_in_a_task_yaml_names_file_and_line(tmp_path):
    data = tmp_path / "items.jsonl"
    data.write_text('{"question": "a?", "choices": ["x", "y"], "answer": 0}\n{"question": "b?", "choices": [\n')
    spec = {"task": "my_task", "dataset_path": "json", "dataset_kwargs": {"data_files": {"test": "items.jsonl"}},
            "test_split": "test", "output_type": "multiple_choice", "doc_to_text": "{{question}}",
            "doc_to_choice": "choices", "doc_to_target": "answer"}
    task_yaml = tmp_path / "my_task.yaml"
    task_yaml.write_text(yaml.safe_dump(spec) + "process_docs: !function utils.process_docs\n")
    with pytest.raises(RecoverLMError, match=r"items\.jsonl:2: invalid JSON"):
        check_data_files(task_yaml)
    data.write_text('{"question": "a?", "choices": ["x", "y"], "answer": 0}\n')
    check_data_files(task_yaml)  # a good file passes


def test_chat_template_choice():
    assert uses_chat_template("instructions") and not uses_chat_template("knowledge")
    assert not uses_chat_template("instructions", False) and uses_chat_template("knowledge", True)


def test_task_suites_use_the_chat_template():
    assert {"extraction", "rewriting"} <= suites.CHAT_SUITES
    assert "gsm8k" not in suites.CHAT_SUITES


def test_items_are_kept_per_filter_as_the_summary_keys_them():
    """A task with two filters logs a sample per document and filter: two item lists, each in
    document order, under the summary's names."""
    from recoverlm.evaluate.lm_eval_runner import _summarise

    samples = [{"doc_id": d, "filter": f, "metrics": ["exact_match"], "exact_match": float(v), "doc": {}}
               for d, f, v in [(1, "strict", 1), (0, "strict", 0), (0, "flexible", 1), (1, "flexible", 1)]]
    res = {"results": {"t": {"exact_match,strict": 0.5, "exact_match,flexible": 1.0, "alias": "t"}},
           "samples": {"t": samples}, "n-samples": {"t": {"effective": 2}}}
    summary = _summarise("t", res)
    assert summary["items"] == {"exact_match,strict": [0.0, 1.0], "exact_match,flexible": [1.0, 1.0]}
    assert summary["n"] == 2 and summary["exact_match,strict"] == 0.5
