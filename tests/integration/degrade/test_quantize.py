"""RTN quantization of a tiny model: every variant lies on its grid, and bad arguments are refused."""

import pytest
import torch
from helpers.methods import run_method as _run

from recoverlm.degrade.quantize import quantize_rtn
from recoverlm.errors import RecoverLMError
from recoverlm.lm.blocks import linear_weights
from recoverlm.models import load_model


@pytest.mark.parametrize("bits,group_size,symmetric", [(2, 32, False), (3, 0, True), (8, 16, True), (4, 64, False)])
def test_rtn_variants_lie_on_grid(tiny_model, tok, bits, group_size, symmetric):
    model, constraint, _ = _run(tiny_model, tok, "quant.rtn", bits=bits, group_size=group_size, symmetric=symmetric)
    constraint.verify(model)
    qmin, qmax = constraint.qrange
    for name, w in linear_weights(model).items():
        scale, zero = constraint.scales[name], constraint.zeros[name]
        assert scale.shape[1] == (w.shape[1] // group_size if group_size else 1)
        codes = torch.round(w.reshape(w.shape[0], scale.shape[1], -1) / scale[..., None]) + zero[..., None]
        assert codes.min() >= qmin and codes.max() <= qmax


def test_quant_args_are_checked(tiny_model):
    model = load_model(tiny_model)
    with pytest.raises(RecoverLMError, match="bits"):
        quantize_rtn(model, bits=9)
    with pytest.raises(RecoverLMError, match="group_size"):
        quantize_rtn(model, bits=4, group_size=7)
