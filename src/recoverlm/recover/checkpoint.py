"""Training checkpoints for exact resumption: trainable weights, optimizer, EMA teacher, every
rank's RNG, step.

Everything is safetensors or JSON except the optimizer state, which is loaded with
torch.load(weights_only=True): tensors and plain containers only, no pickled code. Under FSDP the
weights and optimizer state are gathered whole onto the main process and written in the same
files, so a checkpoint does not depend on how many processes wrote it; on resume the main
process reads them and the shards are broadcast to every rank.
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


def _full_options(**kw):
    from torch.distributed.checkpoint.state_dict import StateDictOptions

    return StateDictOptions(full_state_dict=True, cpu_offload=True, **kw)


def training_state(model, optimizer, sharded: bool) -> tuple[dict, dict]:
    """The trainable weights and the optimizer state, whole. Under FSDP a collective (every rank
    calls it) whose result is complete on rank 0 only."""
    if not sharded:
        return trainable_state(model), optimizer.state_dict()
    from torch.distributed.checkpoint.state_dict import get_model_state_dict, get_optimizer_state_dict

    names = {n for n, p in model.named_parameters() if p.requires_grad}
    weights = {k: v.contiguous() for k, v in get_model_state_dict(model, options=_full_options()).items() if k in names}
    return weights, get_optimizer_state_dict(model, _torch_optimizer(optimizer), options=_full_options())


def _torch_optimizer(optimizer):
    return getattr(optimizer, "optimizer", optimizer)  # accelerate's wrapper holds the torch one


def rng_states() -> list[dict[str, torch.Tensor]]:
    """Every rank's generator states, in rank order (a collective when distributed)."""
    own = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():  # on-policy sampling on a GPU draws from the CUDA generator
        own["cuda"] = torch.cuda.get_rng_state()
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return [own]
    every: list = [None] * torch.distributed.get_world_size()
    torch.distributed.all_gather_object(every, own)
    return every


def save_checkpoint(work_dir: Path, weights: dict[str, torch.Tensor], optimizer_state: dict, rngs: list[dict],
                    step: int, state: dict, ema=None, extra: dict[str, dict[str, torch.Tensor]] | None = None) -> Path:
    """Written by the main process from `training_state` and `rng_states`. `extra`: named tensor
    sets of optional training parts (a re-chosen mask), read back by load_extra."""
    with atomic_dir(Path(work_dir) / CHECKPOINT_DIR) as tmp:
        save_file(weights, str(tmp / "trainable.safetensors"))
        for name, tensors in (extra or {}).items():
            save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, str(tmp / f"{name}.safetensors"))
        if ema is not None:
            save_file({k: v.contiguous() for k, v in ema.state_dict().items()}, str(tmp / "ema.safetensors"))
        torch.save(optimizer_state, tmp / "optimizer.pt")
        save_file({f"{kind}.{rank}": t for rank, own in enumerate(rngs) for kind, t in own.items()},
                  str(tmp / "rng.safetensors"))
        write_json_atomic(tmp / "state.json", {**state, "step": step, "world_size": len(rngs)})
    return Path(work_dir) / CHECKPOINT_DIR


def load_checkpoint(work_dir: Path, model, optimizer, ema=None, sharded: bool = False, rank: int = 0) -> dict | None:
    """Restores the checkpoint into this rank's model and optimizer; None when there is none.
    Under FSDP a collective: rank 0 reads the whole state and every rank receives its shards."""
    folder = Path(work_dir) / CHECKPOINT_DIR
    if not (folder / "state.json").exists():
        return None
    reads = not sharded or rank == 0
    weights = load_file(str(folder / "trainable.safetensors")) if reads else {}
    optimizer_state = torch.load(folder / "optimizer.pt", weights_only=True) if reads else {}
    if sharded:
        from torch.distributed.checkpoint.state_dict import set_model_state_dict, set_optimizer_state_dict

        options = _full_options(broadcast_from_rank0=True, strict=False)
        set_model_state_dict(model, weights, options=options)
        set_optimizer_state_dict(model, _torch_optimizer(optimizer), optimizer_state, options=options)
    else:
        model.load_state_dict(weights, strict=False)
        optimizer.load_state_dict(optimizer_state)
    if ema is not None and (folder / "ema.safetensors").exists():
        ema.load_state_dict(load_file(str(folder / "ema.safetensors")))
    rng = load_file(str(folder / "rng.safetensors"))
    torch.set_rng_state(_rank_state(rng, "torch", rank))
    cuda = _rank_state(rng, "cuda", rank)
    if cuda is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state(cuda)
    return read_json(folder / "state.json")


def _rank_state(rng: dict, kind: str, rank: int):
    """This rank's saved generator; a checkpoint written by fewer ranks gives rank 0's (and one
    written before ranks were kept, its single state)."""
    return rng.get(f"{kind}.{rank}", rng.get(f"{kind}.0", rng.get(kind)))


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
