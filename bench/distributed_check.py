"""docs/benchmarks.md, "Distributed": a few recovery steps of a random-init model under each
`accelerate launch` config, end to end through `recoverlm recover` (teacher responses, top-k,
training, export), with its wall time and whether it finished. Random weights: what is measured is
that each backend runs and what a step costs, not recovery.

    python bench/distributed_check.py --toy                # here: a tiny Llama, the CPU configs
    python bench/distributed_check.py --shape qwen2.5-1.5b # on a GPU: DDP, FSDP2 and ZeRO-2, bf16

The random model takes the embedded model's tokenizer (49,152 tokens) and a Qwen2.5 shape.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "bench"))

from mdsection import update_section  # noqa: E402

RESULTS = ROOT / "bench" / "results" / "distributed.json"
WORK = ROOT / "runs" / "bench-distributed"
# hidden, layers, heads, kv heads, MLP (the published Qwen2.5 configs); toy: small enough for 2 CPU cores.
SHAPES = {"toy": (64, 2, 4, 2, 128), "qwen2.5-0.5b": (896, 24, 14, 2, 4864), "qwen2.5-1.5b": (1536, 28, 12, 2, 8960),
          "qwen2.5-3b": (2048, 36, 16, 2, 11008)}
CPU_CONFIGS = {"ddp (2 processes)": "ddp_cpu.yaml", "deepspeed zero-2 (2 processes)": "deepspeed_zero2_cpu.yaml",
               "deepspeed zero-3 (2 processes)": "deepspeed_zero3_cpu.yaml"}
GPU_CONFIGS = {"ddp": "ddp_gpu.yaml", "fsdp2": "fsdp_gpu.yaml", "deepspeed zero-2": "deepspeed_zero2_gpu.yaml",
               "deepspeed zero-3": "deepspeed_zero3_gpu.yaml"}


def build(shape: str, out: Path) -> Path:
    """A random-init Qwen2 of `shape` with the embedded model's tokenizer, and its 50%-pruned copy."""
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from recoverlm import models
    from recoverlm.degrade import degrade

    teacher, student = out / "teacher", out / "student"
    if (student / "config.json").exists():
        return out
    tok = models.load_tokenizer(models.resolve_model("smollm2-135m-instruct"))
    hidden, layers, heads, kv, mlp = SHAPES[shape]
    torch.manual_seed(0)
    config = Qwen2Config(vocab_size=len(tok), hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
                         num_key_value_heads=kv, intermediate_size=mlp, tie_word_embeddings=True,
                         bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    model = Qwen2ForCausalLM(config)
    model.save_pretrained(teacher, safe_serialization=True)
    tok.save_pretrained(teacher)
    degrade(str(teacher), "prune.magnitude", {"sparsity": 0.5}, student)
    return out


def launch(name: str, config: Path, models_dir: Path, recover_yaml: Path, processes: int | None) -> dict:
    out = WORK / "out" / name.split(" ")[0].replace("-", "")
    shutil.rmtree(out, ignore_errors=True)
    shutil.rmtree(out.with_name(out.name + ".work"), ignore_errors=True)
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(config)]
    if processes:
        cmd += ["--num_processes", str(processes)]
    cmd += ["-m", "recoverlm.cli", "recover", "--teacher", str(models_dir / "teacher"), "--student",
            str(models_dir / "student"), "--out", str(out), "--config", str(recover_yaml)]
    start = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "TOKENIZERS_PARALLELISM": "false"})
    seconds = time.perf_counter() - start
    tail = (done.stdout + done.stderr).strip().splitlines()[-3:]
    row = {"backend": name, "config": config.name, "seconds": round(seconds, 1), "ok": done.returncode == 0,
           "exit": done.returncode}
    if done.returncode:
        row["error"] = " / ".join(line.strip() for line in tail)[-400:]
    print(row, flush=True)
    return row


def render(res: dict) -> str:
    lines = ["## Distributed", "",
             f"`python bench/distributed_check.py`, {res['date']}, on {res['device']}: a random-init model of shape "
             f"{res['shape']} (50% magnitude-pruned student), {res['steps']} off-policy steps of batch "
             f"{res['batch']} end to end through `recoverlm recover` under `accelerate launch`.", "",
             "| backend | config | finished | wall time (s) | error |", "|---|---|---|---|---|"]
    for r in res["rows"]:
        lines.append(f"| {r['backend']} | `{r['config']}` | {'yes' if r['ok'] else 'no'} | {r['seconds']} | "
                     f"{r.get('error', '').replace('|', '/')} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shape", default="qwen2.5-1.5b", choices=sorted(SHAPES))
    ap.add_argument("--toy", action="store_true", help="the toy shape with the CPU configs (runs anywhere)")
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--processes", type=int, default=None, help="override the configs' process count")
    ap.add_argument("--no-doc", action="store_true", help="print and keep the JSON, leave docs/benchmarks.md alone")
    args = ap.parse_args()
    import torch

    from recoverlm.environment import describe_environment

    shape = "toy" if args.toy else args.shape
    gpu = torch.cuda.is_available() and not args.toy
    models_dir = build(shape, WORK / shape)
    recover_yaml = WORK / "recover.yaml"
    batch = 8
    recover_yaml.write_text(
        f"recover: {{offpolicy_steps: {args.steps}, batch_size: {batch}, eval_every: 0, cka_every_eval: false, "
        f"select_best: false, bf16: {'true' if gpu else 'false'}}}\n"
        "data: {n_heldout: 4, n_validation: 0, max_new_tokens: 16, top_k_logits: 16, generation_batch_size: 16}\n")
    configs = GPU_CONFIGS if gpu else CPU_CONFIGS
    processes = args.processes or (torch.cuda.device_count() if gpu else None)
    rows = [launch(name, ROOT / "configs" / "accelerate" / file, models_dir, recover_yaml, processes)
            for name, file in configs.items()]
    res = {"date": time.strftime("%Y-%m-%d"), "device": describe_environment()["device"], "shape": shape,
           "steps": args.steps, "batch": batch, "rows": rows}
    results = RESULTS.with_name("distributed-toy.json") if args.toy else RESULTS
    results.parent.mkdir(parents=True, exist_ok=True)
    results.write_text(json.dumps(res, indent=1))
    if not args.no_doc:
        print(update_section("distributed", render(res)))


if __name__ == "__main__":
    main()
