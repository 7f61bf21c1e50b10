"""LoRA over a frozen grid (RTN, NF4) keeps the grid in the base and the recovery in adapter/: the
folder loads as base plus adapter, so what is evaluated is what was trained, and its hash is not
the degraded model's."""

import pytest
import torch
from helpers.recovery import short_config

from recoverlm import models
from recoverlm.config import LoraConfig
from recoverlm.degrade import degrade
from recoverlm.evaluate.fidelity import fidelity
from recoverlm.recover.trainer import Recovery


@pytest.mark.parametrize("method,params", [("quant.rtn", {"bits": 4, "group_size": 16}), ("quant.nf4", {"blocksize": 32})])
def test_the_recovered_folder_is_the_trained_model(tmp_path, tiny_model, data_cfg, method, params):
    student = tmp_path / "deg"
    degrade(tiny_model, method, params, student)
    cfg = short_config(offpolicy_steps=3, eval_every=3, select_best=False, lora=LoraConfig(r=4, alpha=8),
                       share_teacher="off")
    run = Recovery(tiny_model, student, tmp_path / "r", cfg, data_cfg, progress=False, log=lambda _: None)
    record = run.run()
    assert (tmp_path / "r" / "adapter" / "adapter_config.json").is_file()
    assert models.model_hash(tmp_path / "r") != models.model_hash(student)
    loaded = models.load_for_inference(tmp_path / "r")
    teacher = models.load_for_inference(tiny_model)
    measured = fidelity(teacher, {"r": loaded, "d": models.load_for_inference(student)}, run.validation, run.pad_id,
                        progress=False)
    assert measured["r"]["kl"] == pytest.approx(record["history"][-1]["kl"], rel=1e-4, abs=1e-6)
    assert measured["r"]["kl"] != pytest.approx(measured["d"]["kl"], rel=1e-3)
    with torch.no_grad():
        assert all(torch.isfinite(p).all() for p in loaded.parameters())
