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


def test_packed_bytes_stored_as_another_dtype_read_the_same(bnb_folder, tmp_path):
    """FSDP-QLoRA setups store the packed NF4 bytes as bf16 (`bnb_4bit_quant_storage`): the same
    bytes, so the same weights."""
    import json
    import shutil

    from safetensors.torch import load_file, save_file

    folder, _ = bnb_folder
    other = tmp_path / "bf16-storage"
    shutil.copytree(folder, other)
    shard = next(other.glob("*.safetensors"))
    tensors = load_file(str(shard))
    for name, t in list(tensors.items()):
        if t.dtype == torch.uint8 and f"{name}.absmax" in tensors:
            tensors[name] = t.reshape(-1).view(torch.bfloat16).reshape(-1, 1)
    save_file(tensors, str(shard), metadata={"format": "pt"})
    config = json.loads((other / "config.json").read_text())
    config["quantization_config"]["bnb_4bit_quant_storage"] = "bfloat16"
    (other / "config.json").write_text(json.dumps(config))
    ours, theirs = models.load_model(folder).state_dict(), models.load_model(other).state_dict()
    assert all(torch.equal(ours[k], theirs[k]) for k in ours)


def test_linears_off_the_grid_stay_float_in_the_export(tmp_path):
    """A model with Linear layers outside its blocks (OPT's projections in and out): the export
    names them, with the head, as float modules, and transformers runs it to the same logits."""
    from transformers import OPTConfig, OPTForCausalLM

    from recoverlm.degrade import degrade
    from recoverlm.models import save_model

    tok = models.load_tokenizer(_tiny_tokenizer_folder(tmp_path))
    torch.manual_seed(0)
    config = OPTConfig(vocab_size=len(tok), hidden_size=64, word_embed_proj_dim=32, ffn_dim=128, num_hidden_layers=2,
                       num_attention_heads=4, max_position_embeddings=128, pad_token_id=tok.pad_token_id,
                       bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)
    source = save_model(OPTForCausalLM(config), tok, tmp_path / "opt")
    degrade(source, "quant.nf4", {"blocksize": 32}, tmp_path / "nf4")
    record = export_model(tmp_path / "nf4", "bitsandbytes-nf4", tmp_path / "out", log=lambda _: None)
    import json

    skipped = json.loads((tmp_path / "out" / "config.json").read_text())["quantization_config"]["llm_int8_skip_modules"]
    assert {"lm_head", "model.decoder.project_in", "model.decoder.project_out"} <= set(skipped)
    assert record["transformers"]["loaded"] and record["transformers"]["max_abs_logit_diff"] < 1e-4


def _tiny_tokenizer_folder(tmp_path):
    from helpers.tiny_model import build_tiny_model

    return build_tiny_model(tmp_path / "tok-source")
