"""NF4 quantization of a tiny model: every weight on the codebook, scaled by its block's absmax."""

import torch

from recoverlm.constraints import load_constraint
from recoverlm.constraints.nf4 import NF4_CODE, NF4Constraint
from recoverlm.degrade import degrade
from recoverlm.lm.blocks import linear_weights
from recoverlm.models import load_model


def test_nf4_lies_on_codebook_grid(tiny_model, tmp_path):
    record = degrade(tiny_model, "quant.nf4", {"blocksize": 32}, tmp_path / "nf4")
    assert record["constraint"]["kind"] == "nf4"
    model = load_model(tmp_path / "nf4")
    constraint = load_constraint(tmp_path / "nf4")
    assert isinstance(constraint, NF4Constraint)
    constraint.verify(model)
    for name, w in linear_weights(model).items():
        absmax = constraint.absmax[name]
        levels = w.reshape(w.shape[0], absmax.shape[1], -1) / absmax[..., None]
        nearest = (levels[..., None] - NF4_CODE).abs().amin(-1)
        assert nearest.max() < 1e-6, name
        assert torch.equal(levels.abs().amax(-1), torch.ones_like(absmax))  # absmax is a block's own max
