"""The Constraint of a model folder that carries none of recoverlm's files: a model another tool
pruned keeps its zeros only if recovery knows they are there, so exact zeros are read from the
weights themselves, matrix by matrix, and an N:M pattern is recognised."""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors import safe_open

from .base import Constraint
from .sparsity import SparsityConstraint

DEFAULT_THRESHOLD = 0.25  # a dense float matrix has next to no exact zeros; a pruned one has many
NM_PATTERNS = ((1, 4), (2, 8), (2, 4), (4, 8))  # the tightest first: fewest kept per group, then the smaller group


def decoder_matrices(folder: Path):
    """(name, tensor) of every 2-D weight inside the decoder blocks, read from the safetensors
    files without building the model (embeddings and the LM head are not pruned)."""
    for file in sorted(Path(folder).glob("*.safetensors")):
        with safe_open(str(file), framework="pt") as fh:
            for name in fh.keys():
                if ".layers." in f".{name}" and name.endswith(".weight") and "lm_head" not in name:
                    tensor = fh.get_tensor(name)
                    if tensor.dim() == 2:
                        yield name, tensor


def nm_pattern(mask: torch.Tensor) -> tuple[int, int] | None:
    """The tightest N:M pattern the kept weights (True) follow along each row's inputs, if any."""
    rows, cols = mask.shape
    for n, m in NM_PATTERNS:
        if cols % m == 0 and int(mask.reshape(rows, cols // m, m).sum(-1).max()) <= n:
            return n, m
    return None


def infer_sparsity(folder: Path, threshold: float = DEFAULT_THRESHOLD) -> tuple[Constraint, dict]:
    """Masks for the decoder matrices whose share of exact zeros reaches `threshold`, and a summary:
    how many matrices, their mean sparsity, a pattern every masked matrix follows, and how many
    matrices have some zeros but fewer than the threshold (left dense)."""
    masks, below, patterns = {}, 0, set()
    total = 0
    for name, weight in decoder_matrices(folder):
        total += 1
        kept = weight != 0
        zeros = 1.0 - kept.float().mean().item()
        if zeros >= threshold:
            masks[name] = kept
            patterns.add(nm_pattern(kept))
        elif zeros > 0:
            below += 1
    pattern = patterns.pop() if len(patterns) == 1 else None
    sparsity = (sum(int((~m).sum()) for m in masks.values()) / max(sum(m.numel() for m in masks.values()), 1))
    summary = {"matrices": total, "masked": len(masks), "sparsity": sparsity, "below_threshold": below,
               "threshold": threshold, "pattern": f"{pattern[0]}:{pattern[1]}" if pattern else None}
    return (SparsityConstraint(masks) if masks else Constraint()), summary


def describe_inferred(summary: dict) -> str:
    if not summary["masked"]:
        return f"no decoder matrix is {summary['threshold']:.0%} or more exact zeros: trained dense"
    pattern = f", {summary['pattern']} pattern" if summary["pattern"] else ""
    left = (f"; {summary['below_threshold']} matrices with fewer zeros are trained dense"
            if summary["below_threshold"] else "")
    return (f"inferred sparsity masks from exact zeros: {summary['masked']} of {summary['matrices']} decoder matrices, "
            f"{summary['sparsity']:.1%} zeros{pattern}{left} (recover.constraint: none trains them dense)")
