"""Shared by the task generators: distinct items, reproducible from (task, seed)."""

from __future__ import annotations

import random
from typing import Callable


def distinct_items(name: str, make: Callable[[random.Random], dict], n: int, seed: int) -> list[dict]:
    """`n` items with distinct prompts; the same (name, n, seed) always gives the same list."""
    rng, seen, items = random.Random(f"{name}:{seed}"), set(), []
    while len(items) < n:
        item = make(rng)
        if item["prompt"] not in seen:
            seen.add(item["prompt"])
            items.append(item)
    return items
