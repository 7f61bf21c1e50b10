"""How much each degradation method damages the embedded model: held-out NLL, teacher KL, knowledge, time.

    python bench/degradation_table.py --out docs/degradation.md [--model smollm2-135m-instruct] [--quick]
    python bench/degradation_table.py --only quant.rtn,prune.wanda   # rerun these rows, keep the others
    python bench/degradation_table.py --render                       # Markdown from the saved JSON

Held-out tokens: every third built-in prompt (all 14 categories), rendered with the model's chat
template; the tokens of the rendering's constant prefix (the default system prompt) are not scored,
so the figures measure the user text and the template around it. The first 2048 such tokens are
scored (512 with --quick). Knowledge is the accuracy on the shipped knowledge suite (341 four-way
questions; skip it with --no-knowledge). Calibrated methods calibrate on the other built-in prompts, never on a
held-out one. Teacher KL is KL(teacher || damaged) per scored token, against the undamaged model.
"""

from __future__ import annotations

import argparse
import copy
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

import torch

from recoverlm import data, models
from recoverlm.degrade import apply_method
from recoverlm.io import write_json_atomic, write_text_atomic

# (method, params, label); the strengths run in --quick are marked True.
RUNS = [
    ("prune.magnitude", {"sparsity": 0.3}, False),
    ("prune.magnitude", {"sparsity": 0.5}, True),
    ("prune.wanda", {"sparsity": 0.3}, False),
    ("prune.wanda", {"sparsity": 0.5}, True),
    ("prune.nm", {"n": 2, "m": 4, "score": "magnitude"}, True),
    ("prune.nm", {"n": 2, "m": 4, "score": "wanda"}, False),
    ("prune.ffn", {"fraction": 0.1}, True),
    ("prune.ffn", {"fraction": 0.25}, False),
    ("prune.depth", {"n_blocks": 2}, True),
    ("prune.depth", {"n_blocks": 4}, False),
    ("quant.rtn", {"bits": 4, "group_size": 32}, False),
    ("quant.rtn", {"bits": 3, "group_size": 32}, True),
    ("quant.gptq", {"bits": 4, "group_size": 32}, False),
    ("quant.gptq", {"bits": 3, "group_size": 32}, True),
    ("quant.nf4", {"blocksize": 64}, True),
    ("quant.nf4", {"blocksize": 32}, False),
]
CALIBRATED = {"prune.wanda", "prune.nm", "prune.ffn", "prune.depth", "quant.gptq"}

def heldout(tokenizer, n_tokens: int):
    """(ids, first scored position) per sample, over the held-out prompts, up to n_tokens targets."""
    prompts = data.load_prompts()
    held, calib = prompts[2::3], [p for i, p in enumerate(prompts) if i % 3 != 2]
    seqs = [tokenizer(t, add_special_tokens=False)["input_ids"] for t in data.chat_texts(tokenizer, held)]
    prefix = 0  # the longest token prefix all renderings share (system prompt)
    while all(len(s) > prefix + 1 for s in seqs) and len({s[prefix] for s in seqs}) == 1:
        prefix += 1
    samples, total = [], 0
    for s in seqs:
        take = min(len(s) - prefix, n_tokens - total)  # targets s[prefix : prefix + take]
        if take <= 0:
            break
        samples.append((torch.tensor(s[: prefix + take]), prefix))
        total += take
    if total < n_tokens:
        sys.exit(f"only {total} held-out tokens available, {n_tokens} asked")
    return samples, calib, prefix


@torch.no_grad()
def scored_logprobs(model, samples, batch_size: int = 16) -> list[torch.Tensor]:
    """Log-probabilities at the scored positions, one (targets, vocab) tensor per sample.
    Right padding without a mask is exact: attention is causal and padded positions are dropped."""
    out = []
    for i in range(0, len(samples), batch_size):
        chunk = samples[i:i + batch_size]
        width = max(len(ids) for ids, _ in chunk)
        batch = torch.zeros(len(chunk), width, dtype=torch.long)
        for row, (ids, _) in enumerate(chunk):
            batch[row, : len(ids)] = ids
        logits = model(input_ids=batch).logits.float()
        for row, (ids, start) in enumerate(chunk):
            out.append(torch.log_softmax(logits[row, start - 1: len(ids) - 1], dim=-1))
    return out


def measure(model, samples, teacher_lp) -> tuple[float, float]:
    lp = scored_logprobs(model, samples)
    nll = kl = 0.0
    n = 0
    for (ids, start), s, t in zip(samples, lp, teacher_lp):
        targets = ids[start:]
        nll += -s.gather(1, targets[:, None]).sum().item()
        kl += (t.exp() * (t - s)).sum().item()
        n += len(targets)
    return nll / n, kl / n


def knowledge(model, tokenizer) -> float:
    """Accuracy on the whole shipped knowledge suite (log-likelihood of each choice)."""
    from recoverlm.evaluate.lm_eval_runner import run_suites

    return run_suites(model, tokenizer, ["knowledge"], batch_size=16)["knowledge"]["acc"]


def label(params: dict) -> str:
    return " ".join(f"{k}={v}" for k, v in params.items())


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("docs/degradation.md"))
    parser.add_argument("--model", default=models.DEFAULT_MODEL)
    parser.add_argument("--quick", action="store_true", help="one strength per method, 512 tokens, 32 calibration samples")
    parser.add_argument("--render", action="store_true", help="only rewrite the Markdown from the JSON of the last run")
    parser.add_argument("--only", default=None, help="comma-separated methods to rerun; the other rows come from the JSON")
    parser.add_argument("--no-knowledge", action="store_true", help="skip the knowledge-suite column")
    args = parser.parse_args(argv)
    if args.render:
        saved = json.loads(args.out.with_suffix(".json").read_text())
        args.model = saved["model"]
        write_text_atomic(args.out, render(saved["rows"], args, saved["tokens"], saved.get("calibration", 128),
                                           saved.get("prefix", 24), saved.get("date")))
        print(f"wrote {args.out}")
        return

    n_tokens, n_calibration = (512, 32) if args.quick else (2048, 128)
    source = models.resolve_model(args.model)
    tokenizer = models.load_tokenizer(source)
    teacher = models.load_model(source)
    samples, calib_prompts, prefix = heldout(tokenizer, n_tokens)
    teacher_lp = scored_logprobs(teacher, samples)
    base_nll, _ = measure(teacher, samples, teacher_lp)
    rows = [{"method": "original", "params": "", "nll": base_nll, "kl": 0.0, "seconds": 0.0,
             "knowledge": None if args.no_knowledge else knowledge(teacher, tokenizer)}]
    print(f"original: NLL {base_nll:.3f} on {n_tokens} tokens, knowledge {rows[0]['knowledge']}", flush=True)
    only = set(args.only.split(",")) if args.only else None
    if only:
        unknown = only - {m for m, _, _ in RUNS}
        if unknown:
            sys.exit(f"--only: unknown method(s) {', '.join(sorted(unknown))}")
        saved = json.loads(args.out.with_suffix(".json").read_text())["rows"][1:]
        rows += saved  # each is replaced when its rerun finishes: a stopped run loses no row

    with tempfile.TemporaryDirectory() as tmp:
        cal_file = Path(tmp) / "calibration.jsonl"
        cal_file.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in calib_prompts))
        for method, params, in_quick in RUNS:
            if (args.quick and not in_quick) or (only and method not in only):
                continue
            full = dict(params)
            if method in CALIBRATED and not (method == "prune.nm" and params["score"] == "magnitude"):
                full.update(calibration=str(cal_file), n_calibration=n_calibration)
            model = copy.deepcopy(teacher)
            start = time.perf_counter()
            model, constraint = apply_method(model, method, full, tokenizer=tokenizer)
            seconds = time.perf_counter() - start
            constraint.verify(model)
            nll, kl = measure(model, samples, teacher_lp)
            know = None if args.no_knowledge else knowledge(model, tokenizer)
            rows = [r for r in rows if (r["method"], r["params"]) != (method, label(params))]
            rows.append({"method": method, "params": label(params), "nll": nll, "kl": kl, "seconds": seconds,
                         "knowledge": know})
            rows = [rows[0]] + sorted(rows[1:], key=lambda r: [(m, label(p)) for m, p, _ in RUNS].index((r["method"], r["params"])))
            print(f"{method} {label(params)}: NLL {nll:.3f}  KL {kl:.3f}  knowledge {know}  {seconds:.0f} s", flush=True)
            del model
            # Rewritten after every run: a long run shows its progress and loses nothing if stopped.
            write_text_atomic(args.out, render(rows, args, n_tokens, n_calibration, prefix))
            write_json_atomic(args.out.with_suffix(".json"), {"model": args.model, "tokens": n_tokens, "rows": rows,
                                                             "calibration": n_calibration, "prefix": prefix,
                                                             "date": time.strftime("%Y-%m-%d")})
    print(f"wrote {args.out}")


def _find(rows, method, params):
    return next((r for r in rows if r["method"] == method and r["params"] == params), None)


def _knowledge_note(rows, n_items: int = 341) -> str:
    """Knowledge differences next to their standard error: 341 items resolve only a few points."""
    a = _find(rows, "quant.gptq", "bits=3 group_size=32")
    b = _find(rows, "quant.rtn", "bits=3 group_size=32")
    if not a or not b or a.get("knowledge") is None or b.get("knowledge") is None:
        return ""
    pa, pb = a["knowledge"], b["knowledge"]
    se = ((pa * (1 - pa) + pb * (1 - pb)) / n_items) ** 0.5
    return (f"Knowledge accuracy has a standard error of about {100 * (pa * (1 - pa) / n_items) ** 0.5:.1f} points per "
            f"model on {n_items} questions; GPTQ-3 against RTN-3 differ by {100 * (pa - pb):+.1f} points, "
            f"{abs(pa - pb) / se:.1f} standard errors of the difference. Knowledge is scored on plain "
            "`Question: ... Answer:` prompts, while GPTQ fits each layer to chat-formatted calibration prompts: its "
            "lower NLL and teacher KL on chat text need not carry over to another prompt format.\n")


def _ordering(rows, better, worse, what, key="nll") -> str:
    a, b = _find(rows, *better), _find(rows, *worse)
    if a is None or b is None or a.get(key) is None or b.get(key) is None:
        return f"- {what}: not measured in this run."
    holds = a[key] > b[key] if key == "knowledge" else a[key] < b[key]
    unit = "accuracy" if key == "knowledge" else "nats"
    return f"- {what}: {'holds' if holds else 'does NOT hold'} ({a[key]:.3f} against {b[key]:.3f} {unit})."


def render(rows, args, n_tokens, n_calibration, prefix, date: str | None = None) -> str:
    base = rows[0]["nll"]
    lines = [
        "# Degradation table",
        "",
        f"Model `{args.model}`, {n_tokens} held-out tokens, float32 on CPU ({torch.get_num_threads()} threads, "
        f"{platform.processor() or platform.machine()}), written by `bench/degradation_table.py`"
        f"{' --quick' if args.quick else ''} on {date or time.strftime('%Y-%m-%d')}.",
        "",
        "Held-out tokens: every third built-in prompt (`src/recoverlm/data/prompts_general.jsonl`, lines 3, 6, 9, ...),",
        f"rendered with the chat template; the first {prefix} tokens, the constant system prompt, are not scored.",
        f"Calibrated methods use {n_calibration} of the other built-in prompts (chat template, at most 128 tokens each).",
        "NLL is the mean negative log-likelihood per scored token (nats); teacher KL is KL(original || damaged)",
        "per scored token; time is the wall time of the degradation itself, calibration included.",
        "",
        "Knowledge is the accuracy on the shipped knowledge suite (341 questions, four choices: chance 0.25);",
        "— where a row was measured before that column existed.",
        "",
        "| method | parameters | NLL (nats) | ΔNLL | teacher KL | knowledge | time (s) |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        know = "—" if r.get("knowledge") is None else f"{r['knowledge']:.3f}"
        lines.append(
            f"| {r['method']} | {r['params'] or '—'} | {r['nll']:.3f} | {r['nll'] - base:+.3f} | {r['kl']:.3f} "
            f"| {know} | {r['seconds']:.1f} |"
        )
    lines += [
        "",
        "Orderings the pruning and quantization papers report:",
        "",
        _ordering(rows, ("prune.wanda", "sparsity=0.5"), ("prune.magnitude", "sparsity=0.5"),
                  "Wanda 50% below magnitude 50% (NLL)"),
        _ordering(rows, ("quant.gptq", "bits=3 group_size=32"), ("quant.rtn", "bits=3 group_size=32"),
                  "GPTQ 3-bit below RTN 3-bit, group 32 (NLL)"),
        _ordering(rows, ("quant.gptq", "bits=3 group_size=32"), ("quant.rtn", "bits=3 group_size=32"),
                  "GPTQ 3-bit below RTN 3-bit, group 32 (teacher KL)", "kl"),
        _ordering(rows, ("prune.wanda", "sparsity=0.5"), ("prune.magnitude", "sparsity=0.5"),
                  "Wanda 50% above magnitude 50% (knowledge)", "knowledge"),
        _ordering(rows, ("quant.gptq", "bits=3 group_size=32"), ("quant.rtn", "bits=3 group_size=32"),
                  "GPTQ 3-bit above RTN 3-bit, group 32 (knowledge)", "knowledge"),
        _ordering(rows, ("quant.gptq", "bits=4 group_size=32"), ("quant.rtn", "bits=4 group_size=32"),
                  "GPTQ 4-bit below RTN 4-bit, group 32 (teacher KL)", "kl"),
        "",
        _knowledge_note(rows),
        f"Near the original, NLL differences of a few hundredths of a nat are within what {n_tokens} tokens can",
        "resolve (a damaged model can even score a lower NLL); teacher KL is the finer measure of damage.",
        "SFT forgetting (`sft` on the built-in tasks) is measured with the task suites and teacher fidelity",
        "in [evaluation.md](evaluation.md), where the skill it teaches and the general ability it costs sit side by side.",
        "",
        "Times were taken on a shared 2-core machine, sometimes at low priority: they vary several-fold",
        "with load and show only the order of magnitude (calibrated methods run two block passes over",
        "the calibration set per block; GPTQ adds one column loop per matrix).",
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
