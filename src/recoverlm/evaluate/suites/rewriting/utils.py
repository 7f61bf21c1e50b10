"""Data location and scoring for the rewriting suite: the built-in task's own checker decides.

lm-eval loads this file by path, not as part of the recoverlm package, hence the absolute import
(recoverlm has to be installed where lm_eval runs).
"""

from pathlib import Path

from recoverlm.tasks import rewriting

DATA_FILES = {"test": str(Path(__file__).with_name("rewriting.jsonl"))}  # see knowledge/utils.py


def process_results(doc: dict, results: list[str]) -> dict:
    item = {"prompt": doc["prompt"], "response": doc["response"], "answer": doc["answer"]}
    return {"acc": int(rewriting.check(results[0], item))}
