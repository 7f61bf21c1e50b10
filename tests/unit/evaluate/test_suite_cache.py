"""The suite-result cache: a suite's version follows its files and its task checker; unreadable entries."""

import json
import shutil
from pathlib import Path

from recoverlm import result_cache
from recoverlm.evaluate import suite_cache
from recoverlm.evaluate.lm_eval_runner import SUITES_DIR


def test_suite_version_follows_the_suite_files(tmp_path):
    folder = tmp_path / "mysuite"
    shutil.copytree(SUITES_DIR / "knowledge", folder, ignore=shutil.ignore_patterns("__pycache__"))
    task_yaml = str(folder / "knowledge.yaml")
    before = suite_cache.suite_version(task_yaml, SUITES_DIR)
    assert before == suite_cache.suite_version(task_yaml, SUITES_DIR)
    with open(folder / "knowledge.jsonl", "a") as fh:
        fh.write(json.dumps({"question": "q?", "choices": ["a", "b"], "answer": 0}) + "\n")
    after = suite_cache.suite_version(task_yaml, SUITES_DIR)
    assert after != before
    (folder / "data").mkdir()  # data files beside the YAML in a subfolder count too
    (folder / "data" / "test.jsonl").write_text('{"question": "q?"}\n')
    assert suite_cache.suite_version(task_yaml, SUITES_DIR) != after
    assert suite_cache.suite_version("knowledge", SUITES_DIR) != suite_cache.suite_version("arithmetic", SUITES_DIR)
    assert suite_cache.suite_version("hellaswag", SUITES_DIR).startswith("lm-eval ")


def test_unreadable_cache_entry_counts_as_missing(tmp_path):
    path = tmp_path / "entry.json"
    path.write_text("{not json")
    assert result_cache.load(path) is None
    result_cache.store(path, {"acc": 0.5}, {"suite": "x"})
    assert result_cache.load(path) == {"acc": 0.5}


def test_suite_version_follows_the_task_checker(monkeypatch, tmp_path):
    from recoverlm.tasks import TASKS

    before = suite_cache.suite_version("extraction", SUITES_DIR)
    fake = tmp_path / "extraction.py"
    fake.write_text(Path(TASKS["extraction"].__file__).read_text() + "\n# a changed checker\n")
    monkeypatch.setattr(suite_cache, "SFT_TASKS_DIR", tmp_path)
    assert suite_cache.suite_version("extraction", SUITES_DIR) != before


def test_suite_version_follows_the_harness(monkeypatch):
    """Scores made under another lm-eval or transformers are not reused beside today's."""
    from importlib import metadata

    before = {s: suite_cache.suite_version(s, SUITES_DIR) for s in ("knowledge", "hellaswag")}
    real = metadata.version
    monkeypatch.setattr(metadata, "version", lambda name: "0.0.1" if name == "transformers" else real(name))
    assert all(suite_cache.suite_version(s, SUITES_DIR) != v for s, v in before.items())
