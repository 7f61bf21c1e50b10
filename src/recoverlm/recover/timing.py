"""Where a training step's time goes, for the benchmarks: the trainer reports its phases here."""

from __future__ import annotations

import contextlib
import time
from collections import defaultdict
from collections.abc import Iterator


class PhaseTimer:
    """Wall seconds, calls and produced tokens per named phase of a step ("sample": the student's
    on-policy generation, "teacher": teacher forward passes). Hand one to `Recovery(timer=...)`."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.seconds: dict[str, float] = defaultdict(float)
        self.calls: dict[str, int] = defaultdict(int)
        self.tokens: dict[str, int] = defaultdict(int)

    @contextlib.contextmanager
    def phase(self, name: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] += time.perf_counter() - start
            self.calls[name] += 1

    def count(self, name: str, tokens: int) -> None:
        self.tokens[name] += tokens


@contextlib.contextmanager
def phase(timer: PhaseTimer | None, name: str) -> Iterator[None]:
    """`timer.phase(name)`, or nothing when no timer was asked for."""
    if timer is None:
        yield
    else:
        with timer.phase(name):
            yield
