"""Calibration never sees the prompts a run scores: a damage fitted to its own test prompts would
look smaller than it is."""

import json

import pytest

from recoverlm import data
from recoverlm.config import DataConfig
from recoverlm.degrade import check_calibration_kept_apart, degrade
from recoverlm.degrade.calibration import load_calibration
from recoverlm.errors import RecoverLMError
from recoverlm.models import load_tokenizer


def test_the_built_in_calibration_leaves_out_the_scored_prompts(tiny_model):
    tok = load_tokenizer(tiny_model)
    for cfg in (DataConfig(), DataConfig(n_heldout=64, split_seed=3)):
        scored = data.scored_prompts(data.load_prompts(), cfg.n_heldout, cfg.n_validation, cfg.split_seed)
        calib = load_calibration(tok, held_out=scored)
        assert len(calib.texts) == 128 and not any(p in t for t in calib.texts for p in scored)
    everything = load_calibration(tok)  # nothing left out: the default held-out prompts are among them
    assert any(p in t for t in everything.texts for p in data.scored_prompts(data.load_prompts(), 48, None))


def test_degrade_records_the_split_and_old_calibrations_are_refused(tmp_path, tiny_model):
    record = degrade(tiny_model, "prune.wanda", {"sparsity": 0.5, "n_calibration": 8}, tmp_path / "w",
                     data_cfg=DataConfig(n_heldout=10))
    assert record["calibration"]["source"] == "builtin, less 34 held-out and validation prompts"  # 10 + 24
    check_calibration_kept_apart(record, tmp_path / "w")
    old = {**record, "calibration": {**record["calibration"], "source": "builtin"}}
    with pytest.raises(RecoverLMError, match="calibrated on prompts that include the held-out"):
        check_calibration_kept_apart(old, tmp_path / "w")
    magnitude = degrade(tiny_model, "prune.magnitude", {"sparsity": 0.5}, tmp_path / "m")
    check_calibration_kept_apart(magnitude, tmp_path / "m")  # nothing calibrated: nothing to refuse
    assert json.loads((tmp_path / "w" / "recoverlm" / "degradation.json").read_text())["calibration"]["source"] == \
        record["calibration"]["source"]


def test_calibration_is_formatted_as_the_runs_prompts(tmp_path, tiny_model):
    """With the chat template off for the run, calibration texts are plain too; the saved model keeps its template."""
    params = {"sparsity": 0.5, "n_calibration": 8}
    templated = degrade(tiny_model, "prune.wanda", params, tmp_path / "t")
    plain = degrade(tiny_model, "prune.wanda", params, tmp_path / "p", data_cfg=DataConfig(use_chat_template=False))
    assert plain["calibration"]["hash"] != templated["calibration"]["hash"]
    assert load_tokenizer(tmp_path / "p").chat_template == load_tokenizer(tiny_model).chat_template


def test_a_calibrated_damage_is_reused_only_for_its_own_split(tmp_path, tiny_model):
    record = degrade(tiny_model, "prune.wanda", {"sparsity": 0.5, "n_calibration": 8}, tmp_path / "w",
                     data_cfg=DataConfig(n_heldout=10))
    check_calibration_kept_apart(record, tmp_path / "w", DataConfig(n_heldout=10, max_new_tokens=8))
    with pytest.raises(RecoverLMError, match="calibrated around another prompt split"):
        check_calibration_kept_apart(record, tmp_path / "w", DataConfig(n_heldout=10, split_seed=1))


def test_recover_refuses_a_damage_calibrated_around_another_split(tmp_path, tiny_model, data_cfg):
    from helpers.recovery import short_config

    from recoverlm.recover.trainer import recover

    degrade(tiny_model, "prune.wanda", {"sparsity": 0.5, "n_calibration": 8}, tmp_path / "w")  # the default split
    with pytest.raises(RecoverLMError, match="calibrated around another prompt split"):
        recover(tiny_model, tmp_path / "w", tmp_path / "r", short_config(), data_cfg, progress=False)
    assert not (tmp_path / "r").exists()
