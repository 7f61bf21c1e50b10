"""A grid keeps float32 state and float32 maths when the model around it is cast to bf16 (as
DeepSpeed's bf16 engine casts it): the grid trained on is the grid exported."""

import torch

from recoverlm.constraints.grid_math import fake_quantize, learned_scale_fake_quantize


def test_grid_tensors_stay_float32_through_a_module_cast():
    from recoverlm.constraints.grid import _GridParametrization, _LearnedScaleGridParametrization
    from recoverlm.constraints.nf4 import _NF4Parametrization

    scale, zero = torch.full((4, 2), 0.0123457), torch.full((4, 2), 7.0)
    for module in (_GridParametrization(scale.clone(), zero.clone(), 0, 15),
                   _LearnedScaleGridParametrization(scale.clone(), zero.clone(), 0, 15),
                   _NF4Parametrization(torch.full((4, 2), 0.0377))):
        module.bfloat16()
        assert all(t.dtype == torch.float32 for t in (*module.buffers(), *module.parameters()))
    grid = _GridParametrization(scale.clone(), zero.clone(), 0, 15).bfloat16()
    assert torch.equal(grid.scale, scale)


def test_a_bf16_weight_is_projected_on_the_float32_grid():
    torch.manual_seed(0)
    w = torch.randn(4, 8) * 0.05
    scale, zero = torch.full((4, 2), 0.0123457), torch.full((4, 2), 7.0)
    exact = fake_quantize(w, scale, zero, 0, 15)
    half = fake_quantize(w.bfloat16(), scale, zero, 0, 15)
    assert half.dtype == torch.bfloat16
    assert torch.equal(half, exact.bfloat16())  # the float32 grid value, rounded once at the end
    learned = learned_scale_fake_quantize(w.bfloat16(), scale.clone().requires_grad_(), zero, 0, 15)
    assert torch.equal(learned, half)
