"""docs/reliability.md from the test results: each promise the toolkit makes about inputs and
outputs, the tests that prove it, and what they counted the last time they ran.

    python bench/reliability.py            # runs the tests (the kill soak takes several minutes)
    python bench/reliability.py --fast     # everything but the kill soak, whose last figures are kept

The counts of every run are kept in bench/results/reliability.json, so a row not run this time
shows the figures and date of the last time it was.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from recoverlm.io import write_json_atomic, write_text_atomic  # noqa: E402

RESULTS = ROOT / "bench" / "results" / "reliability.json"

# promise -> the test node ids (files or files::tests) that prove it
PROMISES = [
    ("Bad input is one line and exit code 2, with nothing written: every config field's bad value "
     "(generated from the pydantic models), missing, empty, truncated, pickle-only and non-UTF-8 inputs, "
     "impossible option combinations, uncached Hub ids, CLI usage errors",
     ["tests/integration/test_bad_input.py"]),
    ("An output never destroys anything: an output that is, contains or lies inside an input is refused, "
     "a folder holding files recoverlm did not write is never replaced, and a run folder's finished stages are "
     "reused only while its teacher's weights and prompts are the ones it began with",
     ["tests/integration/test_safe_outputs.py"]),
    ("Writes are atomic: a failed write keeps the old file or folder, and leaves no scratch behind",
     ["tests/unit/test_io.py"]),
    ("A recovery resumes exactly from its checkpoint, and only the recovery that wrote it (other settings, another "
     "model or a damaged file are one line); a non-finite loss stops it and keeps the best checkpoint",
     ["tests/integration/recover/test_checkpoint.py::test_resume_continues_exactly",
      "tests/integration/recover/test_checkpoint.py::test_a_checkpoint_resumes_only_the_run_that_wrote_it",
      "tests/integration/recover/test_trainer.py::test_non_finite_loss_stops_and_keeps_best"]),
    ("A damage calibrated on the built-in prompts never saw the prompts its run scores: calibration leaves out "
     "the run's validation and held-out prompts, and the damaged model is refused by a run, study, recover, "
     "evaluate or cka whose split is another",
     ["tests/integration/degrade/test_calibration_apart.py"]),
    ("A damaged cache entry (teacher responses, scores) is made again, never a dead end",
     ["tests/integration/teacher/test_response_set.py::test_a_damaged_cached_set_is_made_again",
      "tests/integration/test_result_cache.py::test_a_damaged_cache_entry_is_a_miss"]),
    ("SIGKILL at 10 random moments, then resume: the model and metrics equal an uninterrupted run's, bitwise "
     "(`recover --resume` and `run`)",
     ["tests/slow/test_kill_soak.py"]),
    ("Ctrl-C lets the step in flight finish, checkpoints it and names the resume command; the resumed run "
     "ends bitwise where an uninterrupted one does",
     ["tests/integration/recover/test_checkpoint.py::test_an_interrupt_finishes_the_step_and_checkpoints_it"]),
    ("A study refuses a bad cell before anything runs, reuses finished cells, renders from its records alone, "
     "and names a crashing cell and a damaged record in one line",
     ["tests/integration/test_study.py"]),
    ("The run report holds sample generations, the machine, versions and stage times, and renders in headless "
     "Chromium with no broken image and a non-blank page",
     ["tests/integration/report/test_report_page.py"]),
]
SLOW = "tests/slow/test_kill_soak.py"


def run_tests(ids: list[str], when: str) -> dict[str, dict]:
    """pytest over `ids` (slow tests included), one JUnit report; per id: passed, failed, skipped,
    seconds and the date."""
    with tempfile.TemporaryDirectory() as tmp:
        report = Path(tmp) / "junit.xml"
        done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-m", "", "-p", "no:cacheprovider",
                               f"--junitxml={report}", *ids], cwd=ROOT, check=False)
        if done.returncode not in (0, 1):  # 1: some test failed, which the table shows; others: no run
            sys.exit(f"pytest could not run the tests (exit code {done.returncode})")
        tree = ET.parse(report)
    counts: dict[str, dict] = {i: {"passed": 0, "failed": 0, "skipped": 0, "seconds": 0.0, "date": when} for i in ids}
    for case in tree.iter("testcase"):
        path = case.get("classname", "").replace(".", "/")
        name = case.get("name", "")
        for i in ids:
            file, _, test = i.partition("::")
            module = file.removesuffix(".py")
            if path and (module.endswith(path) or path.endswith(module)) and (not test or name.split("[")[0] == test):
                c = counts[i]
                c["seconds"] += float(case.get("time", 0))
                if case.find("failure") is not None or case.find("error") is not None:
                    c["failed"] += 1
                elif case.find("skipped") is not None:
                    c["skipped"] += 1
                else:
                    c["passed"] += 1
    return counts


def render(counts: dict[str, dict], when: str) -> str:
    lines = ["# Reliability", "",
             f"Written by `python bench/reliability.py` on {when} from the test results; each row names the tests "
             "that prove the promise, what they counted and when they last ran.", "",
             "| promise | tests | cases passed | failed | skipped | seconds | last run |", "|---|---|---|---|---|---|---|"]
    for promise, ids in PROMISES:
        done = [counts[i] for i in ids if i in counts]
        if not done:
            lines.append(f"| {promise} | {', '.join(f'`{i}`' for i in ids)} | not run | | | | |")
            continue
        lines.append(f"| {promise} | {', '.join(f'`{i}`' for i in ids)} | {sum(c['passed'] for c in done)} | "
                     f"{sum(c['failed'] for c in done)} | {sum(c.get('skipped', 0) for c in done)} | "
                     f"{sum(c['seconds'] for c in done):.0f} | {min(c.get('date', '?') for c in done)} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--fast", action="store_true", help="leave out the kill soak")
    ap.add_argument("--out", type=Path, default=ROOT / "docs" / "reliability.md")
    args = ap.parse_args()
    ids = [i for _, group in PROMISES for i in group if not (args.fast and i == SLOW)]
    when = time.strftime("%Y-%m-%d")
    counts = run_tests(ids, when)
    previous = json.loads(RESULTS.read_text(encoding="utf-8")) if RESULTS.exists() else {}
    every = {**previous, **counts}
    write_json_atomic(RESULTS, every)
    write_text_atomic(args.out, render(every, when))
    print(args.out.read_text())
    if any(c["failed"] for c in counts.values()):
        sys.exit(1)


if __name__ == "__main__":
    main()
