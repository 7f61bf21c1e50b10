"""Data location for the knowledge suite.

lm-eval resolves `data_files` against the current directory, so the YAML pulls this absolute
path in with `!function utils.DATA_FILES` (lm-eval's `!function` resolves any module attribute,
looking first for a `utils.py` next to the YAML).
"""

from pathlib import Path

DATA_FILES = {"test": str(Path(__file__).with_name("knowledge.jsonl"))}
