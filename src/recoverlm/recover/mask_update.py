"""Recovery that may re-choose a pruned student's mask (recover.mask_update). With the mask frozen
the student can only re-weight the connections the one-shot pruner kept; here, on schedule, the
weakest kept weights give their places to the pruned weights the loss pulls on hardest, row by
row or n:m group by group, so sparsity and pattern stay exactly those of the degraded model.

The scores need what training already computes: the inputs of each masked matrix (a running sum of
squares per input feature, from the training forwards) and the gradient of every weight, pruned
ones included (a dense parameter whose pruned entries are zeroed after each step still gets their
gradient). One weight-sized float32 accumulator per masked matrix is the memory cost.
"""

from __future__ import annotations

import torch

from ..config import MaskUpdateConfig
from ..constraints.base import find_param, modules_of
from ..ops.mask_swap import swap, swap_fraction


class MaskUpdater:
    """The running scores and the schedule of one run's mask updates; the masks themselves stay
    in the SparsityConstraint, which every step enforces."""

    def __init__(self, constraint, model, teacher, cfg: MaskUpdateConfig, total_steps: int, reduce=None):
        self.constraint, self.teacher, self.cfg = constraint, teacher, cfg
        self.stop = max(1, round(cfg.stop * total_steps))
        self.reduce = reduce  # sums a tensor over processes (DDP: each rank sees its own inputs)
        self.initial = {n: m.clone() for n, m in constraint.masks.items()}
        # Frozen matrices (recover.train_blocks) have no gradient to regrow by: their masks stay.
        self.params = {n: p for n in constraint.masks if (p := find_param(model, n)).requires_grad}
        names = list(self.params)
        self.act_sq = {n: torch.zeros(p.shape[1], dtype=torch.float64, device=p.device) for n, p in self.params.items()}
        self.grad_sum = {n: torch.zeros_like(p, dtype=torch.float32) for n, p in self.params.items()}
        self.updates = self.swapped = 0
        self.real = None  # the next forward's token positions (observe_rows)
        self.hooks = [module.register_forward_pre_hook(self._input_hook(name))
                      for name, module in modules_of(model, names, "mask_update")]

    def _input_hook(self, name: str):
        def hook(module, args):
            if torch.is_grad_enabled() and args:  # training forwards only, not sampling or evaluation
                x = args[0].detach()
                x = x.reshape(-1, x.shape[-1])
                if self.real is not None and self.real.numel() == x.shape[0]:
                    x = x[self.real.to(x.device)]
                self.act_sq[name] += x.float().square().sum(0).double()
        return hook

    def observe_rows(self, attention_mask: torch.Tensor | None) -> None:
        """The positions of the next training forward that hold tokens: Wanda's norms are of real
        inputs, and a right-padded batch would count its padding too."""
        self.real = None if attention_mask is None else attention_mask.reshape(-1).bool()

    @torch.no_grad()
    def observe_grads(self) -> None:
        """After a step's backward: add each masked matrix's gradient to its accumulator."""
        for name, p in self.params.items():
            if p.grad is not None:
                self.grad_sum[name] += p.grad.float()

    @torch.no_grad()
    def maybe_update(self, step: int, optimizer) -> dict | None:
        """After the optimizer step: re-choose the masks when the schedule says so; the swapped
        weights' optimizer moments restart from zero. Returns what changed, or None."""
        fraction = swap_fraction(step, self.cfg.every, self.cfg.fraction, self.stop)
        if not fraction:
            return None
        state = getattr(optimizer, "optimizer", optimizer).state
        swapped = 0
        for name, p in self.params.items():
            act = self.act_sq[name] if self.reduce is None else self.reduce(self.act_sq[name])
            old = self.constraint.masks[name].to(p.device)
            keep_score = p.detach().abs().double() * act.sqrt()[None, :]
            new = swap(old, keep_score, self.grad_sum[name].abs(), fraction)
            grown, dropped = new & ~old, old & ~new
            p[dropped] = 0
            p[grown] = (find_param(self.teacher, name).to(p.device, p.dtype)[grown] if self.cfg.regrow == "teacher"
                        else 0)
            for moment in state.get(p, {}).values():
                if torch.is_tensor(moment) and moment.shape == p.shape:
                    moment[grown | dropped] = 0
            self.constraint.set_mask(name, new)
            self.grad_sum[name].zero_()
            swapped += int(grown.sum())
        self.updates += 1
        self.swapped += swapped
        return {"step": step, "fraction": fraction, "swapped": swapped}

    def snapshot(self) -> dict[str, torch.Tensor]:
        return {n: m.clone() for n, m in self.constraint.masks.items()}

    def restore(self, masks: dict[str, torch.Tensor]) -> None:
        for name, mask in masks.items():
            self.constraint.set_mask(name, mask)

    def state(self) -> dict[str, torch.Tensor]:
        """What a checkpoint keeps to resume exactly: the masks, both accumulators and the counts.
        Each process sums the inputs it saw, so the activation sums are summed over processes (a
        collective: every rank calls it); the gradients are the same everywhere already."""
        out = {f"mask.{n}": m.to(torch.uint8) for n, m in self.constraint.masks.items()}
        out.update({f"act.{n}": self.reduce(a.clone()) if self.reduce else a for n, a in self.act_sq.items()})
        out.update({f"grad.{n}": g for n, g in self.grad_sum.items()})
        out["counts"] = torch.tensor([self.updates, self.swapped], dtype=torch.int64)
        return out

    def load_state(self, tensors: dict[str, torch.Tensor], main: bool = True) -> None:
        """`main`: this process takes the saved activation sums (those of every process); the others
        start theirs from zero, so that the next update's sum over processes is what it was."""
        for name in self.params:
            self.constraint.set_mask(name, tensors[f"mask.{name}"])
            self.act_sq[name].copy_(tensors[f"act.{name}"] if main else torch.zeros_like(self.act_sq[name]))
            self.grad_sum[name].copy_(tensors[f"grad.{name}"])
        self.updates, self.swapped = (int(v) for v in tensors["counts"])

    def summary(self) -> dict:
        """How much of the degraded model's mask the recovered model changed: the share of its kept
        weights that are pruned now (as many pruned ones took their places), overall and per matrix."""
        per_matrix = {}
        moved = kept = 0
        for name, first in self.initial.items():
            now = self.constraint.masks[name]
            n_moved, n_kept = int((first & ~now).sum()), int(first.sum())
            per_matrix[name] = n_moved / max(n_kept, 1)
            moved, kept = moved + n_moved, kept + n_kept
        return {"updates": self.updates, "swapped": self.swapped, "changed": moved / max(kept, 1),
                "settings": self.cfg.model_dump(mode="json"), "stop_step": self.stop, "per_matrix": per_matrix}

    def close(self) -> None:
        for hook in self.hooks:
            hook.remove()
