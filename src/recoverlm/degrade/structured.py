"""Structured pruning: the model really gets smaller (narrower MLPs or fewer blocks).

Nothing is left to keep during recovery, so the Constraint is the empty one; the saved config
holds the new shape and the folder loads in plain transformers.
"""

from __future__ import annotations

import torch

from ..constraints import Constraint
from ..errors import RecoverLMError
from ..lm.blocks import decoder_layers
from .calibration import (
    check_calibration_args,
    load_calibration,
    run_block,
    walk_blocks,
)
from .checks import check_fraction, check_int


def _mlp(block) -> torch.nn.Module:
    mlp = getattr(block, "mlp", None)
    if not all(isinstance(getattr(mlp, p, None), torch.nn.Linear) for p in ("gate_proj", "up_proj", "down_proj")):
        raise RecoverLMError("prune.ffn needs gated MLPs with gate_proj, up_proj and down_proj (Llama-style)")
    return mlp


def _take(linear: torch.nn.Linear, index: torch.Tensor, dim: int) -> torch.nn.Linear:
    """A new Linear holding only the rows (dim 0) or columns (dim 1) in `index`."""
    weight = linear.weight.detach().index_select(dim, index)
    out = torch.nn.Linear(weight.shape[1], weight.shape[0], bias=linear.bias is not None,
                          device=weight.device, dtype=weight.dtype)
    with torch.no_grad():
        out.weight.copy_(weight)
        if linear.bias is not None:
            out.bias.copy_(linear.bias.detach().index_select(0, index) if dim == 0 else linear.bias.detach())
    return out


@torch.no_grad()
def prune_ffn(model, fraction: float = 0.10, calibration=None, n_calibration: int = 128, max_length: int = 128,
              *, tokenizer=None, record=None, held_out=()):
    """Remove `fraction` of the MLP neurons of every block (the same count in each, so one
    config.intermediate_size still describes the model).

    Neuron j scores mean_t |a_tj| * ||W_down[:, j]||_2, where a = act(gate_proj x) * up_proj x is
    what down_proj reads: the typical size of what the neuron writes to the residual stream.
    A weight-norm score instead removes the rare neurons with massive activations and wrecks the
    model (DESIGN.md §7: 9.06 against 3.48 nats).
    """
    check_fraction("fraction", fraction)
    check_calibration_args(calibration, n_calibration, max_length)
    _, layers = decoder_layers(model)
    mlps = [_mlp(block) for block in layers]
    width = mlps[0].down_proj.in_features
    keep_n = width - int(round(fraction * width))
    if keep_n < 1:
        raise RecoverLMError(f"fraction {fraction} leaves no MLP neuron of {width}")
    calib = load_calibration(tokenizer, calibration, n_calibration, max_length, held_out)

    for i, block, inputs in walk_blocks(model, calib, "ffn"):
        mlp = mlps[i]
        total = torch.zeros(mlp.down_proj.in_features, dtype=torch.float64, device=mlp.down_proj.weight.device)
        run_block(block, inputs, {"down": mlp.down_proj}, lambda _, a: total.add_(a.double().abs().sum(0)))
        score = total / calib.n_tokens * mlp.down_proj.weight.double().norm(dim=0)
        keep = torch.sort(torch.topk(score, keep_n).indices).values  # keep the original neuron order
        mlp.gate_proj = _take(mlp.gate_proj, keep, 0)
        mlp.up_proj = _take(mlp.up_proj, keep, 0)
        mlp.down_proj = _take(mlp.down_proj, keep, 1)
    model.config.intermediate_size = keep_n
    if record is not None:
        record["calibration"] = calib.summary()
        record["shape"] = {"intermediate_size": [width, keep_n]}
    return model, Constraint()


def _angular_distance(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """arccos(cos(a_t, b_t)) / pi per token, in float64 (hidden states reach |x| ~ 1e4)."""
    a, b = a.double().reshape(-1, a.shape[-1]), b.double().reshape(-1, b.shape[-1])
    cos = torch.nn.functional.cosine_similarity(a, b, dim=-1)
    return torch.arccos(cos.clamp(-1.0, 1.0)) / torch.pi


@torch.no_grad()
def prune_depth(model, n_blocks: int = 3, calibration=None, n_calibration: int = 128, max_length: int = 128,
                *, tokenizer=None, record=None, held_out=()):
    """Drop the `n_blocks` blocks that change the hidden state least.

    A block's score is the angular distance between its input and output hidden states, averaged
    over calibration tokens (Gromov et al. 2024 use the same distance, for runs of consecutive
    blocks at the last token; single blocks and all tokens make it one cheap pass per block).
    """
    prefix, layers = decoder_layers(model)
    n_layers = len(layers)
    if n_layers < 2:
        raise RecoverLMError(f"n_blocks: the model has only {n_layers} decoder block; nothing can be dropped")
    check_int("n_blocks", n_blocks, 1, n_layers - 1)
    check_calibration_args(calibration, n_calibration, max_length)
    calib = load_calibration(tokenizer, calibration, n_calibration, max_length, held_out)

    distance = []
    for _, block, inputs in walk_blocks(model, calib, "depth"):
        outputs = run_block(block, inputs)
        d = torch.cat([_angular_distance(b.hidden[b.valid], y[b.valid]) for b, y in zip(inputs, outputs)])
        distance.append(d.mean().item())
    drop = sorted(torch.topk(torch.tensor(distance), n_blocks, largest=False).indices.tolist())
    keep = [i for i in range(n_layers) if i not in drop]

    parent_name, _, attr = prefix.rpartition(".")
    setattr(model.get_submodule(parent_name), attr, torch.nn.ModuleList([layers[i] for i in keep]))
    for new_idx, old_idx in enumerate(keep):
        # The KV cache is indexed by layer_idx: it must count the blocks that are left.
        for module in layers[old_idx].modules():
            if isinstance(getattr(module, "layer_idx", None), int):
                module.layer_idx = new_idx
    model.config.num_hidden_layers = len(keep)
    if isinstance(getattr(model.config, "layer_types", None), list):
        model.config.layer_types = [model.config.layer_types[i] for i in keep]
    if record is not None:
        record["calibration"] = calib.summary()
        record["shape"] = {"num_hidden_layers": [n_layers, len(keep)]}
        record["dropped_blocks"] = drop
        record["angular_distance"] = [round(d, 5) for d in distance]
    return model, Constraint()
