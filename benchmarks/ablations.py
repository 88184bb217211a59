"""SIGREC's ablation table at one grid point: each variant changes one switch (spec section 9).
With ``--set choices``, the alternatives of the spec's design choices ([choice]) instead; with
``--set study``, the variants beyond the spec that the method study tries (noise placement and
target, user semantics, the co-interaction graph's k and threshold, stabilisers for ``anchor_detach False``);
``--set stabilisers``, the anchors' gradient scale and the collapse check at a strong anchor weight;
``--set confirm``, the study's lead against the point (with fresh ``--seeds``); ``--set sports-study``,
the part of ``study`` that Amazon Sports' sparsity may change, and ml100k's lead; ``--set held``, the
settings held at MGCN's values (L2 weight, layer counts, learning-rate decay).

    python benchmarks/ablations.py -d ml100k --point perturb_eps=0.2,cl_weight=0.01,anchor_weight=0.01,align_weight=0.01 --workers 2
    python benchmarks/ablations.py -d ml100k --point ... --workers 2 --set choices
    python benchmarks/ablations.py -d ml100k --point ... --workers 2 --seeds 1,2,3   (mean ± std)

With ``--seeds``, every variant is trained once per seed and the table gives mean ± std over
them (use fresh seeds, not the selection seed, for a table read against test). A variant the data
cannot run (e.g. ``--modalities image`` on a text-only dataset) is a row saying so, not a stop.

Other arguments go to every ``main.py`` run (e.g. ``--epochs 2`` for a smoke test).

Every variant is a normal ``main.py`` run in its own folder under ``--output`` (default
``outputs/ablation``), so a rerun skips the variants already finished. The table (Markdown) goes to
stdout and to ``<output>/ablation.md``; the records, each with its ``variant`` name, to
``<output>/results.jsonl`` (``<set>.md`` and ``<set>.jsonl`` for the other sets, e.g. ``choices.md``;
the sets share the default's run and every variant of the same name). Selection is on validation; test metrics are reported.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
from utils.results import write_text_atomic  # noqa: E402
REFUSED = 3  # main.py's exit status when the model refuses the data (ModelInputError)


def scaled_anchors(scale: float, weight: float | None = None) -> dict[str, list[str]]:
    """The variant ``anchor_detach False`` with the anchors' gradient times ``scale`` (at ``weight``)."""
    flags = (["--anchor_weight", str(weight)] if weight is not None else []) + ["--anchor_detach", "False"] + \
        (["--anchor_grad_scale", str(scale)] if scale != 1 else [])
    what = "gradient into the anchors" if scale == 1 else f"anchors' gradient x{scale}"
    at = f" at anchor_weight {weight}" if weight is not None else ""
    return {f"{what}{at} (`{' '.join(flags)}`)": flags}


VARIANTS: dict[str, list[str]] = {
    "SIGREC": [],
    "no infusion (`--cf_weight 0`)": ["--cf_weight", "0"],
    "constant noise (`--perturb_mode constant`)": ["--perturb_mode", "constant"],
    "no perturbation views (`--cl_weight 0`)": ["--cl_weight", "0"],
    "no anchor loss (`--anchor_weight 0`)": ["--anchor_weight", "0"],
    "no fusion alignment (`--align_weight 0`)": ["--align_weight", "0"],
    "image only (`--modalities image`)": ["--modalities", "image"],
    "text only (`--modalities text`)": ["--modalities", "text"],
}
CHOICES: dict[str, list[str]] = {  # the alternative of every [choice] in docs/sigrec-method.md
    "SIGREC": [],
    "binary kNN edges (`--knn_weight binary`)": ["--knn_weight", "binary"],
    "binary co-interaction edges (`--cf_weight_mode binary`)": ["--cf_weight_mode", "binary"],
    "additive infusion (`--infusion additive`)": ["--infusion", "additive"],
    "infusion weight 0.1 (`--cf_weight 0.1`)": ["--cf_weight", "0.1"],
    "infusion weight 0.5 (`--cf_weight 0.5`)": ["--cf_weight", "0.5"],
    "plain projection as item input (`--item_input projection`)": ["--item_input", "projection"],
    "plain mean fusion (`--fusion mean`)": ["--fusion", "mean"],
    **scaled_anchors(1),
    "direct InfoNCE(s^v, s^t) (`--anchor_mode direct`)": ["--anchor_mode", "direct"],
}
STUDY: dict[str, list[str]] = {  # beyond the spec: the open choices the study goes into
    "SIGREC": [],
    "noise on the output only (`--perturb_at output`)": ["--perturb_at", "output"],
    "noise on the behaviour branch, SimGCL's placement (`--perturb_target behavior`)": ["--perturb_target", "behavior"],
    "noise on both branches (`--perturb_target both`)": ["--perturb_target", "both"],
    "users' semantics as the mean of their items (`--user_semantics mean`)": ["--user_semantics", "mean"],
    "co-interaction pairs with >= 2 shared users (`--cf_min_count 2`)": ["--cf_min_count", "2"],
    "co-interaction top 5 (`--cf_topk 5`)": ["--cf_topk", "5"],
    "co-interaction top 20 (`--cf_topk 20`)": ["--cf_topk", "20"],
    "kNN top 5 (`--knn_k 5`)": ["--knn_k", "5"],
    "kNN top 20 (`--knn_k 20`)": ["--knn_k", "20"],
    **scaled_anchors(1),
    **scaled_anchors(0.1),
    "alignment warm-up, 10 epochs (`--anchor_detach False --align_warmup_epochs 10`)":
        ["--anchor_detach", "False", "--align_warmup_epochs", "10"],
    "both stabilisers (`--anchor_detach False --anchor_grad_scale 0.1 --align_warmup_epochs 10`)":
        ["--anchor_detach", "False", "--anchor_grad_scale", "0.1", "--align_warmup_epochs", "10"],
}
STABILISERS: dict[str, list[str]] = {  # anchor_detach False: the anchors' gradient scale, and the collapse
    "SIGREC": [], **scaled_anchors(1), **scaled_anchors(0.03), **scaled_anchors(0.1), **scaled_anchors(0.3),
    **scaled_anchors(1, weight=0.1), **scaled_anchors(0.1, weight=0.1)}
CONFIRM: dict[str, list[str]] = {"SIGREC": [], **scaled_anchors(0.1)}  # the study's lead, for fresh --seeds
# Sports (one modality, sparse; a run costs ~50 min on one thread): the study's variants that its
# sparsity may change (graph density, noise placement, user semantics) and ml100k's lead
SPORTS_STUDY: dict[str, list[str]] = {name: flags for name, flags in STUDY.items() if " ".join(flags) in (
    "", "--perturb_at output", "--perturb_target both", "--user_semantics mean", "--cf_min_count 2",
    "--cf_topk 20", "--knn_k 5", "--anchor_detach False --anchor_grad_scale 0.1")}
# the settings SIGREC.yaml holds at MGCN's values (no [choice], never searched): is one of them the limit?
HELD: dict[str, list[str]] = {
    "SIGREC": [],
    "L2 weight 1e-5 (`--reg_weight 1e-5`)": ["--reg_weight", "1e-5"],
    "L2 weight 1e-3 (`--reg_weight 1e-3`)": ["--reg_weight", "1e-3"],
    "one LightGCN layer (`--n_ui_layers 1`)": ["--n_ui_layers", "1"],
    "three LightGCN layers (`--n_ui_layers 3`)": ["--n_ui_layers", "3"],
    "two semantic-graph steps (`--n_mm_layers 2`)": ["--n_mm_layers", "2"],
    "learning-rate decay 0.96 per 50 epochs, MGCN's (`--learning_rate_scheduler [0.96,50]`)":
        ["--learning_rate_scheduler", "[0.96,50]"],
}
SETS = {"choices": CHOICES, "study": STUDY, "sports-study": SPORTS_STUDY, "stabilisers": STABILISERS,
        "confirm": CONFIRM, "held": HELD}
SPEED_VARIANT = {"256 contrastive nodes (`--cl_max_nodes 256`, speed switch)": ["--cl_max_nodes", "256"]}


def folder_name(variant: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in variant.split("(")[0].strip()).strip("_").lower()


def run_variant(dataset: str, point: list[str], variant: str, extra: list[str], out: Path, device: str,
                seeds: list[int] | None = None) -> dict:
    """Train one variant through main.py (skipped when already finished): its ok records (one per
    seed), or a row saying why the data cannot run it."""
    folder = out / folder_name(variant)
    seed_args = ["--seed", "[" + ",".join(map(str, seeds)) + "]"] if seeds else []
    cmd = [sys.executable, str(ROOT / "src" / "main.py"), "-m", "SIGREC", "-d", dataset, "--device", device,
           "--quiet", "--output", str(folder), *point, *extra, *seed_args]
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    done = subprocess.run(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    last = (done.stderr.strip().splitlines() or [""])[-1]
    if done.returncode == REFUSED:  # main.py: the model refuses this data (e.g. a missing modality)
        return {"variant": variant, "overrides": extra, "refused": last.removeprefix("error:").strip()}
    if done.returncode != 0:
        raise SystemExit(f"error: variant '{variant}' failed: {last}")
    records = [json.loads(line) for line in (folder / "results.jsonl").read_text().splitlines() if line.strip()]
    wanted = _grid_values(point + extra)
    ok = [r for r in records if r.get("status") == "ok" and r.get("dataset", dataset) == dataset
          and all(_same(r.get("parameters", {}).get(k, v), v) for k, v in wanted.items())]
    if not ok:
        raise SystemExit(f"error: variant '{variant}' left no finished run for this point in {folder}")
    if seeds:
        by_seed = {r.get("parameters", {}).get("seed"): r for r in ok}
        ok = [by_seed[s] for s in seeds if s in by_seed]
    else:  # the run main.py just made: the selection seed's, not another --seeds table's
        seed = _selection_seed(dataset, wanted)
        ok = [r for r in ok if r.get("parameters", {}).get("seed", seed) == seed][-1:]
        if not ok:
            raise SystemExit(f"error: variant '{variant}' left no finished run at seed {seed} in {folder}")
    return {**ok[-1], "variant": variant, "overrides": extra, "runs": ok}


def _selection_seed(dataset: str, wanted: dict[str, object]) -> int:
    """The seed main.py trains at without --seeds: the first of ``--seed`` or of the config's list."""
    from utils.configurator import Config

    seeds = wanted["seed"] if "seed" in wanted else Config("SIGREC", dataset, check=False)["seed"]
    return int(seeds[0] if isinstance(seeds, list) else seeds)


def _grid_values(args: list[str]) -> dict[str, object]:
    """The ``--key value`` overrides among ``args``, read by main.py's own parser (bare flags
    such as --quiet are main.py's options, not config values, and are left out)."""
    from main import parse_overrides

    kept, i = [], 0
    while i < len(args):
        if args[i].startswith("--") and "=" not in args[i] and (i + 1 == len(args) or args[i + 1].startswith("--")):
            i += 1  # a flag
            continue
        kept.append(args[i])
        i += 1
    return parse_overrides(kept)


def _same(a: object, b: object) -> bool:
    """A record's parameter against the asked value (0 and 0.0 alike)."""
    if isinstance(a, (int, float)) and isinstance(b, (int, float)) and not isinstance(a, bool):
        return float(a) == float(b)
    return a == b


def _cell(values: list[float], n: int) -> str:
    short = f" (n={len(values)})" if len(values) < n else ""  # a seed that failed is said, not hidden
    if len(values) == 1:
        return f"{values[0]:.4f}{short}"
    return f"{statistics.mean(values):.4f} ± {statistics.stdev(values):.4f}{short}"


def table(rows: list[dict]) -> str:
    n = max(len(r.get("runs", [])) for r in rows)
    head = "| variant | epochs (best) | valid R@20 | test R@10 | R@20 | N@10 | N@20 |"
    if n > 1:
        head = head.replace("| variant |", f"| variant (mean ± std over {n} seeds) |")
    lines = [head, "|---|---|---|---|---|---|---|"]
    for r in rows:
        if "refused" in r:
            lines.append(f"| {r['variant']} | n/a: {r['refused']} | | | | | |")
            continue
        runs = r["runs"]
        epochs = f"{statistics.mean(x['epochs_run'] for x in runs):.0f} ({statistics.mean(x['best_epoch'] for x in runs):.0f})"
        cells = [_cell([x["valid"]["recall@20"] for x in runs], n)] + \
            [_cell([x["test"][m] for x in runs], n) for m in ("recall@10", "recall@20", "ndcg@10", "ndcg@20")]
        lines.append(f"| {r['variant']} | {epochs} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-d", "--dataset", default="ml100k")
    p.add_argument("--point", required=True, help="the grid point, key=value,key=value")
    p.add_argument("--workers", type=int, default=1, help="variants trained at once (one thread each)")
    p.add_argument("--output", default=str(ROOT / "outputs" / "ablation"))
    p.add_argument("--device", default="cpu")
    p.add_argument("--set", choices=["ablations", *SETS], default="ablations",
                   help="the ablations of spec section 9, the alternatives of its design choices, the "
                        "study's variants beyond the spec, the anchor stabilisers' scale and collapse "
                        "check, or the study's lead against the point (confirm, with --seeds)")
    p.add_argument("--seeds", default="", help="comma-separated seeds: each variant once per seed, mean ± std")
    p.add_argument("--speed-variant", action="store_true", help="also run SIGREC with --cl_max_nodes 256")
    args, passthrough = p.parse_known_args()  # anything else goes to main.py (e.g. --epochs 2)
    try:
        pairs = [item.split("=", 1) for item in args.point.split(",") if item]
        point = [tok for key, value in pairs for tok in (f"--{key}", value)] + passthrough
    except ValueError:
        raise SystemExit(f"error: --point must look like key=value,key=value, not '{args.point}'") from None
    try:
        seeds = [int(x) for x in args.seeds.split(",") if x.strip()]
    except ValueError:
        raise SystemExit(f"error: --seeds must be whole numbers separated by commas, not '{args.seeds}'") from None
    variants = {**SETS.get(args.set, VARIANTS),
                **(SPEED_VARIANT if args.speed_variant else {})}
    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    with ThreadPoolExecutor(max_workers=max(1, args.workers)) as pool:
        rows = list(pool.map(lambda kv: run_variant(args.dataset, point, kv[0], kv[1], out, args.device, seeds),
                             variants.items()))
    rows[0]["variant"] = "SIGREC (" + ", ".join(f"{k} {v}" for k, v in pairs) + ")"
    text = table(rows)
    table_name, records_name = (f"{args.set}.md", f"{args.set}.jsonl") if args.set in SETS else (
        "ablation.md", "results.jsonl")
    if seeds:  # a seed-averaged table beside the one-seed tables
        stem = "-seeds" + "_".join(map(str, seeds))
        table_name, records_name = (table_name.replace(".md", f"{stem}.md"), records_name.replace(".jsonl", f"{stem}.jsonl"))
    write_text_atomic(out / table_name, text + "\n")
    write_text_atomic(out / records_name, "".join(  # one line per trained run (or the refusal)
        json.dumps({**{k: v for k, v in run.items() if k not in ("history", "runs")},
                    "variant": r["variant"], "overrides": r["overrides"]}) + "\n"
        for r in rows for run in r.get("runs") or [r]))
    print(text)


if __name__ == "__main__":
    main()
