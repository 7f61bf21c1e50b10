"""Regenerate rewriting.jsonl: 200 held-out items of the built-in rewriting task, from HELDOUT_SEED.

The items are the ones task_accuracy draws (its first n are the first n here), so the suite and
task_accuracy score the same prompts. Run: python generate.py (the output is committed; rerunning
reproduces it byte for byte, and the tests check that it still does).
"""

import json
from pathlib import Path

from recoverlm.tasks import suite_items


def generate() -> list[dict]:
    return suite_items("rewriting")


if __name__ == "__main__":
    out = Path(__file__).with_name("rewriting.jsonl")
    out.write_text("".join(json.dumps(item) + "\n" for item in generate()))
    print(f"wrote {out}")
