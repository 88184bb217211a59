#!/usr/bin/env bash
# Re-creates every evidence table of the README on ml100k, in three resumable phases (a rerun of
# this script skips every finished point). Two processes with one thread each share the 2 cores;
# records note their thread count and device.
#
#   bash benchmarks/evidence_ml100k.sh [OUTPUT]     (default results/ml100k, the README's records)
#
# 1. each model's full default grid at the selection seed (999);
# 2. the comparison: each model's validation-selected point at 5 fresh seeds (1-5), the table
#    averaging the fresh seeds only;
# 3. SIGREC's ablations at its selected point.
# Records, per-user test metrics and point configs stay in OUTPUT (git keeps them); weights are not
# saved (--save_model False), and logs, resume.pt files and caches are git-ignored.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT="${1:-results/ml100k}"
export OMP_NUM_THREADS=1
MODELS="SIGREC,FREEDOM,MGCN,LGMRec,LightGCN,VBPR,BPR"
SEEDS="999,1,2,3,4,5"
KEEP=(--save_model False)
run() { python src/main.py -d ml100k --device cpu --quiet --output "$OUT" "${KEEP[@]}" "$@" >/dev/null; }

echo "phase 1+2: grids, then fresh seeds ($(date +%T))"
# four lanes of one thread each: SIGREC's grid in two halves; the baselines' grids, then their
# fresh seeds, in two lanes (each "-m A,B --seeds" is a comparison of its own; the whole table at
# the end reuses every record)
run -m SIGREC --perturb_eps 0.1 &
run -m SIGREC --perturb_eps 0.2 &
(for m in BPR LightGCN VBPR; do run -m "$m"; done; run -m LightGCN,VBPR,BPR --seeds "$SEEDS") &
(for m in FREEDOM MGCN LGMRec; do run -m "$m"; done; run -m FREEDOM,MGCN,LGMRec --seeds "$SEEDS") &
wait
run -m SIGREC --seeds 999,1,2,3 &             # SIGREC's fresh seeds in two lanes
run -m SIGREC --seeds 999,4,5 &
wait
python src/main.py -m "$MODELS" -d ml100k --device cpu --quiet --output "$OUT" "${KEEP[@]}" --seeds "$SEEDS" | tail -n 20

echo "phase 3: ablations ($(date +%T))"
POINT=$(python - "$OUT" <<'EOF'
import json, sys
summary = json.load(open(f"{sys.argv[1]}/comparison/ml100k-SIGREC_FREEDOM_MGCN_LGMRec_LightGCN_VBPR_BPR/comparison.json"))
best = summary["models"]["SIGREC"]["best_parameters"]
print(",".join(f"{k}={v}" for k, v in best.items() if k != "seed"))
EOF
)
python benchmarks/ablations.py -d ml100k --point "$POINT" --workers 2 --output "$OUT/ablation" "${KEEP[@]}"
echo "done ($(date +%T))"
