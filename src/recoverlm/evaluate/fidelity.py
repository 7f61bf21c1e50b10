"""Teacher fidelity: how closely a student's next-token distributions follow the teacher's.

Measured on the teacher's greedy responses to held-out prompts, over response tokens only,
with the full vocabulary (no top-k shortcut), so the numbers are true KLs.
"""

from __future__ import annotations

import torch
from tqdm.auto import tqdm

from ..data import collate
from ..lm.forward import completion_logits, completion_targets
from ..lm.generate import generate
from ..lm.modes import eval_mode
from ..ops.divergences import forward_kl, reverse_kl
from ..teacher.response_set import ResponseSet

METRICS = ("kl", "reverse_kl", "nll", "top1_agreement")
GENERATION_METRICS = ("exact_match", "length_ratio")
# Which direction is better for each metric (used by best-checkpoint selection); length_ratio has
# no better direction: 1 means the student answers at the teacher's length.
LOWER_IS_BETTER = {"kl": True, "reverse_kl": True, "nll": True, "top1_agreement": False, "exact_match": False}


def token_metrics(s_logits: torch.Tensor, t_logits: torch.Tensor, targets: torch.Tensor) -> dict[str, torch.Tensor]:
    """Every fidelity metric per response token, from full-vocabulary logits."""
    return {
        "kl": forward_kl(s_logits, t_logits),
        "reverse_kl": reverse_kl(s_logits, t_logits),
        "nll": torch.nn.functional.cross_entropy(s_logits, targets.to(s_logits.device), reduction="none"),
        "top1_agreement": (s_logits.argmax(-1) == t_logits.argmax(-1)).float(),
    }


@torch.no_grad()
def fidelity(teacher, students: dict[str, torch.nn.Module], eval_set: ResponseSet, pad_id: int,
             batch_size: int = 8, progress: bool = True) -> dict[str, dict]:
    """Per student: mean forward KL(T||S), reverse KL, NLL of the teacher's tokens, top-1 agreement.

    The teacher runs once per batch and every student is compared against that one pass. A
    student that *is* the teacher object reuses the teacher's logits. Per-sequence means are kept
    under "per_item" for paired bootstrap intervals.
    """
    sums = {name: {m: 0.0 for m in METRICS} for name in students}
    per_item = {name: {m: [0.0] * len(eval_set) for m in METRICS} for name in students}
    n_tokens = 0
    # Length bucketing: batches of similar lengths waste little on padding; items keep their order.
    order = sorted(range(len(eval_set)), key=lambda i: len(eval_set.prompt_ids[i]) + len(eval_set.response_ids[i]))
    with eval_mode(teacher, *students.values()):
        for start in tqdm(range(0, len(eval_set), batch_size), desc="fidelity", disable=not progress, leave=False):
            idx = order[start:start + batch_size]
            batch = collate([eval_set.prompt_ids[i] for i in idx], [eval_set.response_ids[i] for i in idx], pad_id)
            lengths = [len(eval_set.response_ids[i]) for i in idx]
            targets = completion_targets(batch)
            t_logits = completion_logits(teacher, batch).float()
            n_tokens += targets.numel()
            for name, student in students.items():
                s_logits = t_logits if student is teacher else completion_logits(student, batch).float()
                for metric, v in token_metrics(s_logits, t_logits.to(s_logits.device), targets).items():
                    v = v.cpu().double()
                    sums[name][metric] += float(v.sum())
                    for i, x in zip(idx, torch.split(v, lengths)):
                        per_item[name][metric][i] = float(x.mean())
    return {
        name: {**{m: sums[name][m] / max(n_tokens, 1) for m in METRICS}, "tokens": n_tokens,
               "sequences": len(eval_set), "per_item": per_item[name]}
        for name in students
    }


def generation_metrics(students: dict[str, torch.nn.Module], tokenizer, eval_set: ResponseSet, max_new_tokens: int,
                       batch_size: int = 16, progress: bool = True) -> dict[str, dict]:
    """Greedy responses of each student against the teacher's: exact-match rate and length ratio.

    Self-distillation is said to shorten responses; the mean of len(student) / len(teacher) per
    prompt measures it. Per-prompt values are kept for paired intervals.
    """
    out = {}
    for name, model in students.items():
        responses = generate(model, tokenizer, eval_set.prompt_ids, max_new_tokens, batch_size=batch_size,
                             desc=f"greedy responses ({name})", progress=progress)
        exact = [float(r == t) for r, t in zip(responses, eval_set.response_ids)]
        ratio = [len(r) / max(len(t), 1) for r, t in zip(responses, eval_set.response_ids)]
        out[name] = {"exact_match": sum(exact) / len(exact), "length_ratio": sum(ratio) / len(ratio),
                     "per_item": {"exact_match": exact, "length_ratio": ratio}, "responses": responses}
    return out
