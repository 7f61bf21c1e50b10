"""Regenerate arithmetic.jsonl: 200 unique 1-2 digit +, -, x questions from a fixed seed.

Run: python generate.py  (the output is committed; rerunning reproduces it byte for byte).
"""

import json
import random
from pathlib import Path

SEED, N = 1234, 200
OPS = {"plus": lambda a, b: a + b, "minus": lambda a, b: a - b, "times": lambda a, b: a * b}


def operand(rng: random.Random, max_digits: int = 2) -> int:
    return rng.randint(1, 9) if rng.randint(1, max_digits) == 1 else rng.randint(10, 99)


def generate(seed: int = SEED, n: int = N) -> list[dict]:
    rng, items, seen = random.Random(seed), [], set()
    while len(items) < n:
        op = ("plus", "minus", "times")[len(items) % 3]
        a, b = operand(rng), operand(rng, max_digits=1 if op == "times" else 2)
        if op == "minus" and a < b:
            a, b = b, a  # keep answers non-negative
        if (a, op, b) in seen:
            continue
        seen.add((a, op, b))
        items.append({"id": f"arith-{len(items):03d}", "op": op, "question": f"What is {a} {op} {b}?",
                      "answer": str(OPS[op](a, b))})
    return items


if __name__ == "__main__":
    out = Path(__file__).with_name("arithmetic.jsonl")
    out.write_text("".join(json.dumps(item) + "\n" for item in generate()))
    print(f"wrote {N} items to {out}")
