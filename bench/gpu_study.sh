#!/usr/bin/env bash
# A study on a GPU machine without network, from what bench/gpu_bundle.py packed into .carry/ (the
# wheels its Python lacks, the embedded model's package in parts). Installs them under $SITE and
# runs the study with its cell records (the study's records folder, default docs/results-cells)
# copied to $OUT/records, so recorded cells are not run again and every new one is recorded there.
# Back here, merge and render (cells run on different machines share one set of records):
#   cp -r <returned>/records/. docs/results-cells/ && recoverlm study CONFIG --render
#
#   bench/gpu_study.sh configs/study-paper.yaml runs/study-paper --only '*-seed1' --jobs 4
set -euo pipefail
cd "$(dirname "$0")/.."
[ $# -ge 2 ] || { echo "usage: bench/gpu_study.sh CONFIG OUT [recoverlm study options]" >&2; exit 2; }
config=$1 out=$2
shift 2
PY=${PY:-python3}
SITE=${SITE:-/tmp/recoverlm-site}
ls .carry/wheels/*.whl .carry/model.tar.part* >/dev/null || { echo "run bench/gpu_bundle.py first" >&2; exit 2; }
mkdir -p "$SITE"
"$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" .carry/wheels/*.whl
cat .carry/model.tar.part* | tar -x -C "$SITE"
export PYTHONPATH="$SITE:$PWD/src" RECOVERLM_HOME=${RECOVERLM_HOME:-$PWD/.carry/home} PYTHONUNBUFFERED=1
records=$("$PY" -c 'import sys
from pathlib import Path
from recoverlm.report.records import records_dir_for
from recoverlm.study import load_study
s = load_study(Path(sys.argv[1]))
print(s.records or records_dir_for(s.doc or Path("docs/results.md")))' "$config")
keep=${OUT:-$(dirname "$out")}/records
mkdir -p "$keep"
[ -d "$records" ] && cp -r "$records/." "$keep/"
status=0
"$PY" -m recoverlm.cli study "$config" --out "$out" --doc "${OUT:-$(dirname "$out")}/results.md" --records "$keep" "$@" \
  || status=$?
echo "cell records in $keep ($(find "$keep" -name '*.json' | wc -l) cells, $(du -sh "$keep" | cut -f1))"
exit $status
