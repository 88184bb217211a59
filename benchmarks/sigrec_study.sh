#!/usr/bin/env bash
# The SIGREC method study (validation selects; test is only reported), in resumable phases: a
# rerun of a phase skips every finished point, so the study can be continued in later sittings.
#
#   bash benchmarks/sigrec_study.sh PHASE
#
# ml100k (both modalities), records under results/ml100k/study/:
#   bracket        one value at a time around BASE (the rerun's selected grid point): each
#                  auxiliary weight over {0, 1e-3, 3e-3, 1e-2, 3e-2}, perturb_eps over {0.05,
#                  0.1, 0.2, 0.4, 0.8} (0.8 added when 0.4 won at the edge), temperature over
#                  {0.1, 0.2, 0.5, 1.0} (1.0 added when 0.5 won at the edge): 19 new points, unpruned, at
#                  the selection seed (~3-4 min a point on a quiet machine: ~1 h); then the table
#   bracket-table  the bracket's table (validation selects; test is shown, never used)
#   refine         TPE over all five at once, on the same lists plus 0.1: 32 trials (the first 10
#                  random), median pruning from epoch 80 on; the bracket's points are
#                  reused; then the table
#   refine-table   the 10 best points of every ml100k study record (top.md), and how well an early
#                  epoch's score ranks the points (early.md: the pruning warm-up's evidence)
#   choices        every [choice] alternative and every variant beyond the spec at the best point
#                  found (one run each at the selection seed; ~25 runs, ~1 h)
#   stabilisers    anchor_detach False at the best point: the anchors' gradient x{0.03, 0.1, 0.3}
#                  and the collapse check at anchor_weight 0.1 (one seed each), then the lead
#                  (x0.1) against the point over 3 seeds of its own (101-103: not the final's)
#   held           the settings SIGREC.yaml holds at MGCN's values (L2 weight 1e-5 / 1e-3, one or
#                  three LightGCN layers, two semantic-graph steps, MGCN's learning-rate decay) at the
#                  best point, one run each (6 runs, ~4 min each on a quiet core)
# Amazon Sports (text proxy only; ../shared/datasets/amazon/sports), records under results/sports/:
#   sports-baselines  FREEDOM, VBPR, LightGCN and BPR (strongest first): their default grids, unpruned (the final
#                     comparison selects over the same grids and reuses every record; a pruned
#                     point leaves none). FREEDOM and VBPR use the one text modality, as MMRec's code does
#   sports-center     SIGREC at ml100k's validation-best point, unpruned (the first of the 8
#                     Sports points: the natural start, and a full curve to read)
#   sports-search     SIGREC: sports-center, then 7 trials around ml100k's optimum (random: TPE's
#                     first 10 trials are), median pruning (the center stopped at epoch 72: ~25 min
#                     a point on 2 threads, ~50 on 1 beside another job; pruning rarely applies); its
#                     lists are the ml100k best value of each key and its (up to two) neighbours in
#                     the refine lists (around)
#   sports-choices    the choices and the study's Sports set at the Sports best point, one run each
#                     (17 runs, ~50 min each on one thread; the direct anchor loss is refused: one modality)
#   sports-config     write SIGREC's one-point Sports yaml (sports-search's best point) for final,
#                     or for fresh seeds one per process (--config_dir results/sports/final/config --seed N)
#   status         what each phase has finished (reads the records)
#   check          write the ml100k search space and print its size (trains nothing)
# After the defaults in SIGREC.yaml are set from both studies' validation figures:
#   final          the comparison with fresh seeds (ml100k 5, every model incl. the peers of
#                  evidence_peers.sh; Sports 3) and the ablations (ml100k:
#                  3 fresh seeds; Sports: one seed per variant)
set -euo pipefail
cd "$(dirname "$0")/.."
PHASE="${1:?usage: bash benchmarks/sigrec_study.sh status|check|bracket|bracket-table|refine|refine-table|choices|stabilisers|held|sports-baselines|sports-center|sports-search|sports-choices|sports-config|final}"
ML="results/ml100k/study"
SP="results/sports"
SPORTS=(-d sports --data_path ../shared/datasets/amazon/)
KEEP=(--save_model False --quiet)
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"
WORKERS="${WORKERS:-2}"  # search workers of one thread each (WORKERS=1 beside other jobs)
THREADS="${THREADS:-2}"  # threads of each Sports run (THREADS=1 for two Sports phases side by side)
# the selected point of the ml100k rerun (issue "Numbers you can trust"): valid R@20 0.3553
BASE=(--perturb_eps 0.2 --cl_weight 0.01 --anchor_weight 0.01 --align_weight 0.01 --temperature 0.2)

# The search space: the model's yaml (SIGREC unless MODEL= says another; the one source of every
# other value) with the study's lists, new grid keys (temperature) added to hyper_parameters,
# written to OUT/config/model/<MODEL>.yaml for --config_dir.
space() {  # OUT, then key=list pairs
  local out="$1"; shift
  python - "$out" "${MODEL:-SIGREC}" "$@" <<'EOF'
import sys
from pathlib import Path
import yaml
out, model, pairs = Path(sys.argv[1]) / "config" / "model", sys.argv[2], sys.argv[3:]
cfg = yaml.safe_load(Path(f"src/configs/model/{model}.yaml").read_text())
for pair in pairs:
    key, value = pair.split("=", 1)
    cfg[key] = yaml.safe_load(value)
    if key not in cfg["hyper_parameters"]:
        cfg["hyper_parameters"].append(key)
out.mkdir(parents=True, exist_ok=True)
(out / f"{model}.yaml").write_text(f"# written by benchmarks/sigrec_study.sh: {model}.yaml with the study's search space\n"
                                   + yaml.safe_dump(cfg, sort_keys=False))
EOF
}

one_point() {  # OUT POINT: the model's yaml narrowed to POINT (key=value,...), one value a list
  local out="$1" point="$2"
  space "$out" $(echo "$point" | tr ',' '\n' | sed 's/=\(.*\)/=[\1]/')
}

best_point() {  # the validation-best ok record of MODEL (default SIGREC) in OUT/results.jsonl (NDCG@20
  # breaks ties) as key=value,...: its grid values and SIGREC's five study keys (seed left out)
  python benchmarks/study_records.py best "$1" "${MODEL:-SIGREC}"
}

around() {  # key=list pairs: for every key of the refine lists, ml100k's best value and its neighbours
  python benchmarks/study_records.py around "$ML" "perturb_eps=$EPS" "cl_weight=$WEIGHTS" \
    "anchor_weight=$WEIGHTS" "align_weight=$WEIGHTS" "temperature=$TAUS"
}

WEIGHTS="[0.0, 0.001, 0.003, 0.01, 0.03, 0.1]"
EPS="[0.05, 0.1, 0.2, 0.4, 0.8]"  # perturb_eps: the bracket's and the searches' list
TAUS="[0.1, 0.2, 0.5, 1.0]"      # temperature
case "$PHASE" in
  bracket)
    scan() {  # KEY LIST: BASE with KEY over LIST (a grid of its own; finished points are skipped)
      python src/main.py -m SIGREC -d ml100k --device cpu --output "$ML" "${KEEP[@]}" "${BASE[@]}" \
        --"$1" "$2" --workers "$WORKERS" --threads 1
    }
    for key in cl_weight anchor_weight align_weight; do scan "$key" "[0.0, 0.001, 0.003, 0.01, 0.03]"; done
    scan perturb_eps "$EPS"
    for tau in 0.1 0.5 1.0; do  # temperature is not a grid key: one run each
      python src/main.py -m SIGREC -d ml100k --device cpu --output "$ML" "${KEEP[@]}" "${BASE[@]}" --temperature "$tau"
    done
    bash "$0" bracket-table ;;
  bracket-table)
    pairs=(); for ((i = 0; i < ${#BASE[@]}; i += 2)); do pairs+=("${BASE[i]#--}=${BASE[i+1]}"); done
    python benchmarks/study_records.py bracket "$ML" "${pairs[@]}" ;;
  refine-table)
    python benchmarks/study_records.py top "$ML" 10
    python benchmarks/study_records.py early "$ML" ;;
  refine)
    space "$ML" "perturb_eps=$EPS" "cl_weight=$WEIGHTS" "anchor_weight=$WEIGHTS" \
      "align_weight=$WEIGHTS" "temperature=$TAUS"
    # pruned from epoch 80 on only: across the first 25 study runs, the rank correlation of
    # valid R@20 at epoch e with the final one is 0.29 at e 20 (the default warm-up, under which the
    # first attempt, study SIGREC-ml100k-tpe, pruned 21 of 32 trials) and 0.80 at e 80
    python src/main.py -m SIGREC -d ml100k --device cpu --output "$ML" --config_dir "$ML/config" "${KEEP[@]}" \
      --search tpe --trials 32 --prune median --prune_warmup 80 --study SIGREC-ml100k-refine \
      --workers "$WORKERS" --threads 1
    bash "$0" refine-table
    echo "best (validation): $(best_point "$ML")" ;;
  choices)
    POINT=$(best_point "$ML")
    # the variants beyond the spec first (perturb_target, the stabilisers), then the spec's choices
    python benchmarks/ablations.py -d ml100k --point "$POINT" --workers "$WORKERS" --output "$ML/variants" --set study "${KEEP[@]}"
    python benchmarks/ablations.py -d ml100k --point "$POINT" --workers "$WORKERS" --output "$ML/variants" --set choices "${KEEP[@]}" ;;
  stabilisers)
    POINT=$(best_point "$ML")
    python benchmarks/ablations.py -d ml100k --point "$POINT" --workers "$WORKERS" --output "$ML/variants" --set stabilisers "${KEEP[@]}"
    python benchmarks/ablations.py -d ml100k --point "$POINT" --workers "$WORKERS" --output "$ML/variants" --set confirm --seeds 101,102,103 "${KEEP[@]}" ;;
  held)
    POINT=$(best_point "$ML")
    python benchmarks/ablations.py -d ml100k --point "$POINT" --workers "$WORKERS" --output "$ML/variants" --set held "${KEEP[@]}" ;;
  sports-baselines)
    for m in FREEDOM VBPR LightGCN BPR; do  # the strongest first: FREEDOM is SIGREC's rival there
      python src/main.py -m "$m" "${SPORTS[@]}" --device cpu --output "$SP" "${KEEP[@]}" --threads "$THREADS"
    done ;;
  sports-center)
    POINT=$(best_point "$ML"); ARGS=()
    IFS=, read -ra PAIRS <<<"$POINT"
    for p in "${PAIRS[@]}"; do ARGS+=("--${p%%=*}" "${p#*=}"); done
    python src/main.py -m SIGREC "${SPORTS[@]}" --device cpu --output "$SP" "${KEEP[@]}" "${ARGS[@]}" --threads "$THREADS" ;;
  sports-search)
    bash "$0" sports-center
    # around ml100k's optimum (refine's best): each key's best value and its two neighbours
    LISTS=$(around)  # not mapfile < <(around): a failure there would pass unseen
    mapfile -t AROUND <<<"$LISTS"
    (( ${#AROUND[@]} == 5 )) || { echo "error: no search lists from ml100k's records: run refine first" >&2; exit 1; }
    echo "sports-search lists: ${AROUND[*]}"
    space "$SP/study" "${AROUND[@]}"
    python src/main.py -m SIGREC "${SPORTS[@]}" --device cpu --output "$SP" --config_dir "$SP/study/config" \
      "${KEEP[@]}" --search tpe --trials 7 --prune median --prune_warmup 80 --threads "$THREADS"
    echo "best (validation): $(best_point "$SP")" ;;
  sports-choices)
    POINT=$(best_point "$SP")
    OMP_NUM_THREADS="$THREADS" python benchmarks/ablations.py "${SPORTS[@]}" --point "$POINT" --workers 1 \
      --output "$SP/study/variants" --set choices "${KEEP[@]}"
    # the study's Sports part (sparsity: graph density, noise placement, user semantics; ml100k's lead)
    # with the speed switch too: is a random 256 of each contrastive set enough there?
    OMP_NUM_THREADS="$THREADS" python benchmarks/ablations.py "${SPORTS[@]}" --point "$POINT" --workers 1 \
      --output "$SP/study/variants" --set sports-study --speed-variant "${KEEP[@]}" ;;
  final)
    # ml100k: every model; SMORE and MSCA at the points their TPE searches selected on validation
    # (benchmarks/evidence_peers.sh ml100k), as one-point yamls beside the built-in ones
    for m in SMORE MSCA; do
      P=$(MODEL=$m best_point "results/ml100k/$(echo "$m" | tr 'A-Z' 'a-z')_tpe")
      MODEL=$m one_point "$ML/final" "$P"
    done
    MODELS="SIGREC,FREEDOM,MGCN,LGMRec,LightGCN,VBPR,BPR,EASE,BM3,DRAGON,SMORE,MSCA"
    python src/main.py -m "$MODELS" -d ml100k --device cpu --output results/ml100k --config_dir "$ML/final/config" \
      "${KEEP[@]}" --seeds 999,1,2,3,4,5
    POINT=$(python - <<'EOF'
import json
summary = json.load(open("results/ml100k/comparison/ml100k-" + "SIGREC,FREEDOM,MGCN,LGMRec,LightGCN,VBPR,BPR,EASE,BM3,DRAGON,SMORE,MSCA".replace(",", "_") + "/comparison.json"))
print(",".join(f"{k}={v}" for k, v in summary["models"]["SIGREC"]["best_parameters"].items() if k != "seed"))
EOF
)
    python benchmarks/ablations.py -d ml100k --point "$POINT" --workers 2 --output results/ml100k/ablation --seeds 1,2,3 "${KEEP[@]}"
    # Sports: SIGREC at the point sports-search selected on validation (its grid there costs a day),
    # written as a one-point SIGREC.yaml; the baselines over their own grids (sports-baselines)
    bash "$0" sports-config; POINT=$(best_point "$SP")
    python src/main.py -m SIGREC,FREEDOM,VBPR,LightGCN,BPR "${SPORTS[@]}" --device cpu --output "$SP" \
      --config_dir "$SP/final/config" "${KEEP[@]}" --seeds 999,1,2,3 --threads "$THREADS"
    OMP_NUM_THREADS="$THREADS" python benchmarks/ablations.py "${SPORTS[@]}" --point "$POINT" --workers 1 --output "$SP/ablation" "${KEEP[@]}" ;;
  sports-config)  # SIGREC's one-point Sports yaml at sports-search's validation-best point (for final,
    # or for one fresh seed at a time: main.py -m SIGREC -d sports --config_dir $SP/final/config --seed N)
    one_point "$SP/final" "$(best_point "$SP")" ;;
  status)  # what each phase has finished so far (reads the records; trains nothing)
    python - "$ML" "$SP" <<'EOF'
import json, sys
from collections import Counter
from pathlib import Path
for folder in map(Path, sys.argv[1:]):
    for path in sorted(folder.glob("**/results.jsonl")):
        if "runs" in path.parts:
            continue
        counts = Counter((json.loads(l).get("model"), json.loads(l).get("status")) for l in path.read_text().splitlines() if l.strip())
        print(f"{path}: " + ", ".join(f"{m} {s} {n}" for (m, s), n in sorted(counts.items())))
EOF
    [ -f "$ML/results.jsonl" ] && bash "$0" bracket-table || true ;;
  check)  # write the ml100k search space and print its size; trains nothing
    space "$ML" "perturb_eps=$EPS" "cl_weight=$WEIGHTS" "anchor_weight=$WEIGHTS" \
      "align_weight=$WEIGHTS" "temperature=$TAUS"
    python - "$ML/config" <<'EOF'
import math, sys
sys.path.insert(0, "src")
from utils.configurator import Config
cfg = Config("SIGREC", "ml100k", extra_config_dir=sys.argv[1])
sizes = {k: len(cfg[k]) for k in cfg.grid_keys}
print(f"search space: {sizes} = {math.prod(sizes.values())} points")
EOF
    ;;
  *) echo "error: unknown phase '$PHASE' (status, check, bracket, bracket-table, refine, refine-table, choices, stabilisers, held, sports-baselines, sports-center, sports-search, sports-choices, final)" >&2; exit 2 ;;
esac
