"""compressed-tensors in and out: a grid survives export, import, recovery and export again
exactly, and a checkpoint written by compressed-tensors' own compressor reads as its own
decompression does."""

import json

import pytest
import torch
from helpers.recovery import short_config
from safetensors.torch import save_file

from recoverlm import models
from recoverlm.constraints import QuantGridConstraint, load_constraint
from recoverlm.degrade import degrade
from recoverlm.describe import inspect_model
from recoverlm.export import export_model
from recoverlm.recover.trainer import recover

pytest.importorskip("compressed_tensors")


def _quiet(_):
    pass


def _weights(folder):
    return {k: v for k, v in models.load_model(folder).state_dict().items()}


@pytest.mark.parametrize("symmetric,group_size,bits", [(False, 16, 4), (True, 16, 4), (True, 0, 8), (False, 0, 8)])
def test_grid_round_trip_through_recovery(tmp_path, tiny_model, data_cfg, symmetric, group_size, bits):
    deg = tmp_path / "deg"
    degrade(tiny_model, "quant.rtn", {"bits": bits, "group_size": group_size, "symmetric": symmetric}, deg)
    record = export_model(deg, "compressed-tensors", tmp_path / "ct", log=_quiet)
    assert record["reread"]["max_abs_logit_diff"] == 0.0 and record["bytes"] < 0.6 * record["source_bytes"]
    config = json.loads((tmp_path / "ct" / "config.json").read_text())["quantization_config"]
    assert config["format"] == "pack-quantized" and config["config_groups"]["group_0"]["weights"]["num_bits"] == bits

    info = inspect_model(tmp_path / "ct")
    assert info["constraint"]["source"] == "the checkpoint's own grid" and f"{bits}-bit" in info["constraint"]["keeps"]
    imported = load_constraint(tmp_path / "ct")  # the grid comes from the checkpoint's own scales
    saved = load_constraint(deg)
    assert isinstance(imported, QuantGridConstraint) and imported.bits == bits
    for name in saved.scales:
        assert torch.equal(imported.scales[name], saved.scales[name].float()), name
    before, after = _weights(deg), _weights(tmp_path / "ct")
    assert all(torch.equal(before[k], after[k]) for k in before)

    rec = tmp_path / "rec"
    recover(tiny_model, tmp_path / "ct", rec, short_config(offpolicy_steps=2), data_cfg, progress=False, log=_quiet)
    assert load_constraint(rec).kind == "quant_grid"
    again = export_model(rec, "compressed-tensors", tmp_path / "ct2", log=_quiet)
    assert again["reread"]["max_abs_logit_diff"] == 0.0
    if symmetric:  # transformers itself loads it through compressed-tensors, to the same logits
        assert again["transformers"]["loaded"] and again["transformers"]["max_abs_logit_diff"] < 1e-5


def test_a_checkpoint_written_by_compressed_tensors_reads_as_its_decompression(tmp_path, tiny_model):
    from compressed_tensors.compressors.pack_quantized.base import PackedQuantizationCompressor
    from compressed_tensors.quantization import QuantizationArgs, QuantizationScheme

    scheme = QuantizationScheme(targets=["Linear"], weights=QuantizationArgs(
        num_bits=4, symmetric=False, strategy="group", group_size=16))
    state = models.load_model(tiny_model).state_dict()
    folder = tmp_path / "theirs"
    folder.mkdir()
    expected, tensors = {}, {}
    torch.manual_seed(0)
    for name, w in state.items():
        if name == "lm_head.weight":  # tied to the embeddings
            continue
        if ".layers." not in name or w.dim() != 2:
            tensors[name] = w
            continue
        scale = w.reshape(w.shape[0], -1, 16).abs().amax(-1) / 7 + 1e-3
        zp = torch.randint(-2, 3, scale.shape, dtype=torch.int8)
        packed = PackedQuantizationCompressor.compress({"weight": w, "weight_scale": scale, "weight_zero_point": zp}, scheme)
        module = name[: -len(".weight")]
        tensors.update({f"{module}.{k}": v for k, v in packed.items()})
        expected[name] = PackedQuantizationCompressor.decompress(packed, scheme)["weight"]
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(folder / "model.safetensors"))
    config = json.loads((tiny_model / "config.json").read_text())
    config["quantization_config"] = {"quant_method": "compressed-tensors", "format": "pack-quantized",
                                     "quantization_status": "compressed", "ignore": ["lm_head"],
                                     "config_groups": {"group_0": scheme.model_dump()}}
    (folder / "config.json").write_text(json.dumps(config))
    for f in tiny_model.glob("tokenizer*"):
        (folder / f.name).write_bytes(f.read_bytes())

    ours = models.load_model(folder).state_dict()
    for name, w in expected.items():
        assert torch.allclose(ours[name], w.float(), atol=1e-6, rtol=0), name
    grid = load_constraint(folder)
    assert grid.kind == "quant_grid" and grid.bits == 4 and not grid.symmetric
    grid.verify(models.load_model(folder))  # the float weights lie exactly on the imported grid


def test_unsupported_schemes_are_one_line(tmp_path, tiny_model):
    from recoverlm.errors import RecoverLMError

    cases = {
        "gptq": ({"quant_method": "gptq", "bits": 4}, "GPTQ"),
        "w8a8": ({"quant_method": "compressed-tensors", "format": "int-quantized", "config_groups": {"g": {
            "targets": ["Linear"], "weights": {"num_bits": 8, "type": "int", "strategy": "channel"},
            "input_activations": {"num_bits": 8, "type": "int"}}}}, "activations"),
        "fp8": ({"quant_method": "compressed-tensors", "format": "float-quantized", "config_groups": {}}, "float-quantized"),
        "bnb8": ({"quant_method": "bitsandbytes", "load_in_8bit": True}, "8-bit"),
    }
    for name, (qc, needle) in cases.items():
        folder = tmp_path / name
        folder.mkdir()
        config = json.loads((tiny_model / "config.json").read_text())
        config["quantization_config"] = qc
        (folder / "config.json").write_text(json.dumps(config))
        (folder / "model.safetensors").write_bytes((tiny_model / "model.safetensors").read_bytes())
        with pytest.raises(RecoverLMError, match=needle):
            models.load_model(folder)


def test_declared_sparsity_is_refused_in_one_line(tmp_path, tiny_model):
    """Read as its grid alone, a sparse-and-quantized checkpoint would lose its pattern in recovery."""
    from recoverlm.errors import RecoverLMError

    degrade(tiny_model, "quant.rtn", {"bits": 4, "group_size": 16}, tmp_path / "deg")
    export_model(tmp_path / "deg", "compressed-tensors", tmp_path / "ct", log=_quiet)
    config = json.loads((tmp_path / "ct" / "config.json").read_text())
    config["quantization_config"]["sparsity_config"] = {"format": "dense", "sparsity_structure": "2:4"}
    (tmp_path / "ct" / "config.json").write_text(json.dumps(config))
    with pytest.raises(RecoverLMError, match="2:4 sparsity"):
        models.load_model(tmp_path / "ct")


def test_widths_vllm_does_not_serve_are_noted(tmp_path, tiny_model):
    degrade(tiny_model, "quant.rtn", {"bits": 3, "group_size": 16}, tmp_path / "deg")
    lines = []
    record = export_model(tmp_path / "deg", "compressed-tensors", tmp_path / "ct", log=lines.append)
    assert "3-bit" in record["note"] and "note: vLLM serves 4 and 8-bit" in lines[0]
    degrade(tiny_model, "quant.rtn", {"bits": 4, "group_size": 16}, tmp_path / "deg4")
    assert "note" not in export_model(tmp_path / "deg4", "compressed-tensors", tmp_path / "ct4", log=_quiet)


def test_a_folder_with_another_tools_export_json_is_not_taken_for_an_export(tmp_path, tiny_model):
    from recoverlm.errors import RecoverLMError

    degrade(tiny_model, "quant.rtn", {"bits": 4, "group_size": 16}, tmp_path / "deg")
    theirs = tmp_path / "theirs"
    theirs.mkdir()
    (theirs / "export.json").write_text("{}")
    (theirs / "notes.txt").write_text("keep me")
    with pytest.raises(RecoverLMError, match="did not write"):
        export_model(tmp_path / "deg", "compressed-tensors", theirs, log=_quiet)
    assert (theirs / "notes.txt").read_text() == "keep me"
    export_model(tmp_path / "deg", "compressed-tensors", tmp_path / "ours", log=_quiet)
    export_model(tmp_path / "deg", "compressed-tensors", tmp_path / "ours", log=_quiet)  # an earlier export is replaced
