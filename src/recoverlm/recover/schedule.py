"""What each step of a recovery does: its batch, its stage and its learning rate. All are
deterministic in the config, so a resumed run replays exactly the steps it would have taken."""

from __future__ import annotations

import math
import random

import torch

from ..config import RecoverConfig


def lr_at(step: int, cfg: RecoverConfig) -> float:
    """Linear warm-up, then cosine decay to a tenth of the peak, over both stages."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    progress = (step - cfg.warmup_steps) / max(1, cfg.total_steps - cfg.warmup_steps)
    return cfg.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0))))


def param_groups(model, cfg: RecoverConfig) -> list[dict]:
    """The trainable weights, and learned grid scale gains apart: their own peak lr and no weight
    decay (decay on a log gain would pull every scale back to the degraded model's)."""
    weights, scales = [], []
    for name, p in model.named_parameters():
        if p.requires_grad:
            (scales if name.endswith(".log_gain") else weights).append(p)
    groups = [{"params": weights, "weight_decay": cfg.weight_decay, "lr_ratio": 1.0}]
    if scales:
        groups.append({"params": scales, "weight_decay": 0.0, "lr_ratio": cfg.grid_scale_lr / cfg.lr})
    return groups


def batch_order(n: int, batch_size: int, steps: int, seed: int) -> list[list[int]]:
    """Sequence indices for every step: reshuffled each epoch, deterministic in the seed, so a
    resumed run sees exactly the batches it would have seen."""
    gen = torch.Generator().manual_seed(seed)
    order: list[int] = []
    while len(order) < steps * batch_size:
        order.extend(torch.randperm(n, generator=gen).tolist())
    return [order[i * batch_size:(i + 1) * batch_size] for i in range(steps)]


def on_policy_steps(cfg: RecoverConfig, steps: int) -> list[bool]:
    """Per step, whether the student samples its batch: stage-2 steps, each with probability lmbda."""
    coin = random.Random(cfg.seed)
    return [i >= cfg.offpolicy_steps and coin.random() < cfg.lmbda and cfg.method == "distill" for i in range(steps)]


def stage(step: int, cfg: RecoverConfig) -> str:
    if step == 0:
        return "start"
    return "off-policy" if step <= cfg.offpolicy_steps else "on-policy"
