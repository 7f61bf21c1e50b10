"""Self-distillation recovery: stage 1 off-policy on the teacher's cached responses and top-k
logits, stage 2 on-policy on the student's own samples scored by the teacher. The degradation's
Constraint holds after every optimizer step. One loop serves one CPU process and
`accelerate launch` (DDP) alike.
"""

from __future__ import annotations

import copy
import json
import math
import os
import random
import shutil
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.nn.utils import parametrize
from tqdm.auto import tqdm

from .. import models
from ..config import DataConfig, RecoverConfig
from ..constraints import Constraint, QuantGridConstraint, load_constraint
from ..data import Batch, collate
from ..errors import RecoverLMError
from ..evaluate.fidelity import LOWER_IS_BETTER, fidelity
from ..io import atomic_dir, write_json_atomic
from .checkpoint import load_checkpoint, save_checkpoint, trainable_state
from .losses import divergence, hidden_relative_mse, token_nll, topk_divergence
from .lora import ADAPTER_DIR, merged_for_export, wrap_lora
from .response_set import ResponseSet, concat, distill_set, replay_set, validation_set
from .rollout import completion_outputs, completion_targets, generate


def lr_at(step: int, cfg: RecoverConfig) -> float:
    """Linear warm-up, then cosine decay to a tenth of the peak, over both stages."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    progress = (step - cfg.warmup_steps) / max(1, cfg.total_steps - cfg.warmup_steps)
    return cfg.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0))))


def param_groups(model, cfg: RecoverConfig) -> list[dict]:
    """The trainable weights, and learned grid log-scales apart: their own peak lr and no weight
    decay (decay would pull every scale towards 1)."""
    weights, scales = [], []
    for name, p in model.named_parameters():
        if p.requires_grad:
            (scales if name.endswith(".log_scale") else weights).append(p)
    groups = [{"params": weights, "weight_decay": cfg.weight_decay, "lr_ratio": 1.0}]
    if scales:
        groups.append({"params": scales, "weight_decay": 0.0, "lr_ratio": cfg.grid_scale_lr / cfg.lr})
    return groups


def check_hidden_targets(cfg: RecoverConfig, teacher_config, student_config) -> None:
    """hidden_weight matches the student's hidden states to the teacher's layer by layer: it needs
    a teacher to match (distill) and the same number and width of layers (not a depth-pruned
    student)."""
    if not cfg.hidden_weight:
        return
    if cfg.method != "distill":
        raise RecoverLMError(f"hidden_weight needs method 'distill'; method '{cfg.method}' has no teacher to match")
    shape = [(c.num_hidden_layers, c.hidden_size) for c in (teacher_config, student_config)]
    if shape[0] != shape[1]:
        raise RecoverLMError(f"hidden_weight needs the teacher's layer shapes: the teacher has {shape[0][0]} layers of "
                             f"width {shape[0][1]}, the student {shape[1][0]} of width {shape[1][1]}")


def batch_order(n: int, batch_size: int, steps: int, seed: int) -> list[list[int]]:
    """Sequence indices for every step: reshuffled each epoch, deterministic in the seed, so a
    resumed run sees exactly the batches it would have seen."""
    gen = torch.Generator().manual_seed(seed)
    order: list[int] = []
    while len(order) < steps * batch_size:
        order.extend(torch.randperm(n, generator=gen).tolist())
    return [order[i * batch_size:(i + 1) * batch_size] for i in range(steps)]


def loss_mask(response_lengths: list[int], skip_first: int) -> torch.Tensor:
    """Which response tokens count in the loss (sequence-major, like completion_logits rows)."""
    return torch.cat([torch.arange(n) >= skip_first for n in response_lengths]) if response_lengths else torch.zeros(0, dtype=torch.bool)


@dataclass
class MicroBatch:
    batch: Batch
    seq_indices: list[int]
    response_lengths: list[int]
    sources: list[int]
    on_policy: bool
    keep: torch.Tensor  # bool per response token

    @property
    def n_tokens(self) -> int:
        return int(self.keep.sum())


class Recovery:
    """The training state of one recovery run; `run()` executes the schedule."""

    def __init__(self, teacher_ref, student_ref, out: Path, cfg: RecoverConfig, data_cfg: DataConfig,
                 progress: bool = True, log=print, resume: bool = False):
        from accelerate import Accelerator
        from accelerate.state import AcceleratorState
        from accelerate.utils import DistributedType, InitProcessGroupKwargs

        self.cfg, self.data_cfg, self.out, self.log, self.progress = cfg, data_cfg, Path(out), log, progress
        self.work = self.out.with_name(self.out.name + ".work")
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        # accelerate keeps one state per process; a second run in the same process (the Python API,
        # a benchmark) may ask for another precision. The process group (PartialState) is kept.
        AcceleratorState._reset_state()
        on_cpu = models.compute_device().type == "cpu"
        # accelerate sets DeepSpeed up only when not told `cpu`, and counts its processes only when
        # it knows the backend: on a CPU machine that is gloo.
        deepspeed_on_cpu = on_cpu and os.environ.get("ACCELERATE_USE_DEEPSPEED", "false").lower() == "true"
        self.acc = Accelerator(mixed_precision="bf16" if cfg.bf16 else "no", cpu=on_cpu and not deepspeed_on_cpu,
                               kwargs_handlers=[InitProcessGroupKwargs(backend="gloo")] if deepspeed_on_cpu else None)
        # FSDP shards the student's parameters (DTensors): the model is exported through a gathered
        # full state dict, and what needs whole local tensors is refused up front.
        self.sharded = self.acc.distributed_type == DistributedType.FSDP
        if self.sharded:
            for bad, what in ((cfg.lora, "lora"), (cfg.teacher_mode == "ema", "teacher_mode 'ema'"),
                              (cfg.save_every or resume, "save_every / --resume")):
                if bad:
                    raise RecoverLMError(f"{what} is not supported under FSDP; use DDP (configs/accelerate/ddp_gpu.yaml)")
        self.deepspeed = self.acc.distributed_type == DistributedType.DEEPSPEED
        if self.deepspeed:
            self._configure_deepspeed(resume)
        self.teacher_path, self.student_path = models.resolve_model(teacher_ref), models.resolve_model(student_ref)
        if self.out.resolve() in (self.teacher_path.resolve(), self.student_path.resolve()):
            raise RecoverLMError(f"output {out} would overwrite an input model")
        if cfg.lora and cfg.teacher_mode == "ema":
            raise RecoverLMError("teacher_mode 'ema' needs full fine-tuning; it is not supported with lora")
        self.tokenizer = models.load_tokenizer(self.teacher_path)
        models.check_same_vocab(self.tokenizer, models.load_tokenizer(self.student_path))
        self.pad_id = self.tokenizer.pad_token_id
        # The student's Constraint decides what it can train: checked before any teacher work.
        self.constraint: Constraint = load_constraint(self.student_path)
        for option, value in (("grid_scales", "learned"), ("grid_latents", "teacher")):
            if getattr(cfg, option) != value:
                continue
            if not isinstance(self.constraint, QuantGridConstraint):
                raise RecoverLMError(f"{option} '{value}' needs a student on a quantization grid; "
                                     f"{self.student_path} has constraint '{self.constraint.kind}'")
            if cfg.lora:
                raise RecoverLMError(f"{option} '{value}' needs full fine-tuning; it is not supported with lora")
        if cfg.grid_scales == "learned":
            self.constraint.learn_scales = True
        device = self.acc.device
        self.teacher = models.load_model(self.teacher_path, dtype=torch.float32).to(device)
        for p in self.teacher.parameters():
            p.requires_grad_(False)
        if cfg.hidden_weight:
            from transformers import AutoConfig

            check_hidden_targets(cfg, self.teacher.config, AutoConfig.from_pretrained(self.student_path))

        with self.acc.main_process_first():  # rank 0 generates and caches, the others load the cache
            self.train_set = self._training_set()
            self.validation = validation_set(self.teacher_path, data_cfg, log=log)
        if not len(self.train_set):
            raise RecoverLMError("the training set is empty")

        student = models.load_model(self.student_path, dtype=torch.float32)
        self.task_teacher = self._task_teacher(student)
        if cfg.lora:
            if not isinstance(self.constraint, QuantGridConstraint):
                self.constraint.attach(student)
            student = wrap_lora(student, cfg.lora, self.constraint)
        else:
            self.constraint.attach(student)
            if cfg.grid_latents == "teacher":
                seeded = self.constraint.seed_latents(student, self.teacher)
                log(f"grid latents: {seeded['moved']:.1%} of the quantized weights moved towards the teacher's, "
                    f"{seeded['mean_offset_in_steps']:.3f} grid steps on average")
        if cfg.gradient_checkpointing:
            student.gradient_checkpointing_enable()
        student.train()
        self.ema = copy.deepcopy(student).eval().requires_grad_(False).to(device) if cfg.teacher_mode == "ema" else None
        torch.manual_seed(cfg.seed)
        optimizer = torch.optim.AdamW(param_groups(student, cfg), lr=cfg.lr, betas=(0.9, 0.95))
        self.student, self.optimizer = self.acc.prepare(student, optimizer)
        self.history: list[dict] = []
        self.start_step, self.best, self.best_state = 0, None, None
        if resume:
            self._resume()
        elif self.work.exists() and self.acc.is_main_process:
            shutil.rmtree(self.work)

    # -- data ---------------------------------------------------------------------------------
    def _training_set(self) -> ResponseSet:
        cfg, data_cfg = self.cfg, self.data_cfg
        if cfg.method == "sft-replay" and cfg.replay_source == "data":
            if data_cfg.replay_data is None:
                raise RecoverLMError("replay_source 'data' needs data.replay_data (a JSONL of prompt/response pairs)")
            return replay_set(self.tokenizer, data_cfg.replay_data, data_cfg)
        general = distill_set(self.teacher_path, data_cfg, teacher=self.teacher, log=self.log)
        if data_cfg.task_prompts is None:
            return general
        from ..data import load_prompts

        task_teacher = data_cfg.task_teacher or self.student_path
        task = distill_set(task_teacher, data_cfg, log=self.log, prompts=load_prompts(data_cfg.task_prompts))
        return concat([general, task])

    def _task_teacher(self, student):
        """SFT forgetting: task prompts are scored by the fine-tuned model itself (frozen), so the
        new skill is kept while general ability comes back from the pre-SFT teacher."""
        if self.data_cfg.task_prompts is None or self.cfg.onpolicy_steps == 0:
            return None
        ref = self.data_cfg.task_teacher or self.student_path
        model = models.load_model(ref, dtype=torch.float32).to(self.acc.device)
        return model.requires_grad_(False)

    def _configure_deepspeed(self, resume: bool) -> None:
        """ZeRO steps, clips and reduces inside its engine. The recover config stays the one place
        for those settings: its clipping threshold is handed to the engine, and every rank must run
        the same number of micro-batches, because ZeRO reduces gradients after each of them."""
        cfg = self.cfg
        if cfg.save_every or resume:
            raise RecoverLMError("save_every / --resume is not supported under DeepSpeed; use DDP "
                                 "(configs/accelerate/ddp_gpu.yaml)")
        if cfg.batch_size % (self.acc.num_processes * cfg.grad_accum):
            raise RecoverLMError(f"under DeepSpeed, batch_size ({cfg.batch_size}) must be a multiple of processes x "
                                 f"grad_accum ({self.acc.num_processes} x {cfg.grad_accum})")
        ds_config = self.acc.state.deepspeed_plugin.deepspeed_config
        ds_config["gradient_clipping"] = cfg.max_grad_norm
        # The engine's own accounting sees one micro-batch per step: train_step marks the boundaries.
        micro = cfg.batch_size // (self.acc.num_processes * cfg.grad_accum)
        ds_config.update(gradient_accumulation_steps=1, train_micro_batch_size_per_gpu=micro,
                         train_batch_size=micro * self.acc.num_processes)

    def _backward(self, loss: torch.Tensor, last_micro_batch: bool) -> None:
        if not self.deepspeed:
            self.acc.backward(loss)
            return
        engine = self.acc.deepspeed_engine_wrapped.engine
        engine.set_gradient_accumulation_boundary(last_micro_batch)
        engine.backward(loss)
        if last_micro_batch:
            engine.step()  # clips, steps and zeroes the gradients

    def _micro_batches(self, step: int, seq_indices: list[int], on_policy: bool) -> list[MicroBatch]:
        local = seq_indices[self.acc.process_index::self.acc.num_processes]
        per = math.ceil(len(local) / self.cfg.grad_accum) if local else 0
        chunks = [local[i:i + per] for i in range(0, len(local), per)] if per else []
        rs = self.train_set
        out = []
        for chunk in chunks:
            prompts = [rs.prompt_ids[i] for i in chunk]
            if on_policy:
                responses = self._sample(prompts, seed=self.cfg.seed * 1_000_003 + step * 101 + self.acc.process_index)
            else:
                responses = [rs.response_ids[i] for i in chunk]
            lengths = [len(r) for r in responses]
            out.append(MicroBatch(collate(prompts, responses, self.pad_id), chunk, lengths,
                                  [rs.source(i) for i in chunk], on_policy, loss_mask(lengths, self.cfg.skip_first_tokens)))
        return out

    def _sample(self, prompt_ids: list[list[int]], seed: int) -> list[list[int]]:
        model = self.acc.unwrap_model(self.student)
        checkpointing = self.cfg.gradient_checkpointing
        if checkpointing:  # checkpointing disables the KV cache: 4x slower generation
            model.gradient_checkpointing_disable()
        # Under FSDP every rank must run the same number of forward passes: ranks that finished
        # early keep stepping (synced) until all have.
        with self._frozen_weights(), self._sampling_precision(model):
            responses = generate(model, self.tokenizer, prompt_ids, self.cfg.onpolicy_max_new_tokens,
                                 self.cfg.onpolicy_temperature, 1.0, batch_size=len(prompt_ids), seed=seed,
                                 progress=False, synced=self.sharded and self.acc.num_processes > 1)
        if checkpointing:
            model.gradient_checkpointing_enable()
        return responses

    def _sampling_precision(self, model):
        """Sample in the precision the student trains in (bf16 autocast casts each trainable weight
        once per call: 30% faster on CPU), but only where the weights are plain trainable parameters.
        A grid's computed weight or a LoRA base is not cached by autocast and would be cast again at
        every token, which costs more than fp32 (15% slower on a grid student)."""
        plain = not self.cfg.lora and not any(parametrize.is_parametrized(m) for m in model.modules())
        return self.acc.autocast() if plain else nullcontext()

    def _frozen_weights(self):
        """While the weights cannot change (sampling, evaluation), compute each parametrized weight
        (a grid's fake quantization) once instead of at every forward, i.e. at every sampled token.
        Not under FSDP, where a cached weight would outlive its layer's all-gather."""
        return nullcontext() if self.sharded else parametrize.cached()

    # -- loss ---------------------------------------------------------------------------------
    def _teacher_outputs(self, mb: MicroBatch, logits: bool = True, hidden: bool = False):
        """Full-vocabulary teacher logits (on-policy) and hidden states (with `hidden_weight`) for a
        micro-batch: one forward per teacher. Off-policy rows are scored by the fixed teacher,
        whose top-k logits are cached; on-policy rows by the stage-2 teacher (fixed or EMA)."""
        main = self.ema if self.ema is not None and mb.on_policy else self.teacher
        teachers = {0: main, 1: self.task_teacher}
        if set(mb.sources) == {0} or self.task_teacher is None:
            with torch.no_grad():
                return completion_outputs(main, mb.batch, logits, hidden)
        rows = torch.repeat_interleave(torch.tensor(mb.sources), torch.tensor(mb.response_lengths)).to(self.acc.device)
        merged: list = [None, None]
        for source in sorted(set(mb.sources)):
            pick = [i for i, s in enumerate(mb.sources) if s == source]
            sub = collate([mb.batch.input_ids[i][mb.batch.attention_mask[i].bool()][:-mb.response_lengths[i]].tolist() for i in pick],
                          [mb.batch.input_ids[i][mb.batch.attention_mask[i].bool()][-mb.response_lengths[i]:].tolist() for i in pick],
                          self.pad_id)
            with torch.no_grad():
                parts = completion_outputs(teachers[source], sub, logits, hidden)
            for j, part in enumerate(parts):
                if part is None:
                    continue
                if merged[j] is None:  # rows are the second-last dimension of both outputs
                    merged[j] = part.new_empty((*part.shape[:-2], len(rows), part.shape[-1]))
                merged[j][..., rows == source, :] = part
        return tuple(merged)

    def _loss_sum(self, mb: MicroBatch) -> tuple[torch.Tensor, dict]:
        """Sum over kept response tokens of the per-token loss, and the mean of its parts (the
        divergence, and the hidden-state error when it is trained) for logging."""
        cfg = self.cfg
        want_hidden = cfg.hidden_weight > 0 and cfg.method == "distill"
        logits, states = completion_outputs(self.student, mb.batch, hidden=want_hidden)
        keep = mb.keep.to(logits.device)
        targets = completion_targets(mb.batch).to(logits.device)

        def mean(per_token: torch.Tensor) -> float:
            return float((per_token.detach() * keep).sum()) / max(mb.n_tokens, 1)

        if cfg.method == "sft-replay":
            per_token = token_nll(logits, targets)
            return (per_token * keep).sum(), {"divergence": mean(per_token)}
        t_logits, t_states = (self._teacher_outputs(mb, logits=mb.on_policy, hidden=want_hidden)
                              if mb.on_policy or want_hidden else (None, None))
        if mb.on_policy:
            per_token = divergence(logits, t_logits, cfg.onpolicy_divergence, cfg.beta, cfg.temperature)
        else:
            idx, lp = self.train_set.topk_rows(mb.seq_indices)
            per_token = topk_divergence(logits, lp.to(logits.device), idx.to(logits.device), cfg.divergence,
                                        cfg.beta, cfg.temperature)
        parts = {"divergence": mean(per_token)}
        if want_hidden:
            hidden = hidden_relative_mse(states, t_states)
            parts["hidden"] = mean(hidden)
            per_token = per_token + cfg.hidden_weight * hidden
        if cfg.ce_weight:
            per_token = per_token + cfg.ce_weight * token_nll(logits, targets)
        return (per_token * keep).sum(), parts

    def _global_tokens(self, micro: list[MicroBatch]) -> int:
        local = torch.tensor([sum(mb.n_tokens for mb in micro)], dtype=torch.long, device=self.acc.device)
        return int(self.acc.reduce(local, reduction="sum").item())

    def train_step(self, step: int, seq_indices: list[int], on_policy: bool) -> dict:
        """One optimizer step. Each micro-batch's loss is divided by the completion tokens of the
        whole global batch (all micro-batches, all ranks), and multiplied by the world size because
        DDP averages gradients: the gradient equals that of one big batch."""
        micro = self._micro_batches(step, seq_indices, on_policy)
        total = self._global_tokens(micro)
        for group in self.optimizer.param_groups:
            group["lr"] = lr_at(step - 1, self.cfg) * group["lr_ratio"]
        loss_value, part_values = 0.0, {}
        for i, mb in enumerate(micro):
            sync = i == len(micro) - 1
            ctx = self.acc.no_sync(self.student) if not sync and self.acc.num_processes > 1 else _null()
            with ctx, self.acc.autocast():
                loss_sum, parts = self._loss_sum(mb)
                loss = loss_sum * self.acc.num_processes / max(total, 1)
            if not torch.isfinite(loss):
                raise FloatingPointError(f"non-finite loss at step {step}")
            self._backward(loss, sync)
            loss_value += float(loss.detach()) / self.acc.num_processes
            for name, value in parts.items():
                part_values[name] = part_values.get(name, 0.0) + value * mb.n_tokens / max(total, 1)
        if not self.deepspeed:
            self.acc.clip_grad_norm_(self.student.parameters(), self.cfg.max_grad_norm)
            self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)
        self.constraint.enforce(self.acc.unwrap_model(self.student) if not self.cfg.lora else self.acc.unwrap_model(self.student).get_base_model())
        if self.ema is not None:
            with torch.no_grad():
                for e, s in zip(self.ema.parameters(), self.acc.unwrap_model(self.student).parameters()):
                    e.mul_(self.cfg.ema_rate).add_(s.detach(), alpha=1 - self.cfg.ema_rate)
        return {"loss": loss_value, **part_values, "tokens": total}

    # -- evaluation and checkpoints -------------------------------------------------------------
    def evaluate(self, step: int, train: dict | None) -> dict:
        model = self.acc.unwrap_model(self.student)
        with self._frozen_weights():
            res = fidelity(self.teacher, {"student": model}, self.validation, self.pad_id, progress=False)["student"]
            row = {"step": step, "stage": _stage(step, self.cfg), **(train or {}),
                   **{k: res[k] for k in ("kl", "reverse_kl", "nll", "top1_agreement")}}
            if self.cfg.cka_every_eval:
                from ..analysis.capture import trajectory

                row["cka"] = trajectory(self.teacher, model, self.validation, self.pad_id)
        model.train()
        self.history.append(row)
        if self.acc.is_main_process:
            self.work.mkdir(parents=True, exist_ok=True)
            with open(self.work / "metrics.jsonl", "a", encoding="utf-8") as fh:
                fh.write(json.dumps(row) + "\n")
        metric = self.cfg.select_metric
        sign = 1 if LOWER_IS_BETTER[metric] else -1
        if self.best is None or sign * row[metric] < sign * self.best[metric]:
            self.best = row
            if self.cfg.select_best:
                self.best_state = self._trainable_state()
        return row

    def _resume(self) -> None:
        state = load_checkpoint(self.work, self.acc.unwrap_model(self.student), self.optimizer, self.ema)
        if state is None:
            self.log(f"no checkpoint in {self.work}; starting from step 0")
            return
        self.start_step, self.best, self.history = state["step"], state["best"], state["history"]
        best_file = self.work / "best.safetensors"
        if best_file.exists():
            from safetensors.torch import load_file

            self.best_state = load_file(str(best_file))
        self.log(f"resuming from step {self.start_step}")

    def _checkpoint(self, step: int) -> None:
        if not self.acc.is_main_process:
            return
        save_checkpoint(self.work, self.acc.unwrap_model(self.student), self.optimizer, step,
                        {"best": self.best, "history": self.history}, self.ema)
        if self.best_state is not None:
            from safetensors.torch import save_file

            tmp = self.work / ".best.safetensors.tmp"
            save_file(self.best_state, str(tmp))
            tmp.replace(self.work / "best.safetensors")

    # -- the schedule ---------------------------------------------------------------------------
    def run(self) -> dict:
        cfg = self.cfg
        steps = 0 if cfg.method == "none" else cfg.total_steps
        plan = batch_order(len(self.train_set), cfg.batch_size, steps, cfg.seed)
        coin = random.Random(cfg.seed)
        on_policy = [i >= cfg.offpolicy_steps and coin.random() < cfg.lmbda and cfg.method == "distill"
                     for i in range(steps)]
        if self.start_step == 0 and (not self.history):
            self.evaluate(0, None)
        bar = tqdm(total=steps, initial=self.start_step, desc="recover", unit="step",
                   disable=not self.progress or not self.acc.is_main_process)
        started, tokens, window = time.perf_counter(), 0, []
        for step in range(self.start_step + 1, steps + 1):
            try:
                stats = self.train_step(step, plan[step - 1], on_policy[step - 1])
            except FloatingPointError as exc:
                bar.close()
                self._export(stopped=str(exc))
                raise RecoverLMError(f"{exc}; stopped and kept the best checkpoint in {self.out}") from exc
            tokens += stats["tokens"]
            window.append(stats)
            recent = window[-10:]
            bar.set_postfix(stage="on" if on_policy[step - 1] else "off",
                            loss=f"{sum(s['loss'] for s in recent) / len(recent):.3f}",
                            kl=f"{sum(s['divergence'] for s in recent) / len(recent):.3f}",
                            tok_s=f"{tokens / (time.perf_counter() - started):.0f}")
            bar.update(1)
            if (cfg.eval_every and step % cfg.eval_every == 0) or step == steps:
                row = self.evaluate(step, {f"train_{k}": sum(s[k] for s in window) / len(window)
                                           for k in ("loss", "divergence", "hidden") if k in window[0]})
                window = []
                bar.write(f"step {step} ({row['stage']}): validation KL {row['kl']:.4f}  NLL {row['nll']:.3f}  "
                          f"top-1 agreement {row['top1_agreement']:.3f}")
            if cfg.save_every and step % cfg.save_every == 0 and step != steps:
                self._checkpoint(step)
        bar.close()
        return self._export(tokens=tokens, seconds=time.perf_counter() - started)

    def _trainable_state(self) -> dict[str, torch.Tensor]:
        """A CPU copy of what training changes. Under FSDP it is gathered whole on the main process
        (a collective: every rank calls it) and is empty elsewhere."""
        if self.sharded:
            return dict(self.acc.get_state_dict(self.student))
        return {k: v.clone() for k, v in trainable_state(self.acc.unwrap_model(self.student)).items()}

    def _model_to_export(self):
        """The trained model with the best checkpoint's weights; under FSDP a plain copy rebuilt from
        the gathered state (None on the other ranks)."""
        if not self.sharded:
            model = self.acc.unwrap_model(self.student)
            if self.best_state is not None:
                model.load_state_dict(self.best_state, strict=False)
            return model
        state = self.best_state if self.best_state is not None else self._trainable_state()
        if not self.acc.is_main_process:
            return None
        model = models.load_model(self.student_path, dtype=torch.float32)
        self.constraint.attach(model)  # the same parametrizations as in training, so the keys match
        model.load_state_dict(state)
        return model

    def _export(self, **extra) -> dict:
        """Write the recovered model (best checkpoint, constraint verified) atomically."""
        self.acc.wait_for_everyone()
        model = self._model_to_export()
        record = {"teacher": str(self.teacher_path), "student": str(self.student_path),
                  "recover": self.cfg.model_dump(mode="json"), "data": self.data_cfg.model_dump(mode="json"),
                  "train_sequences": len(self.train_set), "train_tokens": self.train_set.n_response_tokens,
                  "best_step": self.best["step"] if self.best else 0, "select_metric": self.cfg.select_metric,
                  "teacher_generation_dtype": self.data_cfg.teacher_generation_dtype,
                  "world_size": self.acc.num_processes, "distributed": self.acc.distributed_type.value, **extra}
        if not self.acc.is_main_process:
            return record
        with atomic_dir(self.out) as tmp:
            if self.cfg.lora:
                model.save_pretrained(tmp / ADAPTER_DIR)
                model = merged_for_export(model, self.constraint)
            self.constraint.finalize(model)
            record["constraint"] = self.constraint.verify(model)
            model.save_pretrained(tmp, safe_serialization=True)
            self.tokenizer.save_pretrained(tmp)
            self.constraint.save(tmp)
            write_json_atomic(tmp / "recovery.json", record)
            with open(tmp / "metrics.jsonl", "w", encoding="utf-8") as fh:
                for row in self.history:
                    fh.write(json.dumps(row) + "\n")
        if "stopped" not in extra:
            shutil.rmtree(self.work, ignore_errors=True)
        return {**record, "history": self.history}


class _null:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def _stage(step: int, cfg: RecoverConfig) -> str:
    if step == 0:
        return "start"
    return "off-policy" if step <= cfg.offpolicy_steps else "on-policy"


def recover(teacher_ref, student_ref, out: Path, cfg: RecoverConfig | None = None, data_cfg: DataConfig | None = None,
            progress: bool = True, log=print, resume: bool = False) -> dict:
    """Distil `teacher_ref` into the damaged `student_ref` and save the recovered model to `out`."""
    return Recovery(teacher_ref, student_ref, out, cfg or RecoverConfig(), data_cfg or DataConfig(),
                    progress, log, resume).run()
