"""What a degraded model must keep while it recovers: sparsity masks, an integer grid, the NF4
grid, or nothing. A Constraint is saved beside the degraded model and read back by every stage."""

from __future__ import annotations

from pathlib import Path

from .. import formats
from ..errors import RecoverLMError
from ..io import read_json
from ..runs import side_file
from .base import CONSTRAINT_FILE, Constraint
from .grid import GRID_FILE, QuantGridConstraint
from .nf4 import NF4_FILE, NF4Constraint
from .sparsity import MASKS_FILE, SparsityConstraint

KINDS: dict[str, type[Constraint]] = {"none": Constraint, "sparsity": SparsityConstraint,
                                      "quant_grid": QuantGridConstraint, "nf4": NF4Constraint}

def checkpoint_grid(folder: Path) -> Constraint | None:
    """The grid a quantized checkpoint of another tool was served on, as a Constraint."""
    quantized = formats.read_quantized(folder)
    if quantized is None:
        return None
    grid = quantized[1]
    if grid["kind"] == "nf4":
        return NF4Constraint(grid["absmax"], blocksize=grid["blocksize"])
    return QuantGridConstraint(grid["scales"], grid["zeros"], bits=grid["bits"], symmetric=grid["symmetric"])


__all__ = ["CONSTRAINT_FILE", "GRID_FILE", "KINDS", "MASKS_FILE", "NF4_FILE", "Constraint", "NF4Constraint",
           "QuantGridConstraint", "SparsityConstraint", "checkpoint_grid", "load_constraint"]


def load_constraint(folder: Path) -> Constraint:
    """Read the constraint saved with a degraded model. A compressed-tensors or bitsandbytes NF4
    checkpoint carries its grid in its own tensors; any other folder without one is unconstrained
    (sparsity is inferred from its zeros elsewhere, constraints.infer)."""
    meta_path = side_file(folder, CONSTRAINT_FILE)
    if not meta_path.exists():
        return checkpoint_grid(folder) or Constraint()
    meta = read_json(meta_path)
    kind = meta.get("kind")
    if kind not in KINDS:
        raise RecoverLMError(f"{meta_path}: unknown constraint kind {kind!r}")
    return KINDS[kind].load(meta_path.parent, meta)
