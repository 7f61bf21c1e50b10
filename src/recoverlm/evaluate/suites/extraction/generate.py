"""Regenerate extraction.jsonl: 200 held-out items of the built-in extraction task, from HELDOUT_SEED.

The items are the ones task_accuracy draws (its first n are the first n here), so the suite and
task_accuracy score the same prompts. Run: python generate.py (the output is committed; rerunning
reproduces it byte for byte, and the tests check that it still does).
"""

import json
from pathlib import Path

from recoverlm.tasks import HELDOUT_SEED, TASKS

TASK, N = "extraction", 200


def generate(n: int = N, seed: int = HELDOUT_SEED) -> list[dict]:
    return [{"id": f"{TASK}-{i:03d}", **item} for i, item in enumerate(TASKS[TASK].generate(n, seed))]


if __name__ == "__main__":
    out = Path(__file__).with_name(f"{TASK}.jsonl")
    out.write_text("".join(json.dumps(item) + "\n" for item in generate()))
    print(f"wrote {N} items to {out}")
