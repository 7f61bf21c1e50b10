"""Training checkpoints for exact resumption: trainable weights, optimizer, EMA teacher, every
rank's RNG, step.

Everything is safetensors or JSON except the optimizer state, which is loaded with
torch.load(weights_only=True): tensors and plain containers only, no pickled code. Under FSDP the
weights and optimizer state are gathered whole onto the main process and written in the same
files, so a checkpoint does not depend on how many processes wrote it; on resume the main
process reads them and the shards are broadcast to every rank. Under DeepSpeed (ZeRO-2 and -3)
the master weights and Adam's moments are gathered per parameter into the same safe files.
"""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from ..errors import RecoverLMError
from ..io import atomic_dir, read_json, write_json_atomic
from ..runs import CHECKPOINT_DIR

BEST_FILE = "best.safetensors"


def trainable_state(model) -> dict[str, torch.Tensor]:
    """Only what training changes: the adapter under LoRA, every parameter otherwise."""
    names = _trainable_names(model)
    return {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items() if k in names}


def _full_options(**kw):
    from torch.distributed.checkpoint.state_dict import StateDictOptions

    return StateDictOptions(full_state_dict=True, cpu_offload=True, **kw)


ADAM_MOMENTS = ("exp_avg", "exp_avg_sq")


def training_state(model, optimizer, layout: str = "plain") -> tuple[dict, dict]:
    """The trainable weights and the optimizer state, whole; `layout` is how the trainer holds
    them: "plain" (one process or DDP), "fsdp" or "deepspeed". Under FSDP and DeepSpeed a
    collective (every rank calls it); under FSDP the result is complete on rank 0 only."""
    if layout == "fsdp":
        from torch.distributed.checkpoint.state_dict import get_model_state_dict, get_optimizer_state_dict

        names = _trainable_names(model)
        weights = {k: v.contiguous() for k, v in get_model_state_dict(model, options=_full_options()).items()
                   if k in names}
        return weights, get_optimizer_state_dict(model, _torch_optimizer(optimizer), options=_full_options())
    if layout == "deepspeed":
        return _deepspeed_state(model, optimizer)
    return trainable_state(model), optimizer.state_dict()


def _trainable_names(model) -> set[str]:
    return {n for n, p in model.named_parameters() if p.requires_grad}


def _deepspeed_state(model, optimizer) -> tuple[dict, dict]:
    """ZeRO keeps fp32 master weights and Adam's moments in flat partitions across ranks;
    DeepSpeed's own checkpoints are pickles. Gathered per parameter instead, they are written in
    the same safe files as every other run: weights as safetensors, moments by parameter name."""
    from deepspeed.utils import safe_get_full_fp32_param, safe_get_full_optimizer_state

    weights, moments = {}, {}
    for name, p in model.named_parameters():
        if p.requires_grad:
            weights[name] = safe_get_full_fp32_param(p).detach().cpu().contiguous()
            moments[name] = {key: safe_get_full_optimizer_state(p, key).detach().cpu() for key in ADAM_MOMENTS}
    steps = [float(st["step"]) for st in _base_optimizer(optimizer).state.values() if "step" in st]
    return weights, {"moments": moments, "step": max(steps, default=0.0)}


def _base_optimizer(optimizer):
    """The torch optimizer stepping ZeRO's flat partitions (accelerate's wrapper, then ZeRO's)."""
    zero = _torch_optimizer(optimizer)
    return getattr(zero, "optimizer", zero)


def _load_deepspeed_state(model, optimizer, weights: dict, optimizer_state: dict) -> None:
    import deepspeed
    from deepspeed.utils import safe_set_full_fp32_param, safe_set_full_optimizer_state

    _materialize_zero_state(optimizer)
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        value = weights[name].to(p.device)
        safe_set_full_fp32_param(p, value)  # the master copy the optimizer steps
        if hasattr(p, "ds_id"):  # ZeRO-3: the partition the forward gathers
            with deepspeed.zero.GatheredParameters([p], modifier_rank=0), torch.no_grad():
                p.data.copy_(value)
        else:
            with torch.no_grad():
                p.data.copy_(value)
        for key, moment in optimizer_state["moments"][name].items():
            safe_set_full_optimizer_state(p, moment.to(p.device), key)
    for st in _base_optimizer(optimizer).state.values():
        if "step" in st:
            st["step"] = torch.tensor(optimizer_state["step"]) if torch.is_tensor(st["step"]) else optimizer_state["step"]


def _materialize_zero_state(optimizer) -> None:
    """ZeRO creates Adam's state for its flat partitions at the first step (ZeRO-1/2 only then
    link it to the parameters); a resumed run writes into it before any step, so it is created
    here (zeros) and linked."""
    zero, base = _torch_optimizer(optimizer), _base_optimizer(optimizer)
    flats = getattr(zero, "single_partition_of_fp32_groups", None) or getattr(zero, "fp32_partitioned_groups_flat", None)
    for flat in flats or []:
        if not base.state.get(flat):
            base.state[flat] = {"step": torch.tensor(0.0), **{key: torch.zeros_like(flat) for key in ADAM_MOMENTS}}
    if hasattr(zero, "_lazy_init_hp_params_optimizer_state"):
        zero._lazy_init_hp_params_optimizer_state()


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


def aliases(tensors: dict[str, torch.Tensor]) -> set[str]:
    """The names that view an earlier name's memory (a tied head and embedding are one tensor
    under two names)."""
    seen, repeats = set(), set()
    for name, t in tensors.items():
        key = (t.device, t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape), t.dtype) \
            if t.device.type != "meta" else (name,)
        if key in seen:
            repeats.add(name)
        seen.add(key)
    return repeats


def unaliased(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """`tensors` without their aliases, contiguous: safetensors refuses shared memory, and loading
    the first name restores the tie."""
    repeats = aliases(tensors)
    return {name: t.detach().contiguous() for name, t in tensors.items() if name not in repeats}


def save_checkpoint(work_dir: Path, weights: dict[str, torch.Tensor], optimizer_state: dict, rngs: list[dict],
                    step: int, state: dict, ema=None, extra: dict[str, dict[str, torch.Tensor]] | None = None,
                    best: dict[str, torch.Tensor] | None = None) -> Path:
    """Written by the main process from `training_state` and `rng_states`. `extra`: named tensor
    sets of optional training parts (a re-chosen mask), read back by load_extra; `best`: the best
    step's weights so far, in the same folder, so that they and the state naming them change
    together or not at all."""
    with atomic_dir(Path(work_dir) / CHECKPOINT_DIR) as tmp:
        save_file(unaliased(weights), str(tmp / "trainable.safetensors"))
        if best is not None:
            save_file(unaliased(best), str(tmp / BEST_FILE))
        for name, tensors in (extra or {}).items():
            save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, str(tmp / f"{name}.safetensors"))
        if ema is not None:
            save_file(unaliased(ema.state_dict()), str(tmp / "ema.safetensors"))
        torch.save(optimizer_state, tmp / "optimizer.pt")
        save_file({f"{kind}.{rank}": t for rank, own in enumerate(rngs) for kind, t in own.items()},
                  str(tmp / "rng.safetensors"))
        write_json_atomic(tmp / "state.json", {**state, "step": step, "world_size": len(rngs)})
    return Path(work_dir) / CHECKPOINT_DIR


def load_checkpoint(work_dir: Path, model, optimizer, ema=None, layout: str = "plain", rank: int = 0,
                    identity: dict | None = None) -> dict | None:
    """Restores the checkpoint into this rank's model and optimizer; None when there is none.
    Under FSDP a collective: rank 0 reads the whole state and every rank receives its shards.
    `identity` (settings and model hashes) must equal the one the checkpoint was written with,
    where it kept one: another run's optimizer state is refused, not loaded."""
    folder = Path(work_dir) / CHECKPOINT_DIR
    if not (folder / "state.json").exists():
        return None
    reads = layout != "fsdp" or rank == 0
    try:
        weights = load_file(str(folder / "trainable.safetensors")) if reads else {}
        optimizer_state = torch.load(folder / "optimizer.pt", weights_only=True) if reads else {}
        rng = load_file(str(folder / "rng.safetensors"))
        state = read_json(folder / "state.json")
    except Exception as exc:  # noqa: BLE001 - a damaged file of any kind: one line naming the folder
        raise RecoverLMError(f"the checkpoint in {folder} cannot be read ({type(exc).__name__}: "
                             f"{str(exc).splitlines()[0] if str(exc) else ''}); delete {folder.parent} to start "
                             "this recovery over") from exc
    if identity is not None and state.get("identity") not in (None, identity):
        changed = sorted(k for k in identity if state["identity"].get(k) != identity[k])
        raise RecoverLMError(f"the checkpoint in {folder} was written by a recovery with other {', '.join(changed)}; "
                             f"resume with what it was written with, or delete {folder.parent} to start over")
    if layout == "fsdp":
        from torch.distributed.checkpoint.state_dict import set_model_state_dict, set_optimizer_state_dict

        options = _full_options(broadcast_from_rank0=True, strict=False)
        set_model_state_dict(model, weights, options=options)
        set_optimizer_state_dict(model, _torch_optimizer(optimizer), optimizer_state, options=options)
    elif layout == "deepspeed":
        _load_deepspeed_state(model, optimizer, weights, optimizer_state)
    else:
        unexpected = model.load_state_dict(weights, strict=False).unexpected_keys  # frozen weights are not saved
        if unexpected:
            raise RecoverLMError(f"the checkpoint in {folder} holds weights this student lacks ({unexpected[0]}, ...); "
                                 f"delete {folder.parent} to start over")
        optimizer.load_state_dict(optimizer_state)
    if ema is not None and (folder / "ema.safetensors").exists():
        stored = load_file(str(folder / "ema.safetensors"))
        tied = aliases(ema.state_dict())  # restored with the name they alias
        missing, unexpected = ema.load_state_dict(stored, strict=False)
        if unexpected or set(missing) - tied:
            raise RecoverLMError(f"{folder / 'ema.safetensors'} does not match the EMA teacher "
                                 f"({len(set(missing) - tied)} missing, {len(unexpected)} unexpected tensors)")
    torch.set_rng_state(_rank_state(rng, "torch", rank))
    cuda = _rank_state(rng, "cuda", rank)
    if cuda is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state(cuda)
    return state


def _rank_state(rng: dict, kind: str, rank: int):
    """This rank's saved generator; a checkpoint written by fewer ranks gives rank 0's (and one
    written before ranks were kept, its single state)."""
    return rng.get(f"{kind}.{rank}", rng.get(f"{kind}.0", rng.get(kind)))


def load_extra(work_dir: Path, name: str) -> dict[str, torch.Tensor] | None:
    path = Path(work_dir) / CHECKPOINT_DIR / f"{name}.safetensors"
    return load_file(str(path)) if path.exists() else None


def load_best(work_dir: Path) -> dict[str, torch.Tensor] | None:
    """The best step's weights kept with the checkpoint (checkpoints written before kept them beside it)."""
    for path in (Path(work_dir) / CHECKPOINT_DIR / BEST_FILE, Path(work_dir) / BEST_FILE):
        if path.exists():
            return load_file(str(path))
    return None
