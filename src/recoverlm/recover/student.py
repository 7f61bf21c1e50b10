"""The student during recovery: made trainable under its Constraint (full fine-tuning, LoRA,
learned grid scales, latents from the teacher), sampled from on-policy, and exported."""

from __future__ import annotations

import json
from contextlib import nullcontext
from pathlib import Path

import torch
from torch.nn.utils import parametrize

from .. import formats, models
from ..config import RecoverConfig
from ..constraints import Constraint
from ..constraints.lora import merged_for_export, wrap_lora
from ..errors import RecoverLMError
from ..io import atomic_dir, write_json_atomic
from ..lm.blocks import decoder_layers
from ..lm.generate import generate
from ..runs import ADAPTER_DIR, METRICS_FILE, RECOVERY_FILE, side_dir, side_file
from .timing import PhaseTimer, phase


def constraint_of(student_path: Path, cfg: RecoverConfig, log=print) -> Constraint:
    """The Constraint recovery keeps (recover.constraint), saying so when it was inferred."""
    from ..constraints import CONSTRAINT_FILE, checkpoint_grid, load_constraint
    from ..constraints.infer import describe_inferred, infer_sparsity

    if cfg.constraint == "none":
        log("recover.constraint: none: every weight trains freely")
        return Constraint()
    if side_file(student_path, CONSTRAINT_FILE).exists() or cfg.constraint == "saved":
        return load_constraint(student_path)
    grid = checkpoint_grid(student_path)
    if grid is not None:
        log(f"{student_path}: a {formats.scheme_of(student_path)} checkpoint, read as float weights on its own grid "
            f"({grid.kind}); recovery keeps that grid")
        return grid
    constraint, summary = infer_sparsity(student_path, cfg.sparsity_threshold)
    if summary["masked"] or summary["below_threshold"] or summary["on_grid"]:  # a dense model has nothing to say
        log(f"{student_path}: {describe_inferred(summary)}")
    return constraint


def apply_options(cfg: RecoverConfig, constraint: Constraint, student_path: Path) -> None:
    """Options only some constraints support: refused where the constraint lacks them (before any
    teacher work), and handed to it where it has them."""
    for option, value in (("grid_scales", "learned"), ("grid_latents", "teacher")):
        if getattr(cfg, option) == value and option not in constraint.training_options:
            raise RecoverLMError(f"{option} '{value}' needs a student on a quantization grid; "
                                 f"{student_path} has constraint '{constraint.kind}'")
    if cfg.mask_update is not None and "mask_update" not in constraint.training_options:
        raise RecoverLMError(f"mask_update needs a sparse student (sparsity masks); {student_path} has constraint "
                             f"'{constraint.kind}'")
    if cfg.grid_scales == "learned":
        constraint.learn_scales = True
    if cfg.export:
        from ..export import check_export_fits

        check_export_fits(cfg.export, constraint)
        if cfg.lora and not constraint.lora_merges:
            raise RecoverLMError(f"recover.export {cfg.export} needs the recovery in the weights; under lora the "
                                 f"{constraint.kind} base stays frozen and the adapter ships beside it")


def check_hidden_targets(cfg: RecoverConfig, teacher_config, student_config) -> None:
    """hidden_weight matches the student's hidden states to the teacher's layer by layer: it needs
    the same number and width of layers (not a depth-pruned student). cka_weight pairs the layers
    by index too, but CKA compares any widths: it needs the same number of layers, and
    `cka_layers` within them."""
    if not (cfg.hidden_weight or cfg.cka_weight):
        return
    shape = [(c.num_hidden_layers, c.hidden_size) for c in (teacher_config, student_config)]
    if cfg.hidden_weight and shape[0] != shape[1]:
        raise RecoverLMError(f"hidden_weight needs the teacher's layer shapes: the teacher has {shape[0][0]} layers of "
                             f"width {shape[0][1]}, the student {shape[1][0]} of width {shape[1][1]}")
    if cfg.cka_weight:
        if shape[0][0] != shape[1][0]:
            raise RecoverLMError(f"cka_weight pairs the student's blocks with the teacher's by index: it needs the "
                                 f"teacher's number of layers; the teacher has {shape[0][0]}, the student {shape[1][0]}")
        check_cka_layers(cfg.cka_layers, shape[0][0])


def check_cka_layers(layers: list[int] | None, depth: int) -> None:
    """recover.cka_layers are block indices: each must be below the models' number of blocks."""
    bad = [i for i in layers or [] if not 0 <= i < depth]
    if bad:
        raise RecoverLMError(f"recover.cka_layers {bad} out of range: the models have {depth} blocks "
                             f"(indices 0 to {depth - 1})")


def prepare(student, cfg: RecoverConfig, constraint: Constraint, teacher, log=print, shared: bool = False,
            blocks: list[int] | None = None):
    """The trainable student: the Constraint attached, a LoRA adapter when asked (under a
    constraint that does not merge, the base stays frozen as it is), latents seeded. `shared`:
    the base holds the teacher's weights, so the Constraint may act in the forward only: masks
    through the masked adapter, grids attached (recover.shared_teacher). `blocks`: only those
    decoder blocks train (recover.train_blocks; None: the whole model)."""
    if cfg.lora:
        masks_in_forward = bool(constraint.lora_masks())
        if (not masks_in_forward) if shared else constraint.lora_merges:
            constraint.attach(student)
        student = wrap_lora(student, cfg.lora, constraint, blocks)
    else:
        constraint.attach(student)
        if cfg.grid_latents == "teacher":
            seeded = constraint.seed_latents(student, teacher)
            log(f"grid latents: {seeded['moved']:.1%} of the quantized weights moved towards the teacher's, "
                f"{seeded['mean_offset_in_steps']:.3f} grid steps on average")
        if blocks is not None:
            freeze_outside(student, blocks)
    if cfg.gradient_checkpointing:
        student.gradient_checkpointing_enable()
        if blocks is not None or cfg.lora:  # frozen embeddings: reentrant checkpointing would pass no gradient into the blocks
            student.enable_input_require_grads()
    student.train()
    return student


def freeze_outside(model, blocks: list[int]) -> None:
    """Only the parameters inside decoder blocks `blocks` keep training: the other blocks, the
    embeddings, the final norm and the LM head (tied or not) are frozen."""
    _, layers = decoder_layers(model)
    keep = {id(p) for i in blocks for p in layers[i].parameters()}
    for p in model.parameters():
        if id(p) not in keep:
            p.requires_grad_(False)


def parameter_counts(model) -> dict[str, int]:
    """Trained and total parameters (each tensor once, tied ones included), for compute comparisons."""
    params = list(model.parameters())
    return {"trained_parameters": sum(p.numel() for p in params if p.requires_grad),
            "total_parameters": sum(p.numel() for p in params)}


def base_of(model, cfg: RecoverConfig):
    """What the Constraint acts on: the model itself, or the base inside a LoRA wrapper."""
    return model.get_base_model() if cfg.lora else model


def cached_weights(sharded: bool):
    """While the weights cannot change (sampling, evaluation), compute each parametrized weight
    (a grid's fake quantization) once instead of at every forward, i.e. at every sampled token.
    Not under FSDP, where a cached weight would outlive its layer's all-gather."""
    return nullcontext() if sharded else parametrize.cached()


def sampling_precision(acc, model, cfg: RecoverConfig):
    """Sample in the precision the student trains in, where its weights are plain parameters that
    autocast casts once per call. A grid's computed weight or a LoRA base is not cached by
    autocast and would be cast again at every token: those sample in fp32."""
    plain = not cfg.lora and not any(parametrize.is_parametrized(m) for m in model.modules())
    return acc.autocast() if plain else nullcontext()


def sample(acc, student, tokenizer, prompt_ids: list[list[int]], cfg: RecoverConfig, seed: int, sharded: bool,
           timer: PhaseTimer | None = None) -> list[list[int]]:
    """The student's own responses for an on-policy micro-batch."""
    model = acc.unwrap_model(student)
    if cfg.gradient_checkpointing:  # checkpointing turns the KV cache off, which makes generation crawl
        model.gradient_checkpointing_disable()
    # Under FSDP every rank must run the same number of forward passes: ranks that finished
    # early keep stepping (synced) until all have.
    with cached_weights(sharded), sampling_precision(acc, model, cfg), phase(timer, "sample"):
        responses = generate(model, tokenizer, prompt_ids, cfg.onpolicy_max_new_tokens, cfg.onpolicy_temperature,
                             1.0, batch_size=len(prompt_ids), seed=seed, progress=False,
                             synced=sharded and acc.num_processes > 1)
    if timer is not None:
        timer.count("sample", sum(len(r) for r in responses))
    if cfg.gradient_checkpointing:
        model.gradient_checkpointing_enable()
    return responses


def rebuilt(student_path: Path, constraint: Constraint, state: dict):
    """A plain copy of the student with `state` loaded: under FSDP the trained model exists only
    as shards, so the main process rebuilds it from the gathered state dict."""
    model = models.load_model(student_path, dtype=torch.float32)
    constraint.attach(model)  # the same parametrizations as in training, so the keys match
    model.load_state_dict(state)
    return model


def write_recovered(out: Path, model, cfg: RecoverConfig, constraint: Constraint, tokenizer, record: dict,
                    history: list[dict]) -> dict:
    """The recovered HF folder, atomically: weights with the constraint baked in and verified
    exactly, the adapter (LoRA), the constraint, recovery.json and the metrics history."""
    with atomic_dir(out) as tmp:
        if cfg.lora:
            # Not merged (a frozen grid): the adapter is part of the model, beside its base. Merged:
            # the weights hold it, and the adapter is kept with the records, a trace of training.
            model.save_pretrained(tmp / ADAPTER_DIR if not constraint.lora_merges
                                  else side_dir(tmp, create=True) / ADAPTER_DIR)
            model = merged_for_export(model, constraint)
        constraint.finalize(model)
        record["constraint"] = constraint.verify(model)
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        constraint.save(tmp)
        write_json_atomic(side_dir(tmp, create=True) / RECOVERY_FILE, record)
        with open(side_dir(tmp) / METRICS_FILE, "w", encoding="utf-8") as fh:
            for row in history:
                fh.write(json.dumps(row) + "\n")
    return record
