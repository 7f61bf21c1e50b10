"""bitsandbytes NF4 as transformers saves it: read on CPU as the exact float weights on its grid,
its absmax kept through recovery, and written back in the same layout."""

import pytest
import torch
from helpers.recovery import short_config

from recoverlm import models
from recoverlm.constraints import NF4Constraint, load_constraint
from recoverlm.export import export_model
from recoverlm.recover.trainer import recover

bnb = pytest.importorskip("bitsandbytes")


@pytest.fixture(scope="module")
def bnb_folder(tiny_model, tmp_path_factory):
    """A 4-bit NF4 checkpoint written by transformers and bitsandbytes themselves."""
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    out = tmp_path_factory.mktemp("bnb") / "nf4"
    quant = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True)
    model = AutoModelForCausalLM.from_pretrained(tiny_model, quantization_config=quant, device_map="cpu")
    model.save_pretrained(out)
    models.load_tokenizer(tiny_model).save_pretrained(out)
    return out, model


def test_nf4_checkpoint_reads_as_bitsandbytes_dequantizes_it(bnb_folder):
    folder, quantized = bnb_folder
    ours = models.load_model(folder).state_dict()
    for name, module in quantized.named_modules():
        if isinstance(module, bnb.nn.Linear4bit):
            expected = bnb.functional.dequantize_4bit(module.weight.data, module.weight.quant_state).float()
            assert torch.allclose(ours[f"{name}.weight"], expected, atol=1e-6, rtol=1e-5), name
    grid = load_constraint(folder)
    assert isinstance(grid, NF4Constraint) and grid.blocksize == 64
    grid.verify(models.load_model(folder))


def test_nf4_recovers_on_its_grid_and_exports_back(bnb_folder, tiny_model, tmp_path, data_cfg):
    folder, _ = bnb_folder
    rec = tmp_path / "rec"
    recover(tiny_model, folder, rec, short_config(offpolicy_steps=2), data_cfg, progress=False, log=lambda _: None)
    grid = load_constraint(rec)
    assert grid.kind == "nf4"
    imported = load_constraint(folder)
    assert all(torch.allclose(grid.absmax[n], a) for n, a in imported.absmax.items())  # the served absmax kept
    record = export_model(rec, "bitsandbytes-nf4", tmp_path / "out", log=lambda _: None)
    assert record["reread"]["max_abs_logit_diff"] == 0.0
    assert record["transformers"]["loaded"] and record["transformers"]["top1_agreement"] == 1.0
