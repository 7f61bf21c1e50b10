"""Unstructured and N:M pruning: zero out weights and hand recovery the masks that keep them zero."""

from __future__ import annotations

import torch

from ..constraints import SparsityConstraint
from ..errors import RecoverLMError
from ..lm.blocks import block_linears, linear_weights
from .calibration import (
    check_calibration_args,
    load_calibration,
    run_block,
    walk_blocks,
)
from .checks import check_choice, check_divides, check_fraction, check_int


def check_sparsity(sparsity: float) -> None:
    check_fraction("sparsity", sparsity)


def magnitude_mask(score: torch.Tensor, sparsity: float, scope: str = "row") -> torch.Tensor:
    """Keep the largest |score|: per output row ("row") or over the whole matrix ("tensor").

    Ties are broken by position (a stable sort), so every row loses exactly
    round(sparsity * in_features) weights and the measured sparsity is exact.
    """
    score = score.detach().abs().double()
    if scope == "row":
        n_prune = int(round(sparsity * score.shape[1]))
        mask = torch.ones_like(score, dtype=torch.bool)
        if n_prune:
            idx = torch.argsort(score, dim=1, stable=True)[:, :n_prune]
            mask.scatter_(1, idx, False)
        return mask
    if scope == "tensor":
        n_prune = int(round(sparsity * score.numel()))
        mask = torch.ones(score.numel(), dtype=torch.bool, device=score.device)
        if n_prune:
            mask[torch.argsort(score.flatten(), stable=True)[:n_prune]] = False
        return mask.view_as(score)
    raise RecoverLMError(f"scope must be 'row' or 'tensor', got {scope!r}")


def nm_mask(score: torch.Tensor, n: int, m: int) -> torch.Tensor:
    """Keep the n largest |score| of every m consecutive inputs of a row (n:m, e.g. 2:4)."""
    rows, cols = score.shape
    groups = score.detach().abs().double().reshape(rows, cols // m, m)
    keep = torch.topk(groups, n, dim=-1).indices
    mask = torch.zeros_like(groups, dtype=torch.bool).scatter_(-1, keep, True)
    return mask.reshape(rows, cols)


@torch.no_grad()
def _apply_masks(weights: dict[str, torch.Tensor], masks: dict[str, torch.Tensor]) -> None:
    for name, mask in masks.items():
        weights[name].mul_(mask.to(weights[name].dtype))


@torch.no_grad()
def _wanda_masks(model, calib, make_mask, desc: str) -> dict[str, torch.Tensor]:
    """Score |W_ij| * ||X_j||_2 (Sun et al. 2023) block by block and prune each block as it is scored.

    ||X_j||_2 runs over every calibration token reaching the layer. Outlier input features (the
    massive activations of LLMs) make weights that read them important even when small, which
    plain magnitude misses.
    """
    masks = {}
    for i, block, inputs in walk_blocks(model, calib, desc):
        linears = block_linears(model, i)
        sq = {n: torch.zeros(m.in_features, dtype=torch.float64, device=m.weight.device) for n, m in linears.items()}
        run_block(block, inputs, linears, lambda n, x: sq[n].add_(x.double().pow(2).sum(0)))
        for name, module in linears.items():
            score = module.weight.abs().double() * sq[name].sqrt()
            masks[name] = make_mask(score)
            module.weight.mul_(masks[name].to(module.weight.dtype))
    return masks


def prune_magnitude(model, sparsity: float = 0.5, scope: str = "row", *, tokenizer=None, record=None):
    check_sparsity(sparsity)
    check_choice("scope", scope, ("row", "tensor"))
    weights = linear_weights(model)
    masks = {name: magnitude_mask(w, sparsity, scope) for name, w in weights.items()}
    _apply_masks(weights, masks)
    return model, SparsityConstraint(masks)


def prune_wanda(model, sparsity: float = 0.5, calibration=None, n_calibration: int = 128, max_length: int = 128,
                *, tokenizer=None, record=None, held_out=()):
    """Wanda, compared per output row as in the paper (its best setting for LLMs)."""
    check_sparsity(sparsity)
    check_calibration_args(calibration, n_calibration, max_length)
    calib = load_calibration(tokenizer, calibration, n_calibration, max_length, held_out)
    masks = _wanda_masks(model, calib, lambda s: magnitude_mask(s, sparsity, "row"), "wanda")
    if record is not None:
        record["calibration"] = calib.summary()
    return model, SparsityConstraint(masks)


def check_nm_args(n, m, score) -> None:
    check_int("m", m, 2)
    check_int("n", n, 1)
    if n >= m:
        raise RecoverLMError(f"n must be smaller than m in N:M sparsity, got n={n}, m={m}")
    check_choice("score", score, ("magnitude", "wanda"))


def prune_nm(model, n: int = 2, m: int = 4, score: str = "magnitude", calibration=None, n_calibration: int = 128,
             max_length: int = 128, *, tokenizer=None, record=None, held_out=()):
    """N:M semi-structured sparsity: at most n non-zero weights in every m consecutive inputs of a
    row (NVIDIA's 2:4 is what sparse tensor cores run). `score`: magnitude or wanda."""
    check_nm_args(n, m, score)
    weights = linear_weights(model)
    check_divides("m", m, weights)
    if score == "magnitude":
        masks = {name: nm_mask(w, n, m) for name, w in weights.items()}
        _apply_masks(weights, masks)
        return model, SparsityConstraint(masks)
    check_calibration_args(calibration, n_calibration, max_length)
    calib = load_calibration(tokenizer, calibration, n_calibration, max_length, held_out)
    masks = _wanda_masks(model, calib, lambda s: nm_mask(s, n, m), f"wanda {n}:{m}")
    if record is not None:
        record["calibration"] = calib.summary()
    return model, SparsityConstraint(masks)
