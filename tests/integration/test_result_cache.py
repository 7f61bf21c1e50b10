"""Per-model results against a teacher are cached: a model measured once is not measured again,
and its numbers do not depend on which other students shared the pass."""

import pytest
from helpers.tiny_model import build_tiny_model

from recoverlm.analysis.layers import cka_models
from recoverlm.config import DataConfig
from recoverlm.evaluate.compare import evaluate_models


@pytest.fixture(scope="module")
def students(tmp_path_factory):
    root = tmp_path_factory.mktemp("students")
    return {f"seed{s}": build_tiny_model(root / f"seed{s}", seed=s) for s in (1, 2)}


def _cfg(prompt_file, **kw):
    return DataConfig(prompts=prompt_file, n_heldout=3, max_new_tokens=4, teacher_generation_dtype="float32", **kw)


def test_fidelity_of_a_model_is_measured_once_and_alone_equals_together(tiny_model, prompt_file, students,
                                                                         monkeypatch, tmp_path):
    cfg = _cfg(prompt_file, split_seed=11)
    lines = []
    alone = evaluate_models(tiny_model, {"a": students["seed1"]}, cfg, progress=False, log=lines.append)
    assert not any("(cached)" in line for line in lines)
    lines.clear()
    together = evaluate_models(tiny_model, {"a": students["seed1"], "b": students["seed2"]}, cfg, progress=False,
                               log=lines.append)
    assert "fidelity: teacher, a (cached)" in lines
    assert list(together["metrics"]) == ["teacher", "a", "b"]
    assert together["metrics"]["a"] == alone["metrics"]["a"] and together["per_item"]["a"] == alone["per_item"]["a"]
    lines.clear()
    evaluate_models(tiny_model, {"a": students["seed1"]}, cfg, batch_size=2, progress=False, log=lines.append)
    assert not any("(cached)" in line for line in lines), "other settings are another entry"
    lines.clear()
    evaluate_models(tiny_model, {"a": students["seed1"]}, cfg, progress=False, log=lines.append, use_cache=False)
    assert not any("(cached)" in line for line in lines)
    # b was measured beside a cached model: measured alone with an empty cache, it gives the same numbers
    monkeypatch.setenv("RECOVERLM_HOME", str(tmp_path / "empty"))
    fresh = evaluate_models(tiny_model, {"b": students["seed2"]}, cfg, progress=False, log=lambda *_: None)
    assert fresh["metrics"]["b"] == together["metrics"]["b"] and fresh["per_item"]["b"] == together["per_item"]["b"]
    assert together["samples"][0]["b"] == fresh["samples"][0]["b"]


def test_cka_of_a_model_is_measured_once_and_alone_equals_together(tiny_model, prompt_file, students, tmp_path,
                                                                    monkeypatch):
    cfg = _cfg(prompt_file, split_seed=12)
    both = cka_models(tiny_model, {"a": students["seed1"], "b": students["seed2"]}, cfg, progress=False,
                      log=lambda *_: None, cross_tokens=8)
    lines = []
    again = cka_models(tiny_model, {"b": students["seed2"], "a": students["seed1"]}, cfg, progress=False,
                       log=lines.append, cross_tokens=8, plots_dir=tmp_path)
    assert "cka: b, a (cached)" in lines
    assert again["cka"] == {"b": both["cka"]["b"], "a": both["cka"]["a"]}
    assert again["cross_layer"]["a"] == both["cross_layer"]["a"] and (tmp_path / "cka_cross_a.png").is_file()
    monkeypatch.setenv("RECOVERLM_HOME", str(tmp_path / "empty"))
    alone = cka_models(tiny_model, {"b": students["seed2"]}, cfg, progress=False, log=lambda *_: None, cross_tokens=8)
    assert alone["cka"]["b"] == both["cka"]["b"] and alone["cross_layer"]["b"] == both["cross_layer"]["b"]


def test_a_damaged_cache_entry_is_a_miss(tmp_path):
    from recoverlm import result_cache

    for text in ("{not json", "[1, 2]", '{"result": [1]}', '{"meta": {}}'):
        entry = tmp_path / "e.json"
        entry.write_text(text)
        assert result_cache.load(entry) is None, text
    result_cache.store(entry, {"kl": 0.5}, {})
    assert result_cache.load(entry) == {"kl": 0.5}


def test_a_student_with_the_teachers_weights_is_measured_as_a_student(tiny_model, prompt_file, tmp_path):
    """The teacher is measured as a student is, greedy answers included: a student with the same
    weights and files, found in the cache, has every figure a student needs."""
    import shutil

    cfg = _cfg(prompt_file, split_seed=12)
    evaluate_models(tiny_model, {"other": build_tiny_model(tmp_path / "other", seed=3)}, cfg, progress=False,
                    log=lambda *_: None)
    copy = shutil.copytree(tiny_model, tmp_path / "copy")
    report = evaluate_models(tiny_model, {"copy": copy}, cfg, progress=False, log=lambda *_: None)
    assert report["metrics"]["copy"]["kl"] == pytest.approx(0.0, abs=1e-6)
    assert report["samples"][0]["copy"] == report["samples"][0]["teacher"]
