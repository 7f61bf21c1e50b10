"""Parameters sharded by FSDP2 are DTensors. The Constraints must hold on them, and a gathered full
state dict must rebuild a plain model that exports on the grid. FSDP2 runs on CPU with gloo, so
these checks need no GPU (accelerate itself only applies FSDP on GPUs)."""

import copy

import pytest
import torch
import torch.distributed as dist
from helpers.constrained import optimizer_steps

from recoverlm.lm.blocks import linear_weights
from recoverlm.degrade.prune import prune_magnitude
from recoverlm.degrade.quantize import quantize_rtn
from recoverlm.models import load_model

fsdp = pytest.importorskip("torch.distributed.fsdp")


@pytest.fixture
def gloo_group(tmp_path):
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    yield
    dist.destroy_process_group()


def _shard(model):
    from torch.distributed.device_mesh import init_device_mesh

    mesh = init_device_mesh("cpu", (1,))
    for layer in model.model.layers:
        fsdp.fully_shard(layer, mesh=mesh)
    fsdp.fully_shard(model, mesh=mesh)
    return model


def _full(t):
    return t.full_tensor() if hasattr(t, "full_tensor") else t


def test_sparsity_holds_on_sharded_parameters(tiny_model, gloo_group):
    from torch.distributed.tensor import DTensor

    plain, constraint = prune_magnitude(load_model(tiny_model), 0.5)
    sharded = _shard(copy.deepcopy(plain))
    assert all(isinstance(w, DTensor) for w in linear_weights(sharded).values())
    optimizer_steps(plain, constraint)
    optimizer_steps(sharded, constraint)
    for name, w in linear_weights(sharded).items():
        full = _full(w.detach())
        assert (full[~constraint.masks[name]] == 0).all(), name
        torch.testing.assert_close(full, linear_weights(plain)[name].detach(), rtol=1e-4, atol=1e-5)
    constraint.verify(plain)


@pytest.mark.parametrize("learn_scales", [False, True])
def test_gathered_state_rebuilds_a_plain_model_on_the_grid(tiny_model, gloo_group, learn_scales):
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    model, constraint = quantize_rtn(load_model(tiny_model), bits=4, group_size=32)
    degraded_scales = {k: v.clone() for k, v in constraint.scales.items()}
    constraint.learn_scales = learn_scales
    constraint.attach(model)
    sharded = _shard(model)
    before = {k: _full(v).clone() for k, v in sharded.state_dict().items()}
    optimizer_steps(sharded, constraint)
    state = get_model_state_dict(sharded, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    assert any(not torch.equal(before[k], v) for k, v in state.items())
    rebuilt = load_model(tiny_model)
    constraint.attach(rebuilt)  # the same parametrizations, so the keys match
    rebuilt.load_state_dict(state)
    constraint.finalize(rebuilt)
    assert constraint.verify(rebuilt)["kind"] == "quant_grid"
    scales_moved = any(not torch.equal(degraded_scales[k], v) for k, v in constraint.scales.items())
    assert scales_moved == learn_scales
