"""One training loop for a single process, DDP, FSDP and DeepSpeed ZeRO, through accelerate."""

from __future__ import annotations

import atexit
import contextlib
import os

import torch

from .. import environment, models
from ..config import RecoverConfig
from ..errors import RecoverLMError


def make_accelerator(cfg: RecoverConfig, trackers: dict | None = None):
    """The accelerator for this process, with the options its distributed mode cannot serve refused."""
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState
    from accelerate.utils import DistributedType, InitProcessGroupKwargs

    # accelerate keeps one state per process; a second run in the same process (the Python API,
    # a benchmark) may ask for another precision. The process group (PartialState) is kept.
    AcceleratorState._reset_state()
    on_cpu = models.compute_device().type == "cpu"
    # accelerate sets DeepSpeed up only when not told `cpu`, and counts its processes only when
    # it knows the backend: on a CPU machine that is gloo.
    deepspeed_on_cpu = on_cpu and os.environ.get("ACCELERATE_USE_DEEPSPEED", "false").lower() == "true"
    acc = Accelerator(mixed_precision="bf16" if environment.training_bf16(cfg.bf16) else "no", cpu=on_cpu and not deepspeed_on_cpu,
                      kwargs_handlers=[InitProcessGroupKwargs(backend="gloo")] if deepspeed_on_cpu else None,
                      **(trackers or {}))
    check_even_split(acc, cfg)
    if acc.distributed_type == DistributedType.FSDP:
        refuse_partitioned(cfg, "FSDP", "DDP (configs/accelerate/ddp_gpu.yaml)")
    if acc.distributed_type == DistributedType.DEEPSPEED:
        configure_deepspeed(acc, cfg)
    if acc.num_processes > 1:
        atexit.unregister(_release_process_group)  # once, however many runs this process makes
        atexit.register(_release_process_group)
    return acc


def _release_process_group() -> None:
    """Left to the interpreter's teardown, gloo's threads can outlive their process group and abort
    the process (SIGABRT) after a run that succeeded; destroyed here, before that teardown, they end
    cleanly."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


def refuse_partitioned(cfg: RecoverConfig, where: str, instead: str) -> None:
    """Where no process holds the student's whole weights (FSDP's DTensors, ZeRO-3's partitions),
    the options that act on whole local tensors are refused in one line (mask_update, refused under
    every distributed mode but DDP, is the trainer's to refuse)."""
    for bad, what in ((cfg.lora, "lora"), (cfg.teacher_mode == "ema", "teacher_mode 'ema'"),
                      (cfg.logit_chunk != "auto" and cfg.logit_chunk,
                       "logit_chunk (the LM head is partitioned outside the forward)")):
        if bad:
            raise RecoverLMError(f"{what} is not supported under {where}; use {instead}")


def is_sharded(acc) -> bool:
    """Whether no process holds the student's whole weights: FSDP, or DeepSpeed ZeRO-3."""
    from accelerate.utils import DistributedType

    return acc.distributed_type == DistributedType.FSDP or zero_stage(acc) == 3


def zero_stage(acc) -> int | None:
    return acc.state.deepspeed_plugin.deepspeed_config.get("zero_optimization", {}).get("stage") if uses_deepspeed(acc) else None


@contextlib.contextmanager
def whole_weights_while_loading(acc):
    """Under ZeRO-3 transformers would partition every model it loads (the frozen teacher too).
    Within the block models load whole; ZeRO-3 partitions the student alone when it is prepared."""
    if zero_stage(acc) != 3:
        yield
        return
    from transformers.integrations.deepspeed import unset_hf_deepspeed_config

    unset_hf_deepspeed_config()
    try:
        yield
    finally:
        acc.state.deepspeed_plugin.set_deepspeed_weakref()


def all_finite(acc, loss: torch.Tensor) -> bool:
    """Whether every rank's loss is finite: one rank stopping alone would leave the others waiting
    in a collective it never joins."""
    finite = bool(torch.isfinite(loss.detach()).all())
    if acc.num_processes == 1:
        return finite
    flag = torch.tensor([0.0 if finite else 1.0], device=acc.device)
    return float(acc.reduce(flag, reduction="sum")) == 0.0


def main_says(acc, decision: bool) -> bool:
    """The main process's `decision`, on every rank."""
    if acc.num_processes == 1:
        return decision
    from accelerate.utils import broadcast_object_list

    return bool(broadcast_object_list([decision], from_process=0)[0])


def check_even_split(acc, cfg: RecoverConfig) -> None:
    """Every rank must run the same number of micro-batches of a step: a rank with fewer (or none)
    leaves its peers waiting in a gradient reduction it never joins."""
    if acc.num_processes > 1 and cfg.batch_size % (acc.num_processes * cfg.grad_accum):
        raise RecoverLMError(f"with {acc.num_processes} processes, batch_size ({cfg.batch_size}) must be a multiple of "
                             f"processes x grad_accum ({acc.num_processes} x {cfg.grad_accum})")


def uses_deepspeed(acc) -> bool:
    from accelerate.utils import DistributedType

    return acc.distributed_type == DistributedType.DEEPSPEED


def configure_deepspeed(acc, cfg: RecoverConfig) -> None:
    """ZeRO steps, clips and reduces inside its engine. The recover config stays the one place
    for those settings: its clipping threshold is handed to the engine, and every rank must run
    the same number of micro-batches, because ZeRO reduces gradients after each of them."""
    ds_config = acc.state.deepspeed_plugin.deepspeed_config
    if ds_config.get("zero_optimization", {}).get("stage") == 3:
        refuse_partitioned(cfg, "DeepSpeed ZeRO-3", "ZeRO-2 or DDP")
        # the export gathers the student whole (in its training dtype: fp32 unless bf16)
        ds_config["zero_optimization"]["stage3_gather_16bit_weights_on_model_save"] = True
    ds_config["gradient_clipping"] = cfg.max_grad_norm
    # The engine's own accounting sees one micro-batch per step: `backward` marks the boundaries.
    micro = cfg.batch_size // (acc.num_processes * cfg.grad_accum)
    ds_config.update(gradient_accumulation_steps=1, train_micro_batch_size_per_gpu=micro,
                     train_batch_size=micro * acc.num_processes)


def backward(acc, loss: torch.Tensor, last_micro_batch: bool) -> None:
    """Backward through accelerate; under DeepSpeed the engine also steps after the last micro-batch."""
    if not uses_deepspeed(acc):
        acc.backward(loss)
        return
    engine = acc.deepspeed_engine_wrapped.engine
    engine.set_gradient_accumulation_boundary(last_micro_batch)
    engine.backward(loss)
    if last_micro_batch:
        engine.step()  # clips, steps and zeroes the gradients


def global_count(acc, n: int) -> int:
    """`n` summed over every rank (the completion tokens of the global batch)."""
    local = torch.tensor([n], dtype=torch.long, device=acc.device)
    return int(acc.reduce(local, reduction="sum").item())
