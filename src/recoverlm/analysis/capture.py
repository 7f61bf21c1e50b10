"""Hidden-state capture for CKA: teacher and students see the same tokens, once per batch."""

from __future__ import annotations

import torch
from tqdm.auto import tqdm

from ..data import collate
from ..recover.response_set import ResponseSet
from .cka import LinearCKAAccumulator


def hidden_states(model, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Embeddings, then the output of every decoder block, as the model reports them."""
    device = next(model.parameters()).device
    out = model(input_ids=input_ids.to(device), attention_mask=attention_mask.to(device), output_hidden_states=True,
                use_cache=False)
    return out.hidden_states


@torch.no_grad()
def layer_cka(teacher, students: dict[str, torch.nn.Module], eval_set: ResponseSet, pad_id: int,
              batch_size: int = 8, progress: bool = True) -> dict[str, dict]:
    """Per student, linear CKA between teacher layer l and student layer l over every real token.

    Streams float64 moments (LinearCKAAccumulator), so memory does not grow with the token count;
    padding is masked out. Layers are paired by index up to the shallower model's depth.
    """
    accs: dict[str, list[LinearCKAAccumulator]] = {}
    teacher.eval()
    for m in students.values():
        m.eval()
    for start in tqdm(range(0, len(eval_set), batch_size), desc="cka", disable=not progress, leave=False):
        sl = slice(start, start + batch_size)
        batch = collate(eval_set.prompt_ids[sl], eval_set.response_ids[sl], pad_id)
        keep = batch.attention_mask.bool()
        t_states = [h[keep.to(h.device)].cpu() for h in hidden_states(teacher, batch.input_ids, batch.attention_mask)]
        for name, student in students.items():
            s_states = [h[keep.to(h.device)].cpu() for h in hidden_states(student, batch.input_ids, batch.attention_mask)]
            pairs = min(len(t_states), len(s_states))
            if name not in accs:
                accs[name] = [LinearCKAAccumulator(t_states[i].shape[1], s_states[i].shape[1]) for i in range(pairs)]
            for acc, t, s in zip(accs[name], t_states, s_states):
                acc.update(t, s)
    return {
        name: {"layers": list(range(len(a))), "linear": [acc.value() for acc in a],
               "debiased": [acc.debiased_value() for acc in a], "tokens": a[0].n if a else 0}
        for name, a in accs.items()
    }
