"""Off-policy self-distillation: the student learns the teacher's token distributions on the
teacher's own responses, while the degradation's Constraint is kept after every step."""

from __future__ import annotations

import math
import time
from pathlib import Path

import torch
from tqdm.auto import tqdm

from .. import models
from ..config import DataConfig, RecoverConfig
from ..constraints import load_constraint
from ..data import collate
from ..errors import RecoverLMError
from ..evaluate.fidelity import fidelity
from ..io import atomic_dir, write_json_atomic
from .losses import token_nll, topk_forward_kl
from .response_set import ResponseSet, distill_set, heldout_set
from .rollout import completion_logits, completion_targets


def lr_at(step: int, cfg: RecoverConfig) -> float:
    """Linear warm-up, then cosine decay to a tenth of the peak."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    progress = (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps)
    return cfg.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0))))


def batch_order(n: int, batch_size: int, steps: int, seed: int) -> list[list[int]]:
    """Sequence indices for every step: reshuffled each epoch, deterministic in the seed."""
    gen = torch.Generator().manual_seed(seed)
    order: list[int] = []
    while len(order) < steps * batch_size:
        order.extend(torch.randperm(n, generator=gen).tolist())
    return [order[i * batch_size:(i + 1) * batch_size] for i in range(steps)]


def distill_loss(student, train_set: ResponseSet, seq_indices: list[int], pad_id: int, cfg: RecoverConfig):
    """Sum of per-token losses over the batch's response tokens, and the token count."""
    batch = collate([train_set.prompt_ids[i] for i in seq_indices], [train_set.response_ids[i] for i in seq_indices], pad_id)
    logits = completion_logits(student, batch)
    if cfg.loss == "forward_kl":
        idx, lp = train_set.topk_rows(seq_indices)
        per_token = topk_forward_kl(logits, lp.to(logits.device), idx.to(logits.device), cfg.temperature)
    else:
        per_token = token_nll(logits, completion_targets(batch).to(logits.device))
    return per_token.sum(), per_token.numel()


def recover(teacher_ref, student_ref, out: Path, cfg: RecoverConfig | None = None, data_cfg: DataConfig | None = None,
            progress: bool = True, log=print) -> dict:
    """Distil `teacher_ref` into the damaged `student_ref` and save the recovered model to `out`."""
    cfg, data_cfg = cfg or RecoverConfig(), data_cfg or DataConfig()
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    teacher_path, student_path = models.resolve_model(teacher_ref), models.resolve_model(student_ref)
    if Path(out).resolve() in (teacher_path.resolve(), student_path.resolve()):
        raise RecoverLMError(f"output {out} would overwrite an input model")
    tokenizer = models.load_tokenizer(teacher_path)
    models.check_same_vocab(tokenizer, models.load_tokenizer(student_path))
    teacher = models.load_model(teacher_path, dtype=torch.float32)
    train_set = distill_set(teacher_path, data_cfg, teacher=teacher, log=log)
    heldout = heldout_set(teacher_path, data_cfg, log=log)
    if cfg.loss == "forward_kl" and train_set.topk_indices is None:
        raise RecoverLMError("forward_kl needs cached teacher logits: set data.top_k_logits > 0")

    student = models.load_model(student_path, dtype=torch.float32)
    constraint = load_constraint(student_path)
    constraint.attach(student)
    student.train()
    torch.manual_seed(cfg.seed)
    optimizer = torch.optim.AdamW([p for p in student.parameters() if p.requires_grad], lr=cfg.lr,
                                  weight_decay=cfg.weight_decay, betas=(0.9, 0.95))
    pad_id = tokenizer.pad_token_id
    history: list[dict] = []

    def evaluate(step: int, train_loss: float | None) -> dict:
        res = fidelity(teacher, {"student": student}, heldout, pad_id, progress=False)["student"]
        row = {"step": step, "train_loss": train_loss, **{k: res[k] for k in ("kl", "reverse_kl", "nll", "top1_agreement")}}
        history.append(row)
        return row

    best = evaluate(0, None)
    best_state = {k: v.detach().clone() for k, v in student.state_dict().items()} if cfg.select_best else None
    plan = batch_order(len(train_set), cfg.batch_size, cfg.steps, cfg.seed)
    bar = tqdm(plan, desc="recover", unit="step", disable=not progress)
    tokens_seen, started, window = 0, time.perf_counter(), []
    for step, seq_indices in enumerate(bar, 1):
        for group in optimizer.param_groups:
            group["lr"] = lr_at(step - 1, cfg)
        loss_sum, n_tok = distill_loss(student, train_set, seq_indices, pad_id, cfg)
        loss = loss_sum / n_tok
        if not torch.isfinite(loss):
            _save(student, best_state, constraint, tokenizer, out, history, teacher_path, student_path, cfg, data_cfg)
            raise RecoverLMError(f"non-finite loss at step {step}; stopped and kept the best checkpoint in {out}")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(student.parameters(), 1.0)
        optimizer.step()
        constraint.enforce(student)
        tokens_seen += n_tok
        window.append(float(loss.detach()))
        bar.set_postfix(loss=f"{sum(window[-10:]) / len(window[-10:]):.3f}",
                        tok_s=f"{tokens_seen / (time.perf_counter() - started):.0f}")
        if (cfg.eval_every and step % cfg.eval_every == 0) or step == cfg.steps:
            row = evaluate(step, sum(window) / len(window))
            window = []
            bar.write(f"step {step}: held-out KL {row['kl']:.4f}  NLL {row['nll']:.3f}  agreement {row['top1_agreement']:.3f}")
            if cfg.select_best and row["kl"] < best["kl"]:
                best, best_state = row, {k: v.detach().clone() for k, v in student.state_dict().items()}
    bar.close()
    if not cfg.select_best:
        best = history[-1]
    summary = _save(student, best_state, constraint, tokenizer, out, history, teacher_path, student_path, cfg, data_cfg,
                    best_step=best["step"], tokens=tokens_seen, seconds=time.perf_counter() - started,
                    train_sequences=len(train_set), train_tokens=train_set.n_response_tokens)
    return summary


def _save(student, best_state, constraint, tokenizer, out, history, teacher_path, student_path, cfg, data_cfg, **extra) -> dict:
    if best_state is not None:
        student.load_state_dict(best_state)
    constraint.finalize(student)
    check = constraint.verify(student)
    record = {"teacher": str(teacher_path), "student": str(student_path), "constraint": check,
              "recover": cfg.model_dump(mode="json"), "data": data_cfg.model_dump(mode="json"), **extra}
    with atomic_dir(Path(out)) as tmp:
        student.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        constraint.save(tmp)
        write_json_atomic(tmp / "recovery.json", record)
        with open(tmp / "metrics.jsonl", "w", encoding="utf-8") as fh:
            import json
            for row in history:
                fh.write(json.dumps(row) + "\n")
    return {**record, "history": history}
