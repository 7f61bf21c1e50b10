"""Cached suite results, user task YAMLs with bad data, and plain prompts for models without a chat template."""

import json
import shutil
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from recoverlm import models
from recoverlm.cli import app
from recoverlm.errors import RecoverLMError
from recoverlm.evaluate import suite_cache
from recoverlm.evaluate.compare import evaluate_task_suites
from recoverlm.evaluate.lm_eval_runner import SUITES_DIR, check_data_files, uses_chat_template

runner = CliRunner()


def _refuse_loading(*args, **kwargs):
    raise AssertionError("a cached model was loaded again")


def test_teacher_suite_results_are_cached(tiny_model, tmp_path, monkeypatch):
    monkeypatch.setenv("RECOVERLM_HOME", str(tmp_path / "home"))
    first = evaluate_task_suites(tiny_model, {"model": tiny_model}, ["knowledge"], limit=3, log=lambda *_: None)
    teacher = first["results"]["teacher"]["knowledge"]
    assert teacher["cached"] is False and teacher["n"] == 3 and teacher["seconds"] > 0
    # the student folder is the teacher's: same hash, so it is served from the cache within the same call
    assert first["results"]["model"]["knowledge"]["cached"] is True
    assert len(list((tmp_path / "home" / "suite_results").glob("*.json"))) == 1

    monkeypatch.setattr(models, "load_model", _refuse_loading)
    again = evaluate_task_suites(tiny_model, {"model": tiny_model}, ["knowledge"], limit=3, log=lambda *_: None)
    assert again["results"]["teacher"]["knowledge"]["cached"] is True
    assert again["results"]["teacher"]["knowledge"]["items"] == teacher["items"]
    # other settings are another entry: the model must be scored again
    with pytest.raises(AssertionError, match="loaded again"):
        evaluate_task_suites(tiny_model, {}, ["knowledge"], limit=4, log=lambda *_: None)
    with pytest.raises(AssertionError, match="loaded again"):
        evaluate_task_suites(tiny_model, {}, ["knowledge"], limit=3, log=lambda *_: None, use_cache=False)


def test_suite_version_follows_the_suite_files(tmp_path):
    folder = tmp_path / "mysuite"
    shutil.copytree(SUITES_DIR / "knowledge", folder, ignore=shutil.ignore_patterns("__pycache__"))
    task_yaml = str(folder / "knowledge.yaml")
    before = suite_cache.suite_version(task_yaml, SUITES_DIR)
    assert before == suite_cache.suite_version(task_yaml, SUITES_DIR)
    with open(folder / "knowledge.jsonl", "a") as fh:
        fh.write(json.dumps({"question": "q?", "choices": ["a", "b"], "answer": 0}) + "\n")
    assert suite_cache.suite_version(task_yaml, SUITES_DIR) != before
    assert suite_cache.suite_version("knowledge", SUITES_DIR) != suite_cache.suite_version("arithmetic", SUITES_DIR)
    assert suite_cache.suite_version("hellaswag", SUITES_DIR).startswith("lm-eval ")


def test_unreadable_cache_entry_counts_as_missing(tmp_path):
    path = tmp_path / "entry.json"
    path.write_text("{not json")
    assert suite_cache.load(path) is None
    suite_cache.store(path, {"acc": 0.5}, {"suite": "x"})
    assert suite_cache.load(path) == {"acc": 0.5}


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


def _without_chat_template(src, dst):
    shutil.copytree(src, dst)
    config = json.loads((dst / "tokenizer_config.json").read_text())
    config.pop("chat_template", None)
    (dst / "tokenizer_config.json").write_text(json.dumps(config))
    for f in dst.glob("chat_template.*"):
        f.unlink()
    assert not getattr(models.load_tokenizer(dst), "chat_template", None)
    return dst


def test_no_chat_template_flag(tiny_model, prompt_file, tmp_path):
    base = _without_chat_template(tiny_model, tmp_path / "base")
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(yaml.safe_dump({"data": {"prompts": str(prompt_file), "n_heldout": 2, "max_new_tokens": 4,
                                            "teacher_generation_dtype": "float32"}}))
    args = ["evaluate", "--model", str(base), "--teacher", str(base), "--out", str(tmp_path / "e.json"),
            "--config", str(cfg), "--suite", "fidelity,instructions", "--limit", "2"]
    refused = runner.invoke(app, args)
    assert refused.exit_code == 2 and "chat template" in refused.output and "--no-chat-template" in refused.output
    assert "Traceback" not in refused.output
    ok = runner.invoke(app, args + ["--no-chat-template"])
    assert ok.exit_code == 0, ok.output
    report = json.loads((tmp_path / "e.json").read_text())
    assert report["tasks"]["results"]["teacher"]["instructions"]["n"] == 2
    assert report["metrics"]["model"]["kl"] == pytest.approx(0.0, abs=1e-6)


def test_suite_version_follows_the_task_checker(monkeypatch, tmp_path):
    from recoverlm.degrade.sft_tasks import TASKS

    before = suite_cache.suite_version("extraction", SUITES_DIR)
    fake = tmp_path / "extraction.py"
    fake.write_text(Path(TASKS["extraction"].__file__).read_text() + "\n# a changed checker\n")
    monkeypatch.setattr(suite_cache, "SFT_TASKS_DIR", tmp_path)
    assert suite_cache.suite_version("extraction", SUITES_DIR) != before
