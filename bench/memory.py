"""docs/benchmarks.md, "Memory": the peak memory one training step adds on top of the models
(weights, gradients and AdamW state already allocated), with the LM head's logits made for the
whole micro-batch against `recover.logit_chunk`, on random-init models with the real Qwen2.5
configs (no download). Each arm runs in its own process; CPU peak RSS is read from the kernel.

    python bench/memory.py                        # Qwen2.5-0.5B, 4 x (64 + 448) tokens, on CPU
    python bench/memory.py --model qwen2.5-1.5b --batch 2
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "bench"))

from mdsection import update_section  # noqa: E402

RESULTS = ROOT / "bench" / "results" / "memory.jsonl"
# The published configs (hidden, layers, heads, kv heads, MLP), all with Qwen2.5's 151,936-token vocabulary.
QWEN = {"qwen2.5-0.5b": (896, 24, 14, 2, 4864), "qwen2.5-1.5b": (1536, 28, 12, 2, 8960),
        "qwen2.5-3b": (2048, 36, 16, 2, 11008)}
VOCAB = 151_936
ARMS = [("off-policy, cached top-64", False, 0), ("off-policy, cached top-64", False, 512),
        ("on-policy, live teacher", True, 0), ("on-policy, live teacher", True, 512)]


def build(name: str):
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    hidden, layers, heads, kv, mlp = QWEN[name]
    torch.manual_seed(0)
    config = Qwen2Config(hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
                         num_key_value_heads=kv, intermediate_size=mlp, vocab_size=VOCAB, tie_word_embeddings=True)
    return Qwen2ForCausalLM(config)


def _rss_gib() -> float:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * resource.getpagesize() / 2**30


class _TopK:
    """Cached teacher top-k as the training set hands it out, random but well formed."""

    def __init__(self, rows: int, k: int = 64):
        import torch

        g = torch.Generator().manual_seed(1)
        self.idx = torch.randint(0, VOCAB, (rows, k), generator=g)
        self.lp = torch.log_softmax(torch.randn(rows, k + 1, generator=g), -1)

    def topk_rows(self, seq_indices):
        return self.idx, self.lp


def arm(model: str, on_policy: bool, chunk: int, batch: int, prompt: int, response: int) -> dict:
    import torch

    from recoverlm.config import RecoverConfig
    from recoverlm.data import collate
    from recoverlm.recover.objective import MicroBatch, loss_mask, loss_sum
    from recoverlm.recover.teachers import Teachers

    torch.set_num_threads(2)
    student = build(model).train()
    teacher = build(model).eval().requires_grad_(False) if on_policy else None
    opt = torch.optim.AdamW(student.parameters(), lr=1e-5)
    cfg = RecoverConfig(logit_chunk=chunk, onpolicy_steps=1 if on_policy else 0)

    def micro(b: int, p: int, r: int) -> MicroBatch:
        g = torch.Generator().manual_seed(2)
        prompts = torch.randint(0, VOCAB, (b, p), generator=g).tolist()
        responses = torch.randint(0, VOCAB, (b, r), generator=g).tolist()
        lengths = [r] * b
        return MicroBatch(collate(prompts, responses, 0), list(range(b)), lengths, [0] * b, on_policy,
                          loss_mask(lengths, 0))

    def step(b: int, p: int, r: int) -> None:
        mb = micro(b, p, r)
        loss, _ = loss_sum(student, mb, cfg, Teachers(teacher), _TopK(b * r), pad_id=0)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=False)  # keep the gradient buffers: they belong to the baseline

    step(1, 4, 4)  # gradients and AdamW state allocated: the baseline every arm shares
    before = _rss_gib()
    start = time.perf_counter()
    step(batch, prompt, response)
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    return {"model": model, "step": "on-policy, live teacher" if on_policy else "off-policy, cached top-64",
            "logit_chunk": chunk, "batch": f"{batch} x ({prompt} + {response})", "baseline_gib": round(before, 2),
            "peak_gib": round(peak, 2), "step_gib": round(peak - before, 2), "seconds": round(seconds, 1)}


def render(rows: list[dict]) -> str:
    lines = ["## Memory", "",
             f"Written by `python bench/memory.py` on {rows[0]['date']} ({rows[0]['device']}): the peak memory one "
             "training step adds on top of its models (weights, gradients, AdamW state), random-init Qwen2.5 with "
             f"its {VOCAB:,}-token vocabulary, float32. `logit_chunk` 0 makes the whole micro-batch's logits at once.",
             "", "| model | step | batch | logit_chunk | step adds (GiB) | peak (GiB) | seconds |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['model']} | {r['step']} | {r['batch']} | {r['logit_chunk'] or 'off'} | {r['step_gib']:.2f} | "
                     f"{r['peak_gib']:.2f} | {r['seconds']:.0f} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="qwen2.5-0.5b", choices=sorted(QWEN))
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--prompt", type=int, default=64)
    ap.add_argument("--response", type=int, default=448)
    ap.add_argument("--arm", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.arm:  # one measurement, in its own process
        on_policy, chunk = args.arm.split(",")
        print(json.dumps(arm(args.model, on_policy == "1", int(chunk), args.batch, args.prompt, args.response)))
        return
    from recoverlm.environment import describe_environment

    rows = []
    for _, on_policy, chunk in ARMS:
        out = subprocess.run([sys.executable, __file__, "--model", args.model, "--batch", str(args.batch), "--prompt",
                              str(args.prompt), "--response", str(args.response), "--arm", f"{int(on_policy)},{chunk}"],
                             capture_output=True, text=True, check=True).stdout
        row = {**json.loads(out.strip().splitlines()[-1]), "date": time.strftime("%Y-%m-%d"),
               "device": describe_environment()["device"]}
        print(row, flush=True)
        rows.append(row)
    with open(RESULTS, "a", encoding="utf-8") as fh:
        for row in rows:
            fh.write(json.dumps(row) + "\n")
    update_section("memory", render(rows))


if __name__ == "__main__":
    main()
