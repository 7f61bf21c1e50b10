"""The teacher's suite results on a tiny model are cached, and served again without loading it."""

import pytest

from recoverlm import models
from recoverlm.evaluate.compare import evaluate_task_suites


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
    # scores made on another device are not served: greedy answers can differ between them
    monkeypatch.setattr(models, "compute_device", lambda: __import__("torch").device("cuda"))
    with pytest.raises(AssertionError, match="loaded again"):
        evaluate_task_suites(tiny_model, {}, ["knowledge"], limit=3, log=lambda *_: None)
