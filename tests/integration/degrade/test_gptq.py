"""GPTQ on a tiny model: on the grid, saved and reloaded, and closer to the model's outputs than RTN."""

import pytest
import torch
from helpers.methods import CAL, run_method as _run

from recoverlm.constraints import load_constraint
from recoverlm.constraints.grid_math import fake_quantize
from recoverlm.degrade import degrade
from recoverlm.degrade.calibration import load_calibration
from recoverlm.lm.blocks import linear_weights
from recoverlm.models import load_model


def test_gptq_lies_on_grid_and_roundtrips(tiny_model, tmp_path):
    record = degrade(tiny_model, "quant.gptq", {"bits": 3, **CAL}, tmp_path / "gptq")
    assert record["calibration"]["hash"] and record["source_hash"]
    assert all(m["bits"] <= 3 for m in record["matrices"].values())
    reloaded = load_model(tmp_path / "gptq")
    load_constraint(tmp_path / "gptq").verify(reloaded)


@pytest.mark.parametrize("bits,group_size,symmetric", [(3, 0, True), (2, 16, False)])
def test_gptq_variants_lie_on_grid(tiny_model, tok, bits, group_size, symmetric):
    model, constraint, _ = _run(tiny_model, tok, "quant.gptq", bits=bits, group_size=group_size, symmetric=symmetric,
                                blocksize=48, **CAL)  # 48: lazy blocks that groups of 16 must be aligned to
    constraint.verify(model)
    for name, w in linear_weights(model).items():
        scale, zero = constraint.scales[name], constraint.zeros[name]
        assert torch.equal(fake_quantize(w, scale, zero, *constraint.qrange), w)


def _output_error(reference, model, calib) -> float:
    ids = torch.cat(calib.ids)[: 8 * 64].view(-1, 64)  # the calibration tokens, packed into one batch
    with torch.no_grad():
        return (reference(input_ids=ids).logits - model(input_ids=ids).logits).pow(2).mean().item()


def test_gptq_beats_rtn_at_3_bits(tiny_model, tok):
    calib = load_calibration(tok, None, 16, 64)
    reference = load_model(tiny_model)
    rtn, _, _ = _run(tiny_model, tok, "quant.rtn", bits=3, group_size=32)
    gptq, _, _ = _run(tiny_model, tok, "quant.gptq", bits=3, group_size=32, n_calibration=16, max_length=64)
    assert _output_error(reference, gptq, calib) < _output_error(reference, rtn, calib)
