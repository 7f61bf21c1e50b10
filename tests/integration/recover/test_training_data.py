"""What a recovery trains on: the user's own pairs for sft-replay."""

import json

import pytest
from helpers.recovery import short_config as _cfg

from recoverlm.errors import RecoverLMError
from recoverlm.recover.trainer import recover


def test_replay_on_user_data(tmp_path, tiny_model, pruned, data_cfg):
    data = tmp_path / "pairs.jsonl"
    data.write_text("\n".join(json.dumps({"prompt": f"Say {w}.", "response": f"{w}!"}) for w in ["rain", "sun", "sea", "snow"]))
    cfg = data_cfg.model_copy(update={"replay_data": data})
    recover(tiny_model, pruned, tmp_path / "r", _cfg(method="sft-replay", replay_source="data"), cfg, progress=False)
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"prompt": "x"}) + "\n")
    with pytest.raises(RecoverLMError, match=r"bad.jsonl:1: missing required key\(s\) response"):
        recover(tiny_model, pruned, tmp_path / "r2", _cfg(method="sft-replay", replay_source="data"),
                data_cfg.model_copy(update={"replay_data": bad}), progress=False)


def test_task_prompts_from_a_built_in_sft_task(data_cfg):
    from recoverlm.tasks import load_task_data
    from recoverlm.recover.training_data import task_prompts

    cfg = data_cfg.model_copy(update={"task_prompts": "extraction", "n_task_prompts": 5})
    prompts = task_prompts(cfg)
    assert len(prompts) == 5 and all(p.startswith("Extract the name") for p in prompts)
    trained_on = {p["prompt"] for p in load_task_data("extraction", n=512, seed=0)}  # the SFT degradation's data
    assert not set(prompts) & trained_on
