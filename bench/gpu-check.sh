#!/usr/bin/env bash
# The GPU check as the device tool's `run` runs it (README "GPU check"), on the GPU machine:
# install the wheels that travel in .gpu/ (scripts/gpu-wheels; offline, --no-deps) into
# /tmp/site, make the random checkpoints in /tmp/gpu-checkpoints, run bench/gpu_check.py within its
# budget (450 s), and pack every result and log into $OUT/gpu-check/: summary.txt, summary.json,
# console.log and gpu-check.tar.gz (the rest; at most 8 files come back from $OUT).
# Arguments pass through to bench/gpu_check.py (e.g. --stages e2e,t3 --total-s 300).
set -u
cd "$(dirname "$0")/.."
RESULTS=${OUT:-/tmp/gpu-check-results}/gpu-check
WORK=/tmp/gpu-check
rm -rf "$WORK" && mkdir -p "$WORK" "$RESULTS"
export PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1
PY=${PY:-python3}
{
  echo "gpu-check: $(date -u +%FT%TZ) on $(hostname), $($PY --version 2>&1)"
  if compgen -G ".gpu/wheels/*.whl" >/dev/null; then
    t0=$(date +%s)
    $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
      .gpu/wheels/*.whl && echo "gpu-check: wheels installed in $(( $(date +%s) - t0 )) s" \
      || echo "gpu-check: installing the wheels FAILED (the stages below say what is missing)"
    export PYTHONPATH="$PWD:/tmp/site${PYTHONPATH:+:$PYTHONPATH}"
  else
    echo "gpu-check: no .gpu/wheels here: run scripts/gpu-wheels before, and name .gpu in carry"
    export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
  fi
  $PY -m bench.gpu_check --out "$WORK" --checkpoints "${CHECKPOINTS:-/tmp/gpu-checkpoints}" "$@"
} 2>&1 | tee "$WORK/console.log"
rc=${PIPESTATUS[0]}
# The random model's audio is noise: the WAVs' lengths are in the JSON, the files stay behind.
tar -czf "$RESULTS/gpu-check.tar.gz" --exclude='*.wav' -C "$WORK" .
cp "$WORK"/summary.txt "$WORK"/summary.json "$WORK"/console.log "$RESULTS/" 2>/dev/null
echo "gpu-check: results in $RESULTS (exit $rc)"
exit "$rc"
