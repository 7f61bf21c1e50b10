"""The shipped lm-eval suites' files, loaded the way lm-eval loads them."""

import importlib.util
import json

from recoverlm.evaluate.lm_eval_runner import SUITES_DIR


def load_module(suite: str, name: str = "utils"):
    spec = importlib.util.spec_from_file_location(f"_{suite}_{name}", SUITES_DIR / suite / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def load_jsonl(suite: str) -> list[dict]:
    return [json.loads(line) for line in (SUITES_DIR / suite / f"{suite}.jsonl").read_text().splitlines()]
