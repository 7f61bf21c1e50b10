"""Data location and scoring for the arithmetic suite (see knowledge/utils.py for why DATA_FILES)."""

import re
from pathlib import Path

DATA_FILES = {"test": str(Path(__file__).with_name("arithmetic.jsonl"))}
_INT = re.compile(r"-?\d[\d,]*")


def first_integer(text: str) -> str | None:
    """The first integer in `text`, thousands separators removed ("1,234 apples" -> "1234")."""
    m = _INT.search(text)
    return m.group().replace(",", "") if m else None


def process_results(doc: dict, results: list[str]) -> dict:
    return {"exact_match": int(first_integer(results[0]) == doc["answer"])}
