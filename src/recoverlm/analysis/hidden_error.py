"""How far a student's hidden states lie from the teacher's, in the units `hidden_weight` trains.

CKA asks whether two representations share their geometry up to rotation and scale; this asks
whether they are the same vectors. The two can part ways, which is why an intervention on one is
read against both.
"""

from __future__ import annotations

import torch

from ..data import collate
from ..lm.forward import completion_outputs
from ..ops.divergences import hidden_relative_error
from ..teacher.response_set import ResponseSet


def relative_hidden_error(teacher, student, eval_set: ResponseSet, pad_id: int, batch_size: int = 8) -> list[float]:
    """Per block (its raw output, the layers `hidden_weight` trains), the mean over
    response-predicting positions of |h_student - h_teacher|^2 / |h_teacher|^2."""
    sums, count = None, 0
    with torch.no_grad():
        for start in range(0, len(eval_set), batch_size):
            sl = slice(start, start + batch_size)
            batch = collate(eval_set.prompt_ids[sl], eval_set.response_ids[sl], pad_id)
            _, t = completion_outputs(teacher, batch, logits=False, hidden=True)
            _, s = completion_outputs(student, batch, logits=False, hidden=True)
            per = hidden_relative_error(s, t).double().sum(1)
            sums = per if sums is None else sums + per
            count += t.shape[1]
    return [] if sums is None else (sums / max(count, 1)).tolist()
