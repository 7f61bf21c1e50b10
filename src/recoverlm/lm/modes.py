"""Train/eval mode for measurements taken in the middle of training."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator


@contextlib.contextmanager
def eval_mode(*models) -> Iterator[None]:
    """eval() for the block, then each model's own mode back: a trainer evaluates, samples and
    measures CKA mid-run, and dropout or checkpointing must come back on afterwards."""
    modes = [m.training for m in models]
    for m in models:
        m.eval()
    try:
        yield
    finally:
        for m, mode in zip(models, modes):
            m.train(mode)
