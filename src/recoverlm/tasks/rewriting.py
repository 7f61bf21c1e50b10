"""Rewriting: apply a rule stated in the prompt to a short list of words; the answer is the new list.

The rules (reverse, rotate, swap the ends) are pure position bookkeeping, so the answer is exact
and a 135M model can learn them in a few hundred steps; because the rule is named in the prompt,
one model must tell them apart rather than memorise one permutation.
"""

from __future__ import annotations

import random

from .sampling import distinct_items

NAME = "rewriting"

_WORDS = ["apple", "river", "stone", "cloud", "green", "tiger", "piano", "bread", "candle", "mirror", "garden",
          "window", "silver", "rocket", "forest", "button", "castle", "pepper", "winter", "island", "lemon",
          "basket", "violet", "dragon", "anchor", "pencil", "meadow", "copper", "falcon", "ladder", "orange",
          "saddle", "thunder", "velvet", "walnut", "harbor", "jacket", "kettle", "marble", "needle"]
RULES = {
    "reverse the order of the words": lambda w: w[::-1],
    "move the first word to the end": lambda w: w[1:] + w[:1],
    "swap the first and the last word": lambda w: w[-1:] + w[1:-1] + w[:1],
}


def _item(rng: random.Random) -> dict:
    rule = rng.choice(sorted(RULES))
    words = rng.sample(_WORDS, rng.randint(4, 6))  # distinct words: every rule has one unambiguous answer
    answer = RULES[rule](words)
    prompt = f"Rewrite the words by the rule.\nRule: {rule}\nWords: {' '.join(words)}\nAnswer with the words only."
    return {"prompt": prompt, "response": " ".join(answer), "answer": answer}


def generate(n: int, seed: int) -> list[dict]:
    """`n` items with distinct prompts; the same (n, seed) always gives the same list."""
    return distinct_items(NAME, _item, n, seed)


def check(response_text: str, item: dict) -> bool:
    """The same words in the same order; only whitespace is forgiven."""
    return response_text.split() == list(item["answer"])
