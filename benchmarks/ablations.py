"""SIGREC's ablation table at one grid point: each variant changes one switch (spec section 9).
With ``--set choices``, the alternatives of the spec's design choices ([choice]) instead.

    python benchmarks/ablations.py -d ml100k --point perturb_eps=0.2,cl_weight=0.01,anchor_weight=0.01,align_weight=0.01 --workers 2
    python benchmarks/ablations.py -d ml100k --point ... --workers 2 --set choices

Other arguments go to every ``main.py`` run (e.g. ``--epochs 2`` for a smoke test).

Every variant is a normal ``main.py`` run in its own folder under ``--output`` (default
``outputs/ablation``), so a rerun skips the variants already finished. The table (Markdown) goes to
stdout and to ``<output>/ablation.md``; the records, each with its ``variant`` name, to
``<output>/results.jsonl`` (``choices.md`` and ``choices.jsonl`` for ``--set choices``; the two sets
share the default's run). Selection is on validation; test metrics are reported.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
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
    "gradient into the anchors (`--anchor_detach False`)": ["--anchor_detach", "False"],
    "direct InfoNCE(s^v, s^t) (`--anchor_mode direct`)": ["--anchor_mode", "direct"],
}
SPEED_VARIANT = {"256 contrastive nodes (`--cl_max_nodes 256`, speed switch)": ["--cl_max_nodes", "256"]}


def folder_name(variant: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in variant.split("(")[0].strip()).strip("_").lower()


def run_variant(dataset: str, point: list[str], variant: str, extra: list[str], out: Path, device: str) -> dict:
    """Train one variant through main.py (skipped when already finished); its last ok record."""
    folder = out / folder_name(variant)
    cmd = [sys.executable, str(ROOT / "src" / "main.py"), "-m", "SIGREC", "-d", dataset, "--device", device,
           "--quiet", "--output", str(folder), *point, *extra]
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    done = subprocess.run(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    if done.returncode != 0:
        raise SystemExit(f"error: variant '{variant}' failed: {done.stderr.strip().splitlines()[-1:]}")
    records = [json.loads(line) for line in (folder / "results.jsonl").read_text().splitlines() if line.strip()]
    record = [r for r in records if r.get("status") == "ok"][-1]
    return {**record, "variant": variant, "overrides": extra}


def table(rows: list[dict]) -> str:
    lines = ["| variant | epochs (best) | valid R@20 | test R@10 | R@20 | N@10 | N@20 |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        v, t = r["valid"], r["test"]
        lines.append(f"| {r['variant']} | {r['epochs_run']} ({r['best_epoch']}) | {v['recall@20']:.4f} | "
                     f"{t['recall@10']:.4f} | {t['recall@20']:.4f} | {t['ndcg@10']:.4f} | {t['ndcg@20']:.4f} |")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-d", "--dataset", default="ml100k")
    p.add_argument("--point", required=True, help="the grid point, key=value,key=value")
    p.add_argument("--workers", type=int, default=1, help="variants trained at once (one thread each)")
    p.add_argument("--output", default=str(ROOT / "outputs" / "ablation"))
    p.add_argument("--device", default="cpu")
    p.add_argument("--set", choices=["ablations", "choices"], default="ablations",
                   help="the ablations of spec section 9, or the alternatives of its design choices")
    p.add_argument("--speed-variant", action="store_true", help="also run SIGREC with --cl_max_nodes 256")
    args, passthrough = p.parse_known_args()  # anything else goes to main.py (e.g. --epochs 2)
    try:
        pairs = [item.split("=", 1) for item in args.point.split(",") if item]
        point = [tok for key, value in pairs for tok in (f"--{key}", value)] + passthrough
    except ValueError:
        raise SystemExit(f"error: --point must look like key=value,key=value, not '{args.point}'") from None
    variants = CHOICES if args.set == "choices" else {**VARIANTS, **(SPEED_VARIANT if args.speed_variant else {})}
    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    with ThreadPoolExecutor(max_workers=max(1, args.workers)) as pool:
        rows = list(pool.map(lambda kv: run_variant(args.dataset, point, kv[0], kv[1], out, args.device),
                             variants.items()))
    rows[0]["variant"] = "SIGREC (" + ", ".join(f"{k} {v}" for k, v in pairs) + ")"
    text = table(rows)
    table_name, records_name = ("choices.md", "choices.jsonl") if args.set == "choices" else ("ablation.md", "results.jsonl")
    (out / table_name).write_text(text + "\n", encoding="utf-8")
    with open(out / records_name, "w", encoding="utf-8") as fh:
        for r in rows:
            fh.write(json.dumps({k: v for k, v in r.items() if k != "history"}) + "\n")
    print(text)


if __name__ == "__main__":
    main()
