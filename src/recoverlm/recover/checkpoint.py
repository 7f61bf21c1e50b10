"""Training checkpoints for exact resumption: trainable weights, optimizer, EMA teacher, RNG, step.

Everything is safetensors or JSON except the optimizer state, which is loaded with
torch.load(weights_only=True): tensors and plain containers only, no pickled code.
"""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from ..io import atomic_dir, read_json, write_json_atomic
from ..runs import CHECKPOINT_DIR

BEST_FILE = "best.safetensors"


def trainable_state(model) -> dict[str, torch.Tensor]:
    """Only what training changes: the adapter under LoRA, every parameter otherwise."""
    names = {n for n, p in model.named_parameters() if p.requires_grad}
    return {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items() if k in names}


def save_checkpoint(work_dir: Path, model, optimizer, step: int, state: dict, ema=None,
                    extra: dict[str, dict[str, torch.Tensor]] | None = None) -> Path:
    """`extra`: named tensor sets of optional training parts (a re-chosen mask), read back by load_extra."""
    with atomic_dir(Path(work_dir) / CHECKPOINT_DIR) as tmp:
        save_file(trainable_state(model), str(tmp / "trainable.safetensors"))
        for name, tensors in (extra or {}).items():
            save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, str(tmp / f"{name}.safetensors"))
        if ema is not None:
            save_file({k: v.contiguous() for k, v in ema.state_dict().items()}, str(tmp / "ema.safetensors"))
        torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
        rng = {"torch": torch.get_rng_state()}
        if torch.cuda.is_available():  # on-policy sampling on a GPU draws from the CUDA generator
            rng["cuda"] = torch.cuda.get_rng_state()
        save_file(rng, str(tmp / "rng.safetensors"))
        write_json_atomic(tmp / "state.json", {**state, "step": step})
    return Path(work_dir) / CHECKPOINT_DIR


def load_checkpoint(work_dir: Path, model, optimizer, ema=None) -> dict | None:
    folder = Path(work_dir) / CHECKPOINT_DIR
    if not (folder / "state.json").exists():
        return None
    model.load_state_dict(load_file(str(folder / "trainable.safetensors")), strict=False)
    if ema is not None and (folder / "ema.safetensors").exists():
        ema.load_state_dict(load_file(str(folder / "ema.safetensors")))
    optimizer.load_state_dict(torch.load(folder / "optimizer.pt", weights_only=True))
    rng = load_file(str(folder / "rng.safetensors"))
    torch.set_rng_state(rng["torch"])
    if "cuda" in rng and torch.cuda.is_available():
        torch.cuda.set_rng_state(rng["cuda"])
    return read_json(folder / "state.json")


def load_extra(work_dir: Path, name: str) -> dict[str, torch.Tensor] | None:
    path = Path(work_dir) / CHECKPOINT_DIR / f"{name}.safetensors"
    return load_file(str(path)) if path.exists() else None


def save_best(work_dir: Path, state: dict[str, torch.Tensor]) -> None:
    """The best checkpoint's trainable weights so far, kept for a resumed run to export."""
    tmp = Path(work_dir) / f".{BEST_FILE}.tmp"
    save_file(state, str(tmp))
    tmp.replace(Path(work_dir) / BEST_FILE)


def load_best(work_dir: Path) -> dict[str, torch.Tensor] | None:
    path = Path(work_dir) / BEST_FILE
    return load_file(str(path)) if path.exists() else None
