"""Data location and scoring for the extraction suite: the built-in task's own checker decides.

lm-eval loads this file by path, not as part of the recoverlm package, hence the absolute import
(recoverlm has to be installed where lm_eval runs).
"""

from pathlib import Path

from recoverlm.tasks import suite_scorer

DATA_FILES = {"test": str(Path(__file__).with_name("extraction.jsonl"))}  # see knowledge/utils.py
process_results = suite_scorer("extraction")
