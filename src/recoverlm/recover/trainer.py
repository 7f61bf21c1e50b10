"""Self-distillation recovery: stage 1 off-policy on the teacher's cached responses and top-k
logits, stage 2 on-policy on the student's own samples scored by the teacher. The degradation's
Constraint holds after every optimizer step. One loop serves one CPU process and
`accelerate launch` (DDP, FSDP, DeepSpeed) alike.

The parts live beside this file, one job each: the schedule (batches, stages, learning rate), the
per-token objective, the student (preparation, sampling, export), the teachers, the distributed
setup and the checkpoints. This file holds the run's state and its loop.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import signal
import threading
import time
from contextlib import nullcontext
from pathlib import Path

import torch
from tqdm.auto import tqdm

from .. import environment, models
from ..config import PLACEMENT_ONLY, DataConfig, RecoverConfig, run_identity
from ..data import collate, heldout_hash, load_prompts
from ..degrade import check_folder_split
from ..errors import RecoverLMError
from ..evaluate.fidelity import LOWER_IS_BETTER, fidelity
from ..io import check_output_dir
from ..lm.blocks import run_blocks
from ..runs import CHECKPOINT_DIR, METRICS_FILE, RECOVERY_FILE, own_files, work_dir
from ..teacher.response_set import validation_set
from . import block_choice, distributed, placement, shared_teacher, tracking
from . import student as student_part
from .checkpoint import (
    load_best,
    load_checkpoint,
    load_extra,
    rng_states,
    save_checkpoint,
    trainable_state,
    training_state,
)
from .objective import MicroBatch, loss_mask, loss_sum
from .schedule import batch_order, lr_at, on_policy_steps, param_groups, stage
from .teachers import Teachers
from .timing import PhaseTimer
from .training_data import check_inputs, training_set


class Recovery:
    """The training state of one recovery run; `run()` executes the schedule, `train_step` one step."""

    def __init__(self, teacher_ref, student_ref, out: Path, cfg: RecoverConfig, data_cfg: DataConfig,
                 progress: bool = True, log=print, resume: bool = False, timer: PhaseTimer | None = None):
        self.cfg, self.data_cfg, self.out, self.log, self.progress, self.timer = cfg, data_cfg, Path(out), log, progress, timer
        self.work = work_dir(self.out)
        self.export_target = self.out.with_name(f"{self.out.name}.{cfg.export}") if cfg.export else None
        cfg.check_data(data_cfg)
        check_inputs(data_cfg)
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        self.acc = distributed.make_accelerator(cfg, tracking.accelerator_options(cfg.log_with, self.out))
        self.sharded, self.deepspeed = distributed.is_sharded(self.acc), distributed.uses_deepspeed(self.acc)
        self.partitioned = distributed.zero_stage(self.acc) == 3  # ZeRO-3: weights exist whole only in a forward
        if self.sharded and cfg.logit_chunk == "auto":  # the LM head is sharded outside the forward
            self.cfg = cfg = cfg.model_copy(update={"logit_chunk": 0})
        self.layout = "deepspeed" if self.deepspeed else "fsdp" if self.sharded else "plain"  # of checkpoints
        self.notes: dict = {}  # what optional parts of training report, kept in recovery.json
        with distributed.whole_weights_while_loading(self.acc):
            self._load_models(teacher_ref, student_ref)
            with self.acc.main_process_first():  # rank 0 generates and caches, the others load the cache
                self.train_set = training_set(cfg, data_cfg, self.teacher_path, self.student_path, self.tokenizer,
                                              self.teacher, log)
                self.validation = validation_set(self.teacher_path, data_cfg, log=log)
        if not len(self.train_set):  # outside main_process_first: every rank raises, none waits at its barrier
            raise RecoverLMError("the training set is empty")
        self._prepare_student()
        self.history: list[dict] = []
        self.start_step, self.best, self.best_state = 0, None, None
        self.tokens = 0  # trained response tokens, over every resumed part of the run
        if resume:
            self._resume()
        elif self.work.exists() and self.acc.is_main_process:
            shutil.rmtree(self.work)

    def _load_models(self, teacher_ref, student_ref) -> None:
        """Inputs checked (vocabulary, constraint options, layer shapes) and the frozen teacher
        loaded, before any teacher work."""
        self.teacher_path, self.student_path = models.resolve_model(teacher_ref), models.resolve_model(student_ref)
        check_output_dir(self.out, [self.teacher_path, self.student_path], own_files(RECOVERY_FILE))
        # the scratch folder beside the output is removed when a run starts afresh: it must be ours too
        check_output_dir(self.work, [self.teacher_path, self.student_path], (CHECKPOINT_DIR, METRICS_FILE))
        if self.cfg.export:  # found unwritable after the steps, the export would fail the whole run's end
            from ..export import check_export_target

            check_export_target(self.export_target, [self.teacher_path, self.student_path])
        check_folder_split(self.student_path, self.data_cfg)  # a calibrated damage left this split's prompts out
        self.tokenizer = models.load_tokenizer(self.teacher_path)
        models.check_same_vocab(self.tokenizer, models.load_tokenizer(self.student_path))
        self.pad_id = self.tokenizer.pad_token_id
        self.constraint = student_part.constraint_of(self.student_path, self.cfg, self.log)
        student_part.apply_options(self.cfg, self.constraint, self.student_path)
        self.teacher_home = placement.teacher_device(self.cfg.teacher_device, self.acc.device, self.acc.num_processes)
        self.teacher = models.load_model(self.teacher_path, dtype=torch.float32).to(self.teacher_home)
        self.teacher.requires_grad_(False)
        if self.cfg.hidden_weight or self.cfg.cka_weight:
            from transformers import AutoConfig

            student_part.check_hidden_targets(self.cfg, self.teacher.config, AutoConfig.from_pretrained(self.student_path))
        if self.cfg.train_blocks != "all":
            from transformers import AutoConfig

            block_choice.check_models(self.cfg.train_blocks, self.teacher.config.num_hidden_layers,
                                      AutoConfig.from_pretrained(self.student_path).num_hidden_layers)

    def _choose_blocks(self, student) -> list[int] | None:
        """recover.train_blocks resolved on the damaged student, before any adapter exists: the
        blocks that train (None: all), logged and kept in recovery.json."""
        choice, n_blocks = self.cfg.train_blocks, len(run_blocks(student))
        cka = self._damage_cka(student) if block_choice.needs_cka(choice) else None
        blocks, scores = block_choice.choose_blocks(choice, cka, n_blocks, self.cfg.seed)
        self.notes["train_blocks"] = {"choice": block_choice.choice_record(choice), "blocks": blocks, "of": n_blocks}
        if scores is not None:
            self.notes["train_blocks"].update(score=choice.score, scores=scores, cka=cka)
        if choice == "all":
            return None
        self.log(block_choice.describe(choice, blocks, scores, n_blocks, self.cfg.seed))
        return blocks

    def _damage_cka(self, student) -> list[float]:
        """The damaged student's per-layer CKA against the teacher on the validation prompts."""
        from ..analysis.layer_cka import trajectory

        if self.shared:  # one copy (a grid; masks do not share under train_blocks): attached, the grid computes
            self.constraint.attach(student)  # the student, lifted the teacher (prepare's attach is then a no-op)
            teacher = shared_teacher.LiftedView(student)
        else:
            teacher = self.teacher
            if not self.sharded:  # acc.prepare would put it there anyway
                student.to(self.acc.device)
        cka = trajectory(teacher, student, self.validation, self.pad_id)
        if self.acc.num_processes > 1:  # every rank trains the same blocks, whatever float noise says
            from accelerate.utils import broadcast_object_list

            cka = broadcast_object_list([cka])[0]
        return cka

    def _prepare_student(self) -> None:
        cfg = self.cfg
        reason = shared_teacher.why_not_shared(cfg, self.constraint, self.teacher, self.student_path,
                                               self.data_cfg.task_prompts)
        self.shared = reason is None
        with distributed.whole_weights_while_loading(self.acc):
            if self.shared:
                self.log("one copy of the weights: the student is the teacher's weights under its constraint, and "
                         "the teacher is that base with the adapter off and the constraint lifted")
                student = self.teacher
            else:
                if cfg.lora and cfg.share_teacher == "auto":
                    self.log(f"two copies of the weights (teacher and student): {reason}")
                student = models.load_model(self.student_path, dtype=torch.float32)
            task_teacher = Teachers.task_teacher(cfg, self.data_cfg, self.student_path, self.teacher_home)
        blocks = self._choose_blocks(student)
        torch.manual_seed(cfg.seed)  # the adapter's initialisation, whatever loading drew before
        student = student_part.prepare(student, cfg, self.constraint, self.teacher, self.log, shared=self.shared,
                                       blocks=blocks)
        self.notes["train_blocks"].update(student_part.parameter_counts(student))
        if self.shared:
            self.teacher = shared_teacher.TeacherView(student)
        self.teachers = Teachers(self.teacher, task_teacher, Teachers.ema_of(student, cfg, self.acc.device),
                                 cfg.ema_rate, self.timer, out_device=self.acc.device)
        self.placement = placement.TeacherPlacement([self.teacher, task_teacher], self.teacher_home,
                                                    cfg.teacher_offload and not self.shared, self.log)
        if self.deepspeed:  # its engine clips (and under ZeRO-3 keeps the constraint) on gradients the hooks mask
            self.constraint.guard_gradients(student_part.base_of(student, cfg))
        torch.manual_seed(cfg.seed)
        optimizer = torch.optim.AdamW(param_groups(student, cfg), lr=cfg.lr, betas=(0.9, 0.95))
        self.student, self.optimizer = self.acc.prepare(student, optimizer)
        self.masks = self._mask_updater()
        self.best_masks = None

    def _mask_updater(self):
        """recover.mask_update: the scores and schedule that re-choose a sparse student's mask."""
        if self.cfg.mask_update is None:
            return None
        if self.sharded or self.deepspeed:
            raise RecoverLMError("mask_update needs each process to hold whole weights and their gradients; "
                                 "it is not supported under FSDP or DeepSpeed (DDP works)")
        from .mask_update import MaskUpdater

        reduce = (lambda t: self.acc.reduce(t, reduction="sum")) if self.acc.num_processes > 1 else None
        return MaskUpdater(self.constraint, self.acc.unwrap_model(self.student), self.teacher, self.cfg.mask_update,
                           self.cfg.total_steps, reduce)

    @property
    def precision(self) -> str:
        return "bf16 autocast" if environment.training_bf16(self.cfg.bf16) else "float32"

    # -- one step --------------------------------------------------------------------------------
    def micro_batches(self, step: int, seq_indices: list[int], on_policy: bool) -> list[MicroBatch]:
        """This rank's share of a step's sequences, in grad_accum micro-batches; on-policy ones are
        sampled by the student now, with a seed fixed by the step and the rank."""
        local = seq_indices[self.acc.process_index::self.acc.num_processes]
        per = math.ceil(len(local) / self.cfg.grad_accum) if local else 0
        rs, out = self.train_set, []
        for part, chunk in enumerate([local[i:i + per] for i in range(0, len(local), per)] if per else []):
            prompts = [rs.prompt_ids[i] for i in chunk]
            if on_policy:
                # each micro-batch its own stream: a prompt in two of them gets two samples
                seed = self.cfg.seed * 1_000_003 + step * 101 + self.acc.process_index + part * 7_919
                responses = student_part.sample(self.acc, self.student, self.tokenizer, prompts, self.cfg, seed,
                                                self.sharded, self.timer)
            else:
                responses = [rs.response_ids[i] for i in chunk]
            lengths = [len(r) for r in responses]
            out.append(MicroBatch(collate(prompts, responses, self.pad_id), chunk, lengths,
                                  [rs.source(i) for i in chunk], on_policy, loss_mask(lengths, self.cfg.skip_first_tokens)))
        return out

    def train_step(self, step: int, seq_indices: list[int], on_policy: bool) -> dict:
        """One optimizer step. Each micro-batch's loss is divided by the completion tokens of the
        whole global batch (all micro-batches, all ranks), and multiplied by the world size because
        DDP averages gradients: the gradient equals that of one big batch (all terms but the CKA
        term, which is each micro-batch's own)."""
        live = self.cfg.method == "distill" and (on_policy or self.cfg.hidden_weight or self.cfg.cka_weight)
        self.placement.need(bool(live))  # the cached top-k stage never runs the teacher
        micro = self.micro_batches(step, seq_indices, on_policy)
        total = distributed.global_count(self.acc, sum(mb.n_tokens for mb in micro))
        for group in self.optimizer.param_groups:
            group["lr"] = lr_at(step - 1, self.cfg) * group["lr_ratio"]
        loss_value, part_values = 0.0, {}
        for i, mb in enumerate(micro):
            sync = i == len(micro) - 1
            ctx = self.acc.no_sync(self.student) if not sync and self.acc.num_processes > 1 else nullcontext()
            if self.masks is not None:
                self.masks.observe_rows(mb.batch.attention_mask)
            with ctx, self.acc.autocast():
                summed, parts = loss_sum(self.student, mb, self.cfg, self.teachers, self.train_set, self.pad_id)
                loss = summed * self.acc.num_processes / max(total, 1)
            if not distributed.all_finite(self.acc, loss):  # decided by every rank together
                raise FloatingPointError(f"non-finite loss at step {step}")
            distributed.backward(self.acc, loss, sync)
            loss_value += float(loss.detach()) / self.acc.num_processes
            for name, value in parts.items():
                part_values[name] = part_values.get(name, 0.0) + value * mb.n_tokens / max(total, 1)
        if self.masks is not None:
            self.masks.observe_grads()  # regrowth scores need the pruned weights' gradients: first
        if not self.deepspeed:
            self.constraint.mask_gradients(student_part.base_of(self.acc.unwrap_model(self.student), self.cfg))
            self.acc.clip_grad_norm_(self.student.parameters(), self.cfg.max_grad_norm)
            self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)
        if self.acc.num_processes > 1:  # each rank holds its share of the global batch's loss
            names = sorted(part_values)
            summed = self.acc.reduce(torch.tensor([loss_value, *(part_values[n] for n in names)], device=self.acc.device,
                                                  dtype=torch.float64), reduction="sum").tolist()
            loss_value, part_values = summed[0], dict(zip(names, summed[1:]))
        model = self.acc.unwrap_model(self.student)
        if self.masks is not None:
            self.masks.maybe_update(step, self.optimizer)
        self._keep_constraint(model)
        self.teachers.update_ema(model)
        return {"loss": loss_value, **part_values, "tokens": total}

    def _keep_constraint(self, model) -> None:
        """The Constraint back on the weights the forward uses. Not where the base is the
        teacher's, frozen (shared: the constraint acts in the forward), nor under ZeRO-3 (the
        gradients keep it). Under ZeRO-2 the master copy may drift where the mask is off; only
        this copy is masked, which is all the kept weights ever see."""
        if not self.shared and not self.partitioned:
            self.constraint.enforce(student_part.base_of(model, self.cfg))

    # -- evaluation and checkpoints --------------------------------------------------------------
    def evaluate(self, step: int, train: dict | None) -> dict:
        model = self.acc.unwrap_model(self.student)
        self.placement.need(True)
        with student_part.cached_weights(self.sharded or self.shared):  # shared: one cache would serve both
            res = fidelity(self.teacher, {"student": model}, self.validation, self.pad_id, progress=False)["student"]
            row = {"step": step, "stage": stage(step, self.cfg), **(train or {}),
                   **{k: res[k] for k in ("kl", "reverse_kl", "nll", "top1_agreement")}}
            if self.cfg.cka_every_eval:
                from ..analysis.layer_cka import trajectory

                row["cka"] = trajectory(self.teacher, model, self.validation, self.pad_id)
        self.history.append(row)
        tracking.log_row(self.acc, self.cfg.log_with, row)
        if self.acc.is_main_process:
            self.work.mkdir(parents=True, exist_ok=True)
            with open(self.work / METRICS_FILE, "a", encoding="utf-8") as fh:
                fh.write(json.dumps(row) + "\n")
        sign = 1 if LOWER_IS_BETTER[self.cfg.select_metric] else -1
        better = self.best is None or sign * row[self.cfg.select_metric] < sign * self.best[self.cfg.select_metric]
        # one decision for every rank (float noise could split it), as gathering the best weights is a collective
        if distributed.main_says(self.acc, better):
            self.best = row
            if self.cfg.select_best:
                self.best_state = self._trainable_state()
                self.best_masks = self.masks.snapshot() if self.masks is not None else None
        return row

    def _resume(self) -> None:
        state = load_checkpoint(self.work, self.acc.unwrap_model(self.student), self.optimizer, self.teachers.ema,
                                layout=self.layout, rank=self.acc.process_index, identity=self._identity())
        if state is None:
            self.log(f"no checkpoint in {self.work}; starting from step 0")
            return
        self.start_step, self.best, self.history = state["step"], state["best"], state["history"]
        self.tokens = state.get("tokens", 0)
        self.best_state = load_best(self.work)
        saved_masks = load_extra(self.work, "mask_update") if self.masks is not None else None
        if saved_masks is not None:
            self.masks.load_state(saved_masks, main=self.acc.is_main_process)
            self.best_masks = load_extra(self.work, "best_masks")
        # the masks as they were at the checkpoint: DeepSpeed restores its unmasked master copy
        self._keep_constraint(self.acc.unwrap_model(self.student))
        self.log(f"resuming from step {self.start_step}")

    def _checkpoint(self, step: int) -> None:
        """Every rank takes part (its RNG is kept; FSDP and DeepSpeed gather the shards); the main process writes."""
        rngs = rng_states()
        extra = self._checkpoint_extra()  # every rank: the mask update's activation sums are summed over them
        if self.layout == "plain" and not self.acc.is_main_process:
            return  # its weights and optimizer state are the main process's
        weights, optimizer_state = training_state(self.acc.unwrap_model(self.student), self.optimizer, self.layout)
        if not self.acc.is_main_process:
            return
        save_checkpoint(self.work, weights, optimizer_state, rngs, step,
                        {"best": self.best, "history": self.history, "tokens": self.tokens, "identity": self._identity()},
                        self.teachers.ema, extra, best=self.best_state)

    def _identity(self) -> dict:
        """What a checkpoint must have been written by to be resumed here: these settings (where and
        how the run is carried out aside) and these models."""
        def settings(cfg):
            return {k: v for k, v in run_identity(cfg.model_dump(mode="json")).items() if k not in PLACEMENT_ONLY}

        return {"settings": {"recover": settings(self.cfg), "data": settings(self.data_cfg)},
                "teacher": models.model_hash(self.teacher_path), "student": models.model_hash(self.student_path)}

    def _checkpoint_extra(self) -> dict:
        if self.masks is None:
            return {}
        return {"mask_update": self.masks.state(), **({"best_masks": self.best_masks} if self.best_masks else {})}

    # -- the schedule ----------------------------------------------------------------------------
    def run(self) -> dict:
        cfg = self.cfg
        steps = 0 if cfg.method == "none" else cfg.total_steps
        plan, on_policy = batch_order(len(self.train_set), cfg.batch_size, steps, cfg.seed), on_policy_steps(cfg, steps)
        tracking.start(self.acc, cfg.log_with, self.out.name,
                       {"recover": cfg.model_dump(mode="json"), "data": self.data_cfg.model_dump(mode="json")})
        if cfg.bf16 == "auto" and steps and self.acc.is_main_process:  # said once, after the inputs are checked
            self.log(f"precision (recover.bf16 auto): training in {self.precision} on {environment.device_label()}")
        if self.start_step == 0 and not self.history:
            self.evaluate(0, None)
        bar = tqdm(total=steps, initial=self.start_step, desc="recover", unit="step",
                   disable=not self.progress or not self.acc.is_main_process)
        started = time.perf_counter()
        with _finish_step_on_interrupt(self.acc.num_processes) as interrupted:
            self._loop(plan, on_policy, steps, bar, interrupted)
        bar.close()
        tracking.finish(self.acc, cfg.log_with)
        result = self._export(tokens=self.tokens, seconds=time.perf_counter() - started)
        if cfg.export and self.acc.is_main_process:
            from ..export import export_model

            result["export"] = export_model(self.out, cfg.export, self.export_target, log=self.log)
        self.acc.wait_for_everyone()  # no rank leaves while the main one still writes
        return result

    def _loop(self, plan, on_policy, steps, bar, interrupted) -> None:
        """The steps from the start (or the resumed step) to the end, evaluating and checkpointing
        on schedule; after an interrupt the step finishes and is checkpointed before stopping."""
        cfg, window, started, resumed_at = self.cfg, [], time.perf_counter(), self.tokens
        for step in range(self.start_step + 1, steps + 1):
            try:
                stats = self.train_step(step, plan[step - 1], on_policy[step - 1])
            except FloatingPointError as exc:
                bar.close()
                self._export(stopped=str(exc))
                self.acc.wait_for_everyone()  # no rank fails (and has the launcher stop the rest) mid-write
                raise RecoverLMError(f"{exc}; stopped and kept the best checkpoint in {self.out}") from exc
            self.tokens += stats["tokens"]
            window.append(stats)
            _show_progress(bar, window[-10:], on_policy[step - 1],
                           (self.tokens - resumed_at) / (time.perf_counter() - started))
            if (cfg.eval_every and step % cfg.eval_every == 0) or step == steps:
                row = self.evaluate(step, {f"train_{k}": sum(s[k] for s in window) / len(window)
                                           for k in ("loss", "divergence", "hidden", "cka") if k in window[0]})
                window = []
                bar.write(f"step {step} ({row['stage']}): validation KL {row['kl']:.4f}  NLL {row['nll']:.3f}  "
                          f"top-1 agreement {row['top1_agreement']:.3f}")
            stop = interrupted["stop"]  # read once: an interrupt arriving now is handled after the next step
            if step != steps and ((cfg.save_every and step % cfg.save_every == 0) or stop):
                self._checkpoint(step)
            if stop and step != steps:
                bar.close()
                self.log(f"stopped after step {step}; its checkpoint is in {self.work}: rerun with --resume "
                         "(recoverlm run resumes by itself)")
                raise KeyboardInterrupt

    # -- export ----------------------------------------------------------------------------------
    def _trainable_state(self) -> dict[str, torch.Tensor]:
        """A CPU copy of what training changes. Under FSDP and ZeRO-3 it is gathered whole on the main process
        (a collective: every rank calls it) and is empty elsewhere."""
        if self.sharded:  # ZeRO-3 answers None off the main process
            return dict(self.acc.get_state_dict(self.student) or {})
        return {k: v.clone() for k, v in trainable_state(self.acc.unwrap_model(self.student)).items()}

    def _model_to_export(self):
        """The trained model with the best checkpoint's weights; under FSDP a plain copy rebuilt from
        the gathered state (None on the other ranks)."""
        if not self.sharded:
            model = self.acc.unwrap_model(self.student)
            if self.best_state is not None:
                model.load_state_dict(self.best_state, strict=False)
                if self.best_masks is not None:  # the weights of the best step obey that step's masks
                    self.masks.restore(self.best_masks)
            if self.masks is not None:
                self.notes["mask_update"] = summary = self.masks.summary()
                self.log(f"mask update: {summary['updates']} updates swapped {summary['swapped']} weights in training; "
                         f"the exported checkpoint (step {self.best['step'] if self.best else 0}) has swapped "
                         f"{summary['changed']:.2%} of the degraded model's kept weights, at the same sparsity and pattern")
            return model
        state = self.best_state if self.best_state is not None else self._trainable_state()
        if not self.acc.is_main_process:
            return None
        with distributed.whole_weights_while_loading(self.acc):
            return student_part.rebuilt(self.student_path, self.constraint, state)

    def _export(self, **extra) -> dict:
        """Write the recovered model (best checkpoint, constraint verified) atomically."""
        self.acc.wait_for_everyone()
        model = self._model_to_export()
        record = {"teacher": str(self.teacher_path), "student": str(self.student_path),
                  "recover": self.cfg.model_dump(mode="json"), "data": self.data_cfg.model_dump(mode="json"),
                  "heldout_hash": heldout_hash(load_prompts(self.data_cfg.prompts), self.data_cfg.n_heldout,
                                               self.data_cfg.split_seed),
                  "train_sequences": len(self.train_set), "train_tokens": self.train_set.n_response_tokens,
                  "best_step": self.best["step"] if self.best else 0, "select_metric": self.cfg.select_metric,
                  "teacher_generation_dtype": environment.generation_dtype(self.data_cfg.teacher_generation_dtype),
                  "training_precision": self.precision,
                  "world_size": self.acc.num_processes, "distributed": self.acc.distributed_type.value,
                  **self.notes, **extra}
        if not self.acc.is_main_process:
            return record
        student_part.write_recovered(self.out, model, self.cfg, self.constraint, self.tokenizer, record, self.history)
        if "stopped" not in extra:
            shutil.rmtree(self.work, ignore_errors=True)
        return {**record, "history": self.history}


@contextlib.contextmanager
def _finish_step_on_interrupt(processes: int):
    """A first Ctrl-C lets the current step finish and be checkpointed, so nothing trained is lost;
    a second stops at once. One process only: ranks would stop after different steps."""
    interrupted = {"stop": False}
    if processes > 1 or threading.current_thread() is not threading.main_thread():
        yield interrupted
        return

    def handler(signum, frame):
        if interrupted["stop"]:
            raise KeyboardInterrupt
        interrupted["stop"] = True
        # One raw write to the terminal: a handler that prints while the loop prints to the same
        # buffered stream breaks that write ("reentrant call"), and the run would die there.
        try:
            os.write(2, b"interrupted: finishing this step, then saving a checkpoint (interrupt again to stop at once)\n")
        except OSError:
            pass

    previous = signal.signal(signal.SIGINT, handler)
    try:
        yield interrupted
    finally:
        signal.signal(signal.SIGINT, previous)


def _show_progress(bar, recent: list[dict], on_policy: bool, tokens_per_s: float) -> None:
    bar.set_postfix(stage="on" if on_policy else "off",
                    loss=f"{sum(s['loss'] for s in recent) / len(recent):.3f}",
                    kl=f"{sum(s['divergence'] for s in recent) / len(recent):.3f}",
                    tok_s=f"{tokens_per_s:.0f}")
    bar.update(1)


def recover(teacher_ref, student_ref, out: Path, cfg: RecoverConfig | None = None, data_cfg: DataConfig | None = None,
            progress: bool = True, log=print, resume: bool = False, timer: PhaseTimer | None = None) -> dict:
    """Distil `teacher_ref` into the damaged `student_ref` and save the recovered model to `out`."""
    return Recovery(teacher_ref, student_ref, out, cfg or RecoverConfig(), data_cfg or DataConfig(),
                    progress, log, resume, timer).run()
