#!/usr/bin/env bash
# The device check, at most 8 minutes on one GPU: throughput and memory of the hot paths at the
# embedded model's size and at Qwen2.5-3B's (bench/gpu_bench.py), then a few recovery steps of a
# random-init Qwen2.5-1.5B under DDP, FSDP2, DeepSpeed ZeRO-2 and ZeRO-3 (bench/distributed_check.py).
# Results land in bench/results/ (and $OUT when set, for the device machine to hand back); render
# them here with `python bench/gpu_bench.py --markdown bench/results/gpu.jsonl`.
#
#   bench/gpu.sh          # on a GPU machine
#   bench/gpu.sh --toy    # anywhere: the same steps at toy size on CPU, to check the script
set -u
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
[ -x "$PY" ] || PY=python
RES=bench/results
mkdir -p "$RES"
status=0
if [ "${1:-}" = "--toy" ]; then
  timeout 600 "$PY" bench/distributed_check.py --toy --steps 2 --no-doc || status=1
else
  timeout 200 "$PY" bench/gpu_bench.py --out "$RES/gpu.jsonl" || status=1
  timeout 280 "$PY" bench/distributed_check.py --shape qwen2.5-1.5b --steps 3 || status=1
fi
if [ -n "${OUT:-}" ]; then
  cp -r "$RES"/gpu.jsonl "$RES"/distributed.json docs/benchmarks.md "$OUT"/ 2>/dev/null
fi
exit $status
