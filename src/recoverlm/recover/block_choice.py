"""Which decoder blocks a recovery trains (recover.train_blocks): all of them, a given list, K at
random, or the K blocks the damaged student aligns least or most with the teacher by linear CKA.

Pure: the trainer measures the CKA trajectory (index 0 the embeddings, index l + 1 the output of
block l, as in analysis.layer_cka) and hands it in; nothing here touches a model.
"""

from __future__ import annotations

import math
import random

from ..config import BlockChoice
from ..errors import RecoverLMError

RULES = ("least_aligned", "most_aligned", "random")


def rule_of(choice) -> tuple[str, int] | None:
    """(rule, K) of a BlockChoice; None for `all` or a list."""
    if not isinstance(choice, BlockChoice):
        return None
    name = next(r for r in RULES if getattr(choice, r) is not None)
    return name, getattr(choice, name)


def needs_cka(choice) -> bool:
    """Whether the choice ranks blocks by CKA (least_aligned, most_aligned)."""
    rule = rule_of(choice)
    return rule is not None and rule[0] != "random"


def check_depth(choice, n_blocks: int) -> None:
    """Indices and K against the student's depth: one error naming both."""
    if isinstance(choice, list) and max(choice) >= n_blocks:
        raise RecoverLMError(f"recover.train_blocks: block {max(choice)} does not exist; the student has "
                             f"{n_blocks} blocks (0 to {n_blocks - 1})")
    rule = rule_of(choice)
    if rule is not None and rule[1] > n_blocks:
        raise RecoverLMError(f"recover.train_blocks {rule[0]}: K = {rule[1]} exceeds the student's {n_blocks} blocks")


def block_scores(cka: list[float], n_blocks: int, score: str) -> list[float]:
    """Per block: `drop`, the CKA lost across it (input's minus output's); `output`, its output's CKA."""
    if len(cka) != n_blocks + 1:
        raise RecoverLMError(f"train_blocks: a CKA trajectory of {len(cka)} layers does not fit {n_blocks} blocks "
                             f"(it needs the embeddings and every block: {n_blocks + 1})")
    bad = [i for i, v in enumerate(cka) if v is None or not math.isfinite(v)]
    if bad:
        raise RecoverLMError(f"train_blocks: the CKA at layer {bad[0]} is undefined ({cka[bad[0]]}); "
                             "choose the blocks by index or at random")
    if score == "drop":
        return [cka[i] - cka[i + 1] for i in range(n_blocks)]
    if score == "output":
        return [cka[i + 1] for i in range(n_blocks)]
    raise RecoverLMError(f"train_blocks score must be drop or output, got {score!r}")


def choose_blocks(choice, cka: list[float] | None, n_blocks: int, seed: int) -> tuple[list[int], list[float] | None]:
    """The sorted blocks to train, and the per-block scores they were ranked by (None unless by CKA).

    Least aligned: the largest drops, or the lowest output CKA; most aligned the opposite. Ties go
    to the lower index, so the choice is a function of its inputs only.
    """
    if choice == "all":
        return list(range(n_blocks)), None
    check_depth(choice, n_blocks)
    if isinstance(choice, list):
        return sorted(choice), None
    rule, k = rule_of(choice)
    if rule == "random":
        return sorted(random.Random(seed).sample(range(n_blocks), k)), None
    if cka is None:
        raise RecoverLMError(f"train_blocks {rule} needs the CKA trajectory of the damaged student")
    scores = block_scores(cka, n_blocks, choice.score)
    # misalignment: higher = less aligned with the teacher
    misaligned = scores if choice.score == "drop" else [-s for s in scores]
    sign = -1 if rule == "least_aligned" else 1
    ranked = sorted(range(n_blocks), key=lambda i: (sign * misaligned[i], i))
    return sorted(ranked[:k]), scores


def choice_record(choice):
    """The choice as recovery.json keeps it: `all`, the list, or {rule: K, score}."""
    if isinstance(choice, BlockChoice):
        return choice.model_dump(exclude_none=True)
    return choice


def describe(choice, blocks: list[int], scores: list[float] | None, n_blocks: int, seed: int) -> str:
    """One log line: which blocks train, and why."""
    rule = rule_of(choice)
    if rule is None:
        head = f"train_blocks {choice}"
    elif rule[0] == "random":
        head = f"train_blocks random {rule[1]} (seed {seed})"
    else:
        head = f"train_blocks {rule[0]} {rule[1]} (score {choice.score})"
    line = f"{head}: blocks {blocks} of {n_blocks}"
    if scores is not None:
        label = "CKA drop" if choice.score == "drop" else "output CKA"
        line += f"; {label} " + ", ".join(f"{scores[b]:.3f}" for b in blocks)
    return line


def check_models(choice, teacher_blocks: int, student_blocks: int) -> None:
    """Before any teacher work: the choice fits the student, and a CKA rule, which compares the
    student's block l with the teacher's block l, has a teacher of the student's depth."""
    if choice == "all":
        return
    check_depth(choice, student_blocks)
    if needs_cka(choice) and teacher_blocks != student_blocks:
        raise RecoverLMError(f"recover.train_blocks {rule_of(choice)[0]} compares each block with the teacher's "
                             f"block of the same index: it needs the teacher's depth ({teacher_blocks} blocks), "
                             f"the student has {student_blocks}")
