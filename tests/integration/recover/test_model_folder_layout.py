"""A model folder written by recoverlm holds only the model at its top level (config, tokenizer,
weight shards); its Constraint and records live in the side folder, and older folders that kept
them at the top level are still read."""

import json
import shutil

import torch
from helpers.recovery import short_config
from transformers import AutoModelForCausalLM

from recoverlm import models
from recoverlm.constraints import load_constraint
from recoverlm.degrade import degrade
from recoverlm.recover.trainer import recover
from recoverlm.runs import SIDE_DIR


def _top_level_shards(folder):
    return sorted(p.name for p in folder.glob("*.safetensors"))


def test_degraded_and_recovered_folders_hold_only_the_model_at_top_level(tmp_path, tiny_model, data_cfg):
    deg, rec = tmp_path / "deg", tmp_path / "rec"
    degrade(tiny_model, "quant.rtn", {"bits": 4, "group_size": 16}, deg)
    recover(tiny_model, deg, rec, short_config(offpolicy_steps=1), data_cfg, progress=False, log=lambda _: None)
    for folder in (deg, rec):
        assert _top_level_shards(folder) == ["model.safetensors"]
        assert (folder / SIDE_DIR / "constraint.json").exists()
        # transformers loads the folder as it is, with nothing left over or missing
        model, info = AutoModelForCausalLM.from_pretrained(folder, output_loading_info=True)
        assert not any(info.values()), info
    assert (deg / SIDE_DIR / "degradation.json").exists() and (rec / SIDE_DIR / "recovery.json").exists()
    assert load_constraint(rec).kind == "quant_grid"


def test_a_folder_with_side_files_at_top_level_is_still_read(tmp_path, tiny_model, data_cfg):
    deg = tmp_path / "deg"
    degrade(tiny_model, "prune.magnitude", {"sparsity": 0.5}, deg)
    for f in (deg / SIDE_DIR).iterdir():
        shutil.move(f, deg / f.name)
    (deg / SIDE_DIR).rmdir()
    constraint = load_constraint(deg)
    assert constraint.kind == "sparsity" and constraint.masks
    rec = tmp_path / "rec"
    recover(tiny_model, deg, rec, short_config(offpolicy_steps=1), data_cfg, progress=False, log=lambda _: None)
    record = json.loads((rec / SIDE_DIR / "recovery.json").read_text())
    assert record["constraint"]["kind"] == "sparsity"
    weights = models.load_model(rec).state_dict()
    for name, mask in constraint.masks.items():
        assert torch.all(weights[name][~mask] == 0), name
