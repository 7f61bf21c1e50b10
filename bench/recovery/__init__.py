"""The recovery benchmark (entry point: bench/recovery_bench.py).

setting    what tells runs apart, and how old rows read
arm        configs/bench/*.yaml: which settings a command runs
run        training, scoring, child processes, cut-short rows
step_cost  seconds per KD, SFT and on-policy step
render     rows -> the Markdown of docs/benchmarks.md
results    the JSONL file of rows
"""
