"""docs/benchmarks.md, "Memory": the peak memory one training step adds on top of the models
(weights, gradients and AdamW state already allocated), with the LM head's logits made for the
whole micro-batch against `recover.logit_chunk`, on random-init models with the real Qwen2.5
configs (no download). Each arm runs in its own process; CPU peak RSS is read from the kernel.

    python bench/memory.py                        # Qwen2.5-0.5B, 2 x (64 + 448) tokens, on CPU
    python bench/memory.py --model qwen2.5-1.5b --batch 1
    python bench/memory.py --loss                 # the on-policy loss alone: plain against chunked
    python bench/memory.py --lora --model qwen2.5-3b --batch 1 --response 960   # one copy against the student alone

Every measurement is appended to bench/results/memory.jsonl; the section shows the latest of each.
"""

from __future__ import annotations

import argparse
import ctypes
import gc
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


def _reset_peak() -> None:
    """Start a new peak-RSS window (Linux: writing 5 to clear_refs resets VmHWM)."""
    with open("/proc/self/clear_refs", "w") as fh:
        fh.write("5")


def _peak_gib() -> float:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


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
    from recoverlm.recover.objective import loss_sum
    from recoverlm.recover.teachers import Teachers

    torch.set_num_threads(2)
    student = build(model).train()
    teacher = build(model).eval().requires_grad_(False) if on_policy else None
    opt = torch.optim.AdamW(student.parameters(), lr=1e-5)
    cfg = RecoverConfig(logit_chunk=chunk, onpolicy_steps=1 if on_policy else 0)

    def step(b: int, p: int, r: int) -> tuple[float, float]:
        """Peak RSS of the loss with its backward, and of the optimizer update, each in its own window."""
        mb = _micro(b, p, r, on_policy)
        _reset_peak()
        loss, _ = loss_sum(student, mb, cfg, Teachers(teacher), _TopK(b * r), pad_id=0)
        loss.backward()
        backward = _peak_gib()
        _reset_peak()
        opt.step()
        opt.zero_grad(set_to_none=False)  # keep the gradient buffers: they belong to the baseline
        return backward, _peak_gib()

    step(1, 4, 4)  # gradients and AdamW state allocated: the baseline every arm shares
    before = _rss_gib()
    start = time.perf_counter()
    backward, update = step(batch, prompt, response)
    seconds = time.perf_counter() - start
    return {"kind": "step", "model": model, "step": "on-policy, live teacher" if on_policy else "off-policy, cached top-64",
            "logit_chunk": chunk, "batch": f"{batch} x ({prompt} + {response})", "baseline_gib": round(before, 2),
            "peak_gib": round(max(backward, update), 2), "step_gib": round(backward - before, 2),
            "update_gib": round(update - before, 2), "seconds": round(seconds, 1)}


def loss_arm(model: str, positions: int, chunk: int) -> dict:
    """The on-policy loss alone (forward KL to a live teacher over the full vocabulary) on `positions`
    final hidden rows, through the LM heads, with its backward: what `logit_chunk` changes."""
    import torch

    from recoverlm.ops.chunked import chunked_per_token, head_logits
    from recoverlm.ops.divergences import divergence

    torch.set_num_threads(2)
    hidden = QWEN[model][0]
    g = torch.Generator().manual_seed(3)
    rows = torch.randn(positions, hidden, generator=g).requires_grad_(True)
    weight = (torch.randn(VOCAB, hidden, generator=g) * 0.02).requires_grad_(True)
    t_rows, t_weight = torch.randn(positions, hidden, generator=g), torch.randn(VOCAB, hidden, generator=g) * 0.02

    def loss_of(logits, span):
        with torch.no_grad():
            teacher = head_logits(t_rows[span], t_weight)
        return divergence(logits, teacher, "forward_kl")

    def run():
        loss = chunked_per_token(rows, weight, loss_of, chunk).sum()
        loss.backward()
        rows.grad = weight.grad = None

    run()  # warm-up: allocator and kernels
    gc.collect()
    ctypes.CDLL("libc.so.6").malloc_trim(0)
    before = _rss_gib()
    _reset_peak()
    start = time.perf_counter()
    run()
    return {"kind": "loss", "model": model, "positions": positions, "logit_chunk": chunk,
            "loss_gib": round(_peak_gib() - before, 3), "seconds": round(time.perf_counter() - start, 2)}


def lora_arm(model: str, mode: str, batch: int, prompt: int, response: int, chunk: int = 512) -> dict:
    """Peak memory of a whole LoRA (r 16) recovery step of a 50%-pruned random-init model, with
    gradient checkpointing: the student alone (cross-entropy on its response), or on-policy
    distillation from the one-copy teacher (the same weights, adapter off, masks lifted)."""
    import torch

    from recoverlm.config import LoraConfig, RecoverConfig
    from recoverlm.degrade.prune import prune_magnitude
    from recoverlm.recover import student as student_part
    from recoverlm.recover.objective import loss_sum
    from recoverlm.recover.shared_teacher import TeacherView
    from recoverlm.recover.teachers import Teachers

    torch.set_num_threads(2)
    _reset_peak()
    # pruning in place holds what sharing holds: one set of weights (their values do not matter here)
    base, constraint = prune_magnitude(build(model), 0.5)
    cfg = RecoverConfig(lora=LoraConfig(r=16, alpha=32), logit_chunk=chunk, gradient_checkpointing=True,
                        onpolicy_steps=1, method="sft-replay" if mode == "student alone" else "distill")
    student = student_part.prepare(base, cfg, constraint, None, log=lambda _: None, shared=True)
    teachers = Teachers(TeacherView(student)) if mode != "student alone" else None
    opt = torch.optim.AdamW([p for p in student.parameters() if p.requires_grad], lr=1e-5)
    weights = _rss_gib()
    mb = _micro(batch, prompt, response, on_policy=True)
    start = time.perf_counter()
    loss, _ = loss_sum(student, mb, cfg, teachers, None, pad_id=0)
    loss.backward()
    opt.step()
    return {"kind": "lora", "model": model, "mode": mode, "batch": f"{batch} x ({prompt} + {response})",
            "logit_chunk": chunk, "weights_gib": round(weights, 2), "peak_gib": round(_peak_gib(), 2),
            "seconds": round(time.perf_counter() - start, 1)}


def _micro(b: int, p: int, r: int, on_policy: bool):
    import torch

    from recoverlm.data import collate
    from recoverlm.recover.objective import MicroBatch, loss_mask

    g = torch.Generator().manual_seed(2)
    prompts = torch.randint(0, VOCAB, (b, p), generator=g).tolist()
    responses = torch.randint(0, VOCAB, (b, r), generator=g).tolist()
    lengths = [r] * b
    return MicroBatch(collate(prompts, responses, 0), list(range(b)), lengths, [0] * b, on_policy, loss_mask(lengths, 0))


def copies_arm(share: str, work: Path) -> dict:
    """Resident memory of a LoRA recovery of the embedded model (magnitude-50%), built and one step
    taken, with the teacher's weights held once (`share_teacher: auto`) or twice (`off`)."""
    import torch

    from recoverlm.config import DataConfig, LoraConfig, RecoverConfig
    from recoverlm.degrade import degrade
    from recoverlm.recover.schedule import batch_order
    from recoverlm.recover.shared_teacher import TeacherView
    from recoverlm.recover.trainer import Recovery

    torch.set_num_threads(2)
    student = work / "magnitude-50"
    if not (student / "config.json").exists():
        degrade("smollm2-135m-instruct", "prune.magnitude", {"sparsity": 0.5}, student)
    cfg = RecoverConfig(offpolicy_steps=10, batch_size=8, eval_every=0, cka_every_eval=False, select_best=False,
                        lora=LoraConfig(r=16, alpha=32), share_teacher=share)
    run = Recovery("smollm2-135m-instruct", student, work / f"out-{share}", cfg,
                   DataConfig(n_heldout=48, max_new_tokens=64, top_k_logits=64), progress=False, log=lambda _: None)
    run.train_step(1, batch_order(len(run.train_set), 8, 1, 0)[0], False)
    storages = {}
    for model in (run.student, run.teacher):
        for t in list(model.parameters()) + list(model.buffers()):
            storages[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
    gc.collect()
    ctypes.CDLL("libc.so.6").malloc_trim(0)  # what the allocator keeps of freed memory is not the run's
    return {"kind": "copies", "share_teacher": share, "one_copy": isinstance(run.teacher, TeacherView),
            "weights_gib": round(sum(storages.values()) / 2**30, 3), "rss_gib": round(_rss_gib(), 2),
            "peak_gib": round(_peak_gib(), 2)}


def _kind(row: dict) -> str:
    return row.get("kind") or ("copies" if "share_teacher" in row else "step")


KEYS = {"step": ("model", "step", "batch", "logit_chunk"), "loss": ("model", "positions", "logit_chunk"),
        "lora": ("model", "mode", "batch", "logit_chunk"), "copies": ("share_teacher",)}


def latest(rows: list[dict]) -> dict[str, list[dict]]:
    """The last measurement of each arm, by kind, in the order arms were first measured."""
    by_key: dict = {}
    for row in rows:
        kind = _kind(row)
        by_key[(kind, *(row.get(k) for k in KEYS[kind]))] = {**row, "kind": kind}
    out: dict[str, list[dict]] = {k: [] for k in KEYS}
    for row in by_key.values():
        out[row["kind"]].append(row)
    return out


def render_loss(rows: list[dict]) -> str:
    if not rows:
        return ""
    lines = ["", f"The on-policy loss alone (`bench/memory.py --loss`, {rows[0]['date']}): forward KL to a live teacher "
             f"over all {VOCAB:,} tokens on N final hidden rows, both LM heads, with its backward. Memory it adds to "
             "what its inputs hold; the target is at least 4x less with chunks, at a step time within 10%:", "",
             "| model (hidden) | positions | logit_chunk | loss + backward adds (GiB) | seconds | against plain: memory, time |",
             "|---|---|---|---|---|---|"]
    plain = {(r["model"], r["positions"]): r for r in rows if not r["logit_chunk"]}
    for r in rows:
        ref = plain.get((r["model"], r["positions"]))
        vs = (f"{ref['loss_gib'] / max(r['loss_gib'], 1e-3):.1f}x less, {r['seconds'] / ref['seconds']:.2f}x"
              if ref and r["logit_chunk"] else "")
        lines.append(f"| {r['model']} ({QWEN[r['model']][0]}) | {r['positions']:,} | {r['logit_chunk'] or 'off'} | "
                     f"{r['loss_gib']:.2f} | {r['seconds']:.1f} | {vs} |")
    return "\n".join(lines) + "\n"


def render_lora(rows: list[dict]) -> str:
    if not rows:
        return ""
    lines = ["", f"A whole LoRA (r 16) step, 50%-pruned random-init model, gradient checkpointing, logits in chunks "
             f"(`bench/memory.py --lora`, {rows[0]['date']}): the student alone (cross-entropy) against on-policy "
             "distillation from the one-copy teacher. Peak resident memory of the process; the target is at most "
             "1.15x the student alone. Built: resident once the model, its masks (a byte per weight) and the adapter "
             "exist:", "",
             "| model | batch | step | built (GiB) | peak (GiB) | against the student alone | seconds |",
             "|---|---|---|---|---|---|---|"]
    alone = {(r["model"], r["batch"]): r for r in rows if r["mode"] == "student alone"}
    for r in sorted(rows, key=lambda r: (list(QWEN).index(r["model"]), r["batch"], r["mode"] != "student alone")):
        ref = alone.get((r["model"], r["batch"]))
        vs = f"{r['peak_gib'] / ref['peak_gib']:.2f}x" if ref and r is not ref else ""
        lines.append(f"| {r['model']} | {r['batch']} | {r['mode']} | {r['weights_gib']:.2f} | {r['peak_gib']:.2f} | "
                     f"{vs} | {r['seconds']:.0f} |")
    return "\n".join(lines) + "\n"


def render_copies(rows: list[dict]) -> str:
    lines = ["", "Teacher and student weights under LoRA (r 16), the embedded model pruned 50% by magnitude, after "
             "building the recovery and one off-policy step of 8 sequences:", "",
             "| share_teacher | weights held | teacher + student tensors (GiB) | resident after the step (GiB) | peak (GiB) |",
             "|---|---|---|---|---|"]
    lines += [f"| {r['share_teacher']} | {'once' if r['one_copy'] else 'twice'} | {r['weights_gib']:.3f} | "
              f"{r['rss_gib']:.2f} | {r['peak_gib']:.2f} |" for r in rows]
    return "\n".join(lines) + "\n"


def render(rows: list[dict]) -> str:
    lines = ["## Memory", "",
             f"Written by `python bench/memory.py` on {rows[0]['date']} ({rows[0]['device']}): the peak memory one "
             "training step adds on top of its models (weights, gradients, AdamW state), random-init Qwen2.5 with "
             f"its {VOCAB:,}-token vocabulary, float32, split into the loss with its backward (where the logits live) and "
             "the AdamW update. `logit_chunk` off makes the whole micro-batch's logits at once.",
             "", "| model | step | batch | logit_chunk | loss + backward adds (GiB) | AdamW update adds (GiB) | peak (GiB) "
             "| seconds |", "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if "failed" in r:
            lines.append(f"| {r['model']} | {r['step']} | {r['batch']} | {r['logit_chunk'] or 'off'} | {r['failed']} | | | |")
            continue
        lines.append(f"| {r['model']} | {r['step']} | {r['batch']} | {r['logit_chunk'] or 'off'} | {r['step_gib']:.2f} | "
                     f"{r['update_gib']:.2f} | {r['peak_gib']:.2f} | {r['seconds']:.0f} |")
    return "\n".join(lines) + "\n"


def _measure(args: list[str], failed: dict) -> dict:
    """One arm in its own process; a kill by the kernel (out of memory) is the measurement."""
    done = subprocess.run([sys.executable, __file__, *args], capture_output=True, text=True)
    if done.returncode:
        return {**failed, "failed": f"exit {done.returncode}" + (" (killed: out of memory)" if done.returncode == -9 else "")}
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="qwen2.5-0.5b", choices=sorted(QWEN))
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--prompt", type=int, default=64)
    ap.add_argument("--response", type=int, default=448)
    ap.add_argument("--loss", action="store_true", help="the on-policy loss alone, plain against chunked")
    ap.add_argument("--positions", default="1024,2048,4096", help="with --loss: hidden rows, comma-separated")
    ap.add_argument("--lora", action="store_true", help="a whole LoRA step: one-copy teacher against the student alone")
    ap.add_argument("--render", action="store_true", help="rewrite the section from bench/results/memory.jsonl only")
    ap.add_argument("--arm", help=argparse.SUPPRESS)
    ap.add_argument("--copies", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.copies:  # one share_teacher measurement, in its own process
        print(json.dumps(copies_arm(args.copies, ROOT / "runs" / "bench-memory")))
        return
    if args.arm:  # one measurement, in its own process
        kind, *rest = args.arm.split(",")
        if kind == "loss":
            result = loss_arm(args.model, int(rest[0]), int(rest[1]))
        elif kind == "lora":
            result = lora_arm(args.model, rest[0], args.batch, args.prompt, args.response)
        else:
            result = arm(args.model, rest[0] == "1", int(rest[1]), args.batch, args.prompt, args.response)
        print(json.dumps(result))
        return
    if not args.render:
        from recoverlm.environment import describe_environment

        shape = ["--model", args.model, "--batch", str(args.batch), "--prompt", str(args.prompt), "--response",
                 str(args.response)]
        batch = f"{args.batch} x ({args.prompt} + {args.response})"
        if args.loss:
            plan = [(["--model", args.model, "--arm", f"loss,{n},{c}"],
                     {"kind": "loss", "model": args.model, "positions": int(n), "logit_chunk": c})
                    for n in args.positions.split(",") for c in (0, 512, 1024)]
        elif args.lora:
            plan = [([*shape, "--arm", f"lora,{mode}"], {"kind": "lora", "model": args.model, "mode": mode, "batch": batch,
                                                         "logit_chunk": 512})
                    for mode in ("student alone", "one-copy teacher (on-policy)")]
        else:
            plan = [([*shape, "--arm", f"step,{int(on)},{c}"], {"kind": "step", "model": args.model, "step": name,
                                                                "batch": batch, "logit_chunk": c})
                    for name, on, c in ARMS] + [(["--copies", share], {"kind": "copies", "share_teacher": share})
                                                for share in ("off", "auto")]
        with open(RESULTS, "a", encoding="utf-8") as fh:
            for argv, failed in plan:
                row = {**_measure(argv, failed), "date": time.strftime("%Y-%m-%d"),
                       "device": describe_environment()["device"]}
                print(row, flush=True)
                fh.write(json.dumps(row) + "\n")
                fh.flush()
    rows = latest([json.loads(line) for line in RESULTS.read_text().splitlines() if line.strip()])
    update_section("memory", render(rows["step"]) + render_copies(rows["copies"]) + render_loss(rows["loss"])
                   + render_lora(rows["lora"]))


if __name__ == "__main__":
    main()
