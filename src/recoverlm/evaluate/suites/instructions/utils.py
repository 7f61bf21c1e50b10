"""Data location and IFEval-style checkers for the instructions suite.

Each doc carries `checks`: a list of {"type": <key of CHECKERS>, "arg": str | None}. Strict accuracy
runs the checkers on the raw response; loose accuracy (as in IFEval) also accepts a check if it
passes after dropping the first and/or last line and/or removing markdown asterisks.
"""

import json
import re
from itertools import chain
from pathlib import Path
from typing import Callable

DATA_FILES = {"test": str(Path(__file__).with_name("instructions.jsonl"))}  # see knowledge/utils.py

_WORD = re.compile(r"[A-Za-z0-9']+")


def words(text: str) -> list[str]:
    return _WORD.findall(text)


def _keyword(text: str, word: str) -> bool:
    return re.search(rf"\b{re.escape(word)}\b", text, re.IGNORECASE) is not None


def _json(text: str) -> bool:
    text = re.sub(r"^```(?:json)?\s*|\s*```$", "", text.strip(), flags=re.IGNORECASE)
    try:
        json.loads(text)
    except ValueError:
        return False
    return True


def _quoted(text: str) -> bool:
    s = text.strip()
    return len(s) > 1 and s[0] in '"\u201c' and s[-1] in '"\u201d'


CHECKERS: dict[str, Callable[[str, str | None], bool]] = {
    "one_word": lambda r, _: len(words(r)) == 1,
    "lowercase": lambda r, _: r == r.lower() and r != r.upper(),
    "uppercase": lambda r, _: r == r.upper() and r != r.lower(),
    "bullets": lambda r, n: len(re.findall(r"^\s*[-*\u2022]\s+\S", r, re.MULTILINE)) == int(n),
    "end_word": lambda r, w: words(r)[-1:] != [] and words(r)[-1].lower() == w.lower(),
    "start_word": lambda r, w: words(r)[:1] != [] and words(r)[0].lower() == w.lower(),
    "keyword": lambda r, w: _keyword(r, w),
    "forbidden_word": lambda r, w: not _keyword(r, w),
    "no_commas": lambda r, _: "," not in r,
    "max_words": lambda r, n: len(words(r)) <= int(n),
    "min_words": lambda r, n: len(words(r)) >= int(n),
    "quoted": lambda r, _: _quoted(r),
    "number_only": lambda r, _: re.fullmatch(r"-?\d+(?:\.\d+)?\.?", r.strip()) is not None,
    "json": lambda r, _: _json(r),
    "title": lambda r, _: re.search(r"<<[^\n]+>>", r) is not None,
    "postscript": lambda r, _: re.search(r"^\s*p\.\s?s\.", r, re.IGNORECASE | re.MULTILINE) is not None,
    "end_punct": lambda r, p: r.rstrip().endswith(p),
}


def check(response: str, spec: dict) -> bool:
    """Whether `response` satisfies one check; an empty response satisfies none."""
    return bool(response.strip()) and CHECKERS[spec["type"]](response, spec.get("arg"))


def loose_variants(response: str) -> list[str]:
    """The response, without its first / last / both lines, each also without asterisks (IFEval)."""
    lines = response.split("\n")
    cut = [response, "\n".join(lines[1:]).strip(), "\n".join(lines[:-1]).strip(), "\n".join(lines[1:-1]).strip()]
    return cut + [v.replace("*", "") for v in cut]


def process_results(doc: dict, results: list[str]) -> dict:
    response, variants = results[0], loose_variants(results[0])
    strict = [check(response, c) for c in doc["checks"]]
    loose = [any(check(v, c) for v in variants) for c in doc["checks"]]
    return {
        "prompt_level_strict_acc": all(strict),
        "inst_level_strict_acc": strict,
        "prompt_level_loose_acc": all(loose),
        "inst_level_loose_acc": loose,
    }


def agg_inst_level_acc(items: list[list[bool]]) -> float:
    flat = list(chain.from_iterable(items))
    return sum(flat) / len(flat)
