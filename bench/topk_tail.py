"""How much of a student's teacher KL lies outside the teacher's top-k tokens?

Off-policy distillation trains on the teacher's cached top-k log-probabilities plus one tail bucket,
which bounds the full-vocabulary KL from below. Whatever part of the held-out KL sits inside the
tail (how the student spreads the tail's mass over its tokens) that objective cannot see, so it is
the most that distilling on the full vocabulary could add. Measured on the 48 held-out prompts for
the degraded models and for the recorded full-budget `distill` runs whose models are still on disk.
Writes the "topk-tail" section of docs/benchmarks.md.

    python bench/topk_tail.py                 # measure, save bench/results/topk-tail.json, render
    python bench/topk_tail.py --render        # from the saved measurements only
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
from tqdm.auto import tqdm

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "bench"))

from mdsection import update_section  # noqa: E402
from recovery.render import variant  # noqa: E402
from recovery.results import RESULTS, load_rows  # noqa: E402
from recovery.setting import BUDGETS, Setting, degraded_dir, run_dir  # noqa: E402

from recoverlm import models  # noqa: E402
from recoverlm.config import DataConfig  # noqa: E402
from recoverlm.data import collate  # noqa: E402
from recoverlm.io import write_text_atomic  # noqa: E402
from recoverlm.lm.forward import completion_logits  # noqa: E402
from recoverlm.ops.divergences import bucket_logprobs, divergence_logprobs, forward_kl  # noqa: E402
from recoverlm.teacher.response_set import heldout_set  # noqa: E402

SAVED = RESULTS.parent / "topk-tail.json"


def candidates(rows: list[dict], work: Path) -> dict[str, Path]:
    """Each degraded model, and each recorded full-budget `distill` run of seed 0 still on disk."""
    found: dict[str, Path] = {}
    for r in rows:
        if r.get("kind", "run") != "run":
            continue
        s = Setting.from_row(r)
        if s.method != "distill" or s.seed != 0 or (s.offpolicy, s.onpolicy) != BUDGETS["full"] or s.device != "cpu":
            continue
        out, degraded = run_dir(work, s), degraded_dir(work, s.degradation)
        if out.exists() and degraded.exists():
            found.setdefault(f"{s.degradation} degraded", degraded)
            extra = f", + {s.teacher_prompts} teacher-written prompts" if s.teacher_prompts else ""
            found[f"{s.degradation} distill{variant(s)}{extra}"] = out
    return found


@torch.no_grad()
def measure(teacher_ref: str, paths: dict[str, Path], ks: list[int]) -> dict:
    """Per model: full-vocabulary forward KL and, per k, the top-k + tail bucket KL (token means)."""
    data = DataConfig()
    teacher_path = models.resolve_model(teacher_ref)
    pad = models.load_tokenizer(teacher_path).pad_token_id
    held = heldout_set(teacher_ref, data, log=lambda *a: None)
    teacher = models.load_for_inference(teacher_path)
    batches = [collate([held.prompt_ids[i] for i in idx], [held.response_ids[i] for i in idx], pad)
               for idx in (range(s, min(s + 8, len(held))) for s in range(0, len(held), 8))]
    t_logits = [completion_logits(teacher, b).float() for b in tqdm(batches, desc="teacher", leave=False)]
    tokens = sum(t.shape[0] for t in t_logits)
    tail_mass = {k: sum(float(bucket_logprobs(t, t.topk(k, -1).indices)[:, -1].exp().sum()) for t in t_logits) / tokens
                 for k in ks}
    measured = {"tokens": tokens, "teacher_tail_mass": {str(k): v for k, v in tail_mass.items()}, "models": {}}
    for name, path in paths.items():
        student = models.load_for_inference(path)
        full, bucket = 0.0, {k: 0.0 for k in ks}
        for b, t in tqdm(list(zip(batches, t_logits)), desc=name, leave=False):
            s = completion_logits(student, b).float()
            full += float(forward_kl(s, t).sum())
            for k in ks:
                top = t.topk(k, -1).indices
                bucket[k] += float(divergence_logprobs(bucket_logprobs(s, top), bucket_logprobs(t, top), "forward_kl").sum())
        measured["models"][name] = {"kl": full / tokens, "bucket_kl": {str(k): v / tokens for k, v in bucket.items()}}
        del student
    return measured


def render(measured: dict) -> str:
    ks = list(measured["teacher_tail_mass"])
    lines = ["## What the cached top-k leaves out (`bench/topk_tail.py`)", "",
             "Held-out teacher KL (48 prompts, full vocabulary) against the same KL between the teacher's top-k "
             "tokens plus one tail bucket, the quantity off-policy distillation trains on (k = 64 by default). "
             "Tail share: the part of the full KL that only the shape of the student's tail carries, which no "
             "top-k objective sees. The teacher leaves on average "
             + ", ".join(f"{float(measured['teacher_tail_mass'][k]):.1%} of its mass outside its top {k}" for k in ks)
             + f" ({measured['tokens']} response tokens).", "",
             "| model | full KL | " + " | ".join(f"top-{k} + tail KL | tail share (k={k})" for k in ks) + " |",
             "|---|---|" + "---|---|" * len(ks)]
    for name, m in measured["models"].items():
        cells = " | ".join(f"{m['bucket_kl'][k]:.4f} | {1 - m['bucket_kl'][k] / m['kl']:.1%}" for k in ks)
        lines.append(f"| {name} | {m['kl']:.4f} | {cells} |")
    return "\n".join(lines + _reading(measured["models"]))


def _reading(models_measured: dict[str, dict], k: str = "64") -> list[str]:
    """The most a full-vocabulary objective could add to each degradation's best run: all of its tail share."""
    notes = []
    for name, m in models_measured.items():
        if not name.endswith(" degraded"):
            continue
        degradation = name[:-len(" degraded")]
        runs = {n: r for n, r in models_measured.items() if n.startswith(degradation + " ") and n != name}
        if not runs:
            continue
        best = min(runs, key=lambda n: runs[n]["kl"])
        ratio, bound = (1 - runs[best]["kl"] / m["kl"], 1 - runs[best]["bucket_kl"][k] / m["kl"])
        notes.append(f"{best}: recovery ratio {ratio:.3f}, at most {bound:.3f} with its whole top-{k} tail share removed")
    return ["", "Reading: the tail share is what distilling on the full vocabulary could win at most. For the best run "
            "of each degradation: " + "; ".join(notes) + "."] if notes else []


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=models.DEFAULT_MODEL)
    ap.add_argument("--work", type=Path, default=ROOT / "runs" / "bench-recovery")
    ap.add_argument("--k", default="16,64,256", help="comma-separated top-k sizes")
    ap.add_argument("--render", action="store_true", help="only rewrite the section from " + str(SAVED.relative_to(ROOT)))
    args = ap.parse_args()
    if not args.render:
        paths = candidates(load_rows(RESULTS), args.work)
        if not paths:
            sys.exit(f"error: no recorded full-budget distill run of seed 0 has its model in {args.work}")
        ks = sorted({int(k) for k in args.k.split(",")})
        write_text_atomic(SAVED, json.dumps(measure(args.model, paths, ks), indent=1) + "\n")
    elif not SAVED.exists():
        sys.exit(f"error: {SAVED} is missing; run without --render first")
    print(update_section("topk-tail", render(json.loads(SAVED.read_text(encoding="utf-8")))))


if __name__ == "__main__":
    main()
