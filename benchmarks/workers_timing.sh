#!/usr/bin/env bash
# Wall time of the same SIGREC grid points with two search workers on a 2-core machine, before and
# after the per-worker thread split (issue "Ready for the hardware", item 5):
#   before: each worker takes every core (--threads 2 per worker: 4 threads on 2 cores), as the
#           harness did before threads_per_worker;
#   after:  the default, cores // workers = 1 thread per worker.
# Run it alone on a quiet machine (nothing else training); ~10 minutes. Each run trains the same
# 4 points of SIGREC's grid for EPOCHS epochs in a fresh output folder, and the table goes to stdout
# and to results/speed/workers-ml100k.md.
#
#   bash benchmarks/workers_timing.sh [EPOCHS]      (default 10)
set -euo pipefail
cd "$(dirname "$0")/.."
EPOCHS="${1:-10}"
OUT="$(mktemp -d)"
trap 'rm -rf "$OUT"' EXIT
POINTS=(--perturb_eps 0.2 --cl_weight 0.01 --anchor_weight "[0.01, 0.1]" --align_weight "[0.01, 0.1]")
run() {  # NAME THREADS_PER_WORKER
  local t0 t1
  t0=$(date +%s.%N)
  python src/main.py -m SIGREC -d ml100k --device cpu --quiet --save_model False --output "$OUT/$1" \
    --epochs "$EPOCHS" --workers 2 --threads "$2" "${POINTS[@]}" >/dev/null
  t1=$(date +%s.%N)
  python -c "print(f'| $1 | 2 x $2 | {($t1 - $t0):.1f} |')"
}
{
  echo "SIGREC on ml100k, 4 grid points x $EPOCHS epochs, --workers 2 on $(nproc) cores ($(date +%F))"
  echo
  echo "| threads | workers x threads | wall seconds |"
  echo "|---|---|---|"
  run before 2
  run after 1
} | tee results/speed/workers-ml100k.md
