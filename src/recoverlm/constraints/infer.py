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
# A float matrix fake-quantized to 2 or 3 bits is a quarter or more exact zeros too: its zero is a
# grid level. What tells it from a pruned one is repetition: within a run of GRID_WINDOW inputs
# (no wider than the usual quantization group), its non-zero values take at most 2^bits - 1
# levels, while a pruned float matrix's survivors are nearly all distinct.
GRID_WINDOW = 32
GRID_REPEATS = 2.0  # median non-zero values per distinct non-zero value in a window: a grid at or above
GRID_ROWS = 256  # rows sampled: enough to tell, cheap on a 7B matrix


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


def on_value_grid(weight: torch.Tensor) -> bool:
    """Whether the matrix's values repeat as a low-bit quantization grid's do (see GRID_WINDOW)."""
    rows, cols = weight.shape
    if cols < GRID_WINDOW:
        return False
    picked = weight[torch.linspace(0, rows - 1, min(rows, GRID_ROWS)).long()]
    windows = picked[:, : cols - cols % GRID_WINDOW].reshape(-1, GRID_WINDOW).float().sort(dim=1).values
    nonzero = windows != 0
    new = torch.ones_like(nonzero)
    new[:, 1:] = windows[:, 1:] != windows[:, :-1]
    levels, count = (new & nonzero).sum(1), nonzero.sum(1)
    filled = count >= 4  # a window of nearly all zeros says nothing either way
    if not bool(filled.any()):
        return False
    return float((count[filled] / levels[filled]).median()) >= GRID_REPEATS


def infer_sparsity(folder: Path, threshold: float = DEFAULT_THRESHOLD) -> tuple[Constraint, dict]:
    """Masks for the decoder matrices whose share of exact zeros reaches `threshold`, and a summary:
    how many matrices, their mean sparsity, a pattern every masked matrix follows, and how many
    matrices have some zeros but fewer than the threshold (left dense)."""
    masks, below, gridded, patterns = {}, 0, 0, set()
    total = 0
    for name, weight in decoder_matrices(folder):
        total += 1
        kept = weight != 0
        zeros = 1.0 - kept.float().mean().item()
        pattern = nm_pattern(kept) if zeros >= threshold else None
        if zeros >= threshold and pattern is None and on_value_grid(weight):
            gridded += 1  # its zeros are a grid level, not pruned weights (an N:M pattern would be pruning)
        elif zeros >= threshold:
            masks[name] = kept
            patterns.add(pattern)
        elif zeros > 0:
            below += 1
    pattern = patterns.pop() if len(patterns) == 1 else None
    sparsity = (sum(int((~m).sum()) for m in masks.values()) / max(sum(m.numel() for m in masks.values()), 1))
    summary = {"matrices": total, "masked": len(masks), "sparsity": sparsity, "below_threshold": below,
               "threshold": threshold, "pattern": f"{pattern[0]}:{pattern[1]}" if pattern else None,
               "on_grid": gridded}
    return (SparsityConstraint(masks) if masks else Constraint()), summary


def describe_inferred(summary: dict) -> str:
    grid = (f"{summary['on_grid']} decoder matrices hold few distinct values, as a float model quantized to a low-bit "
            "grid does: their zeros are grid levels, not pruning, so they are trained dense (quantize the result "
            "again, or give recoverlm the quantized checkpoint itself)") if summary.get("on_grid") else ""
    if not summary["masked"]:
        return grid or f"no decoder matrix is {summary['threshold']:.0%} or more exact zeros: trained dense"
    pattern = f", {summary['pattern']} pattern" if summary["pattern"] else ""
    left = (f"; {summary['below_threshold']} matrices with fewer zeros are trained dense"
            if summary["below_threshold"] else "")
    return (f"inferred sparsity masks from exact zeros: {summary['masked']} of {summary['matrices']} decoder matrices, "
            f"{summary['sparsity']:.1%} zeros{pattern}{left} (recover.constraint: none trains them dense)"
            + (f"; {grid}" if grid else ""))
