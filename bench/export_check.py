"""docs/export.md: the embedded SmolLM2-135M-Instruct quantized to int4 (RTN, symmetric, groups of
32), recovered by off-policy self-distillation, exported as compressed-tensors pack-quantized and
loaded back by transformers itself (its compressed-tensors integration): the size on disk against
the dense folder, its agreement with the recovered model, and the knowledge suite scored on the
model transformers loaded.

    python bench/export_check.py            # about 10 minutes on a 2-core CPU
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from recoverlm import models  # noqa: E402
from recoverlm.config import DataConfig, RecoverConfig  # noqa: E402
from recoverlm.degrade import degrade  # noqa: E402
from recoverlm.environment import describe_environment  # noqa: E402
from recoverlm.evaluate.lm_eval_runner import run_suites  # noqa: E402
from recoverlm.export import export_model  # noqa: E402
from recoverlm.io import write_json_atomic, write_text_atomic  # noqa: E402
from recoverlm.recover.trainer import recover  # noqa: E402

RESULTS = ROOT / "bench" / "results" / "export.json"
DOC = ROOT / "docs" / "export.md"
GRID = {"bits": 4, "group_size": 32, "symmetric": True}


def knowledge(model, tokenizer) -> float:
    return run_suites(model, tokenizer, ["knowledge"], batch_size=8)["knowledge"]["acc"]


def measure(work: Path, steps: int) -> dict:
    from transformers import AutoModelForCausalLM

    teacher = models.resolve_model("smollm2-135m-instruct")
    degraded, recovered, exported = work / "degraded", work / "recovered", work / "compressed-tensors"
    if not models.is_model_dir(degraded):
        degrade(teacher, "quant.rtn", GRID, degraded)
    if not models.is_model_dir(recovered):
        recover(teacher, degraded, recovered, RecoverConfig(offpolicy_steps=steps, batch_size=8, lr=1e-4, eval_every=0),
                DataConfig(n_heldout=48, max_new_tokens=64, top_k_logits=64))
    record = export_model(recovered, "compressed-tensors", exported)
    tokenizer = models.load_tokenizer(teacher)
    start = time.perf_counter()
    models.quiet_transformers()
    native = AutoModelForCausalLM.from_pretrained(exported, device_map="cpu").eval()
    scores = {"teacher": knowledge(models.load_model(teacher), tokenizer),
              "degraded": knowledge(models.load_model(degraded), tokenizer),
              "recovered": knowledge(models.load_model(recovered), tokenizer),
              "exported, loaded by transformers": knowledge(native, tokenizer)}
    return {"date": time.strftime("%Y-%m-%d"), "grid": GRID, "steps": steps, "export": record, "knowledge": scores,
            "knowledge_seconds": round(time.perf_counter() - start, 1), "environment": describe_environment()}


def render(r: dict) -> str:
    e, native = r["export"], r["export"]["transformers"] or {}
    mib = 2**20
    lines = [
        "# Exporting a recovered model", "",
        f"Written by `python bench/export_check.py` on {r['date']} ({r['environment']['device']}). The embedded "
        f"SmolLM2-135M-Instruct, RTN int{r['grid']['bits']} (symmetric, groups of {r['grid']['group_size']}), "
        f"recovered by {r['steps']} off-policy steps, then `recoverlm export --format compressed-tensors`.", "",
        "| | value |", "|---|---|",
        f"| weights on disk, recovered (dense float32) | {e['source_bytes'] / mib:.1f} MiB |",
        f"| weights on disk, compressed-tensors pack-quantized | {e['bytes'] / mib:.1f} MiB "
        f"({e['bytes'] / e['source_bytes']:.2f}x) |",
        f"| read back by recoverlm: max abs logit difference, top-1 agreement | "
        f"{e['reread']['max_abs_logit_diff']:.2e}, {e['reread']['top1_agreement']:.3f} |",
    ]
    if native.get("loaded"):
        lines.append(f"| loaded by transformers ({native['class']}): max abs logit difference, top-1 agreement | "
                     f"{native['max_abs_logit_diff']:.2e}, {native['top1_agreement']:.3f} |")
    lines += ["", "Knowledge suite (341 multiple-choice items, accuracy):", "", "| model | knowledge |", "|---|---|"]
    lines += [f"| {name} | {acc:.3f} |" for name, acc in r["knowledge"].items()]
    lines += ["", "The float32 scales and unquantized tensors keep the export exact; the embeddings (tied to the LM "
              "head) stay float32, which bounds the saving for a model this small.", ""]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--work", type=Path, default=ROOT / "runs" / "export-check")
    args = ap.parse_args()
    result = measure(args.work, args.steps)
    write_json_atomic(RESULTS, result)
    write_text_atomic(DOC, render(result))
    print(DOC.read_text())


if __name__ == "__main__":
    main()
