"""Side-by-side comparison of several models on one dataset over several seeds.

For each model: run (or reuse) its grid at the selection seed, pick the best point on validation,
run that point for every seed (reusing finished ones), then compare the models on test with
significance tests, and write tables and plots to OUTPUT/comparison/<dataset>-<models>/.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

from utils.configurator import Config, closest
from utils.errors import ConfigError, HarnessError
from utils.logger import init_logger
from utils.plots import plot_bars, plot_curves, plot_sensitivity, sensitivity_series
from utils.quick_start import RunOptions, grid_points, load_data, params_text, run_dir, run_grid
from utils.results import ResultsStore, point_key
from utils.statistics import build_table, write_table
from utils.utils import resolve_device


@dataclass
class ModelRuns:
    """What the comparison keeps of one model."""
    model: str
    best: dict                                    # best grid point's parameters (selection seed)
    seed_runs: list[dict]                         # ok records of the best point, in seed order
    grid: list[tuple[dict, dict]] = field(default_factory=list)  # (parameters, ok record) at the selection seed
    valid_metric: str = "Recall@20"
    missing_seeds: list[int] = field(default_factory=list)


def split_overrides(models: list[str], dataset: str, overrides: dict) -> dict[str, dict]:
    """Each model's share of the command-line overrides: the keys its config knows.

    ``MODEL.key`` (e.g. ``--SIGREC.cl_weight 0.01``) goes to that model only and wins over a plain
    ``key``. A key that no model knows is a ConfigError naming the closest known keys."""
    known = {m: set(Config(m, dataset).known_keys) for m in models}
    every = sorted(set().union(*known.values()))
    shares: dict[str, dict] = {m: {} for m in models}
    scoped: dict[str, dict] = {m: {} for m in models}
    for key, value in overrides.items():
        model, _, name = key.rpartition(".")
        if model:
            if model not in known:
                raise ConfigError(f"'{key}' names model {model}, which is not compared here "
                                  f"({', '.join(models)})")
            if name not in known[model]:
                raise ConfigError(f"unknown config key '{name}' for {model} on {dataset}: "
                                  f"{closest(name, sorted(known[model]))}")
            scoped[model][name] = value
            continue
        if not any(key in k for k in known.values()):
            raise ConfigError(f"unknown config key '{key}' for {', '.join(models)} on {dataset}: "
                              f"{closest(key, every)}")
        for m in models:
            if key in known[m]:
                shares[m][key] = value
    return {m: {**shares[m], **scoped[m]} for m in models}


def _finished_ok(store: ResultsStore, cfg: Config, output: Path) -> dict | None:
    """The ok record of a point; a per-user file recorded elsewhere (a moved output folder) is
    looked up again under ``output``."""
    rec = store.finished(point_key(cfg.final_config_dict))
    if rec is None or rec.get("status") != "ok":
        return None
    if rec.get("per_user") and not Path(rec["per_user"]).exists():
        moved = run_dir(output, rec, rec["key"]) / "per_user_test.npz"
        if moved.exists():
            rec = {**rec, "per_user": str(moved)}
    return rec


def compare_model(model: str, dataset: str, overrides: dict, seeds: list[int] | None,
                  args: argparse.Namespace, output: Path) -> ModelRuns | None:
    """Select one model's best point on the selection seed, then run it for every seed."""
    log = logging.getLogger()
    config = Config(model, dataset, overrides)
    config["device"] = resolve_device(args.device, config["use_gpu"])
    config["quiet"] = args.quiet
    search_seed = int(config["seed"][0])
    model_seeds = list(seeds) if seeds else [int(s) for s in config["seed"]]
    log.info(f"########## {model} on {dataset}: grid search at seed {search_seed}, "
             f"then seeds {model_seeds} ##########")
    data = load_data(config)
    store = ResultsStore(output / "results.jsonl")

    select = config.point({"seed": [search_seed]})
    best = run_grid(select, RunOptions(output_dir=output, rerun=args.rerun), data)
    if best is None:
        log.error(f"{model}: no grid point finished; it is left out of the comparison")
        return None
    grid = []
    for point in grid_points(select):
        rec = _finished_ok(store, select.point(point), output)
        if rec is not None:
            grid.append((point, rec))

    fixed = {k: best["parameters"][k] for k in select.grid_keys if k != "seed"}
    log.info(f"{model}: best point on validation {params_text(fixed)}; running it for seeds {model_seeds}")
    # With --rerun the selection seed's point was just trained again: do not train it a third time.
    to_run = [s for s in model_seeds if not (args.rerun and s == search_seed)]
    if to_run:
        per_seed = config.point({**{k: [v] for k, v in fixed.items()}, "seed": to_run})
        run_grid(per_seed, RunOptions(output_dir=output, rerun=args.rerun), data)
    runs, missing = [], []
    for seed in model_seeds:
        rec = _finished_ok(store, config.point({**fixed, "seed": seed}), output)
        if rec is None:
            missing.append(seed)
        else:
            runs.append(rec)
    if missing:
        log.warning(f"{model}: seed(s) {missing} failed; the comparison uses the {len(runs)} other(s)")
    if not runs:
        log.error(f"{model}: the best point failed for every seed; it is left out of the comparison")
        return None
    return ModelRuns(model, {**fixed, "seed": search_seed}, runs, grid,
                     str(config["valid_metric"] or "Recall@20"), missing)


def report(results: list[ModelRuns], dataset: str, folder: Path) -> dict[str, Path]:
    """Write the table (md, csv, tex), the plots and comparison.json; return the written paths."""
    log = logging.getLogger()
    table = build_table({r.model: r.seed_runs for r in results}, dataset)
    paths: dict[str, Path] = dict(write_table(table, folder))
    log.info(f"\n\n============ Comparison on {dataset} ============\n{table.to_markdown()}")
    paths["curves"] = plot_curves({r.model: r.seed_runs[0].get("history") or [] for r in results},
                                  folder / "training_curves.png", results[0].valid_metric)
    paths["bars"] = plot_bars(table, folder / "comparison_bars.png")
    for r in results:
        png = plot_sensitivity(r.model, sensitivity_series(r.grid, r.best), folder / f"sensitivity_{r.model}.png")
        if png is not None:
            paths[f"sensitivity_{r.model}"] = png
    summary = {"dataset": dataset, "models": {r.model: {
        "best_parameters": r.best, "seeds": [rec["seed"] for rec in r.seed_runs], "failed_seeds": r.missing_seeds,
        "keys": [rec["key"] for rec in r.seed_runs]} for r in results},
        "table": {"means": table.means, "stds": table.stds, "improvement_pct": table.improvement,
                  "tests": [t.__dict__ for t in table.tests]}}
    paths["json"] = folder / "comparison.json"
    paths["json"].write_text(json.dumps(summary, indent=2, default=str), encoding="utf-8")
    log.info("comparison written:\n" + "\n".join(f"  {p}" for p in paths.values()))
    return paths


def run_comparison(models: list[str], dataset: str, seeds: list[int] | None, overrides: dict,
                   args: argparse.Namespace, output: Path) -> int:
    """``main.py -m A,B,C [--seeds s1,s2]``: 0 when every model compared, 1 when some failed."""
    if len(set(models)) != len(models):
        raise ConfigError(f"a model is named twice in -m {','.join(models)}")
    if seeds is not None and (not seeds or len(set(seeds)) != len(seeds)):
        raise ConfigError("--seeds needs distinct integers, e.g. --seeds 999,1,2")
    if getattr(args, "search", "grid") != "grid":
        raise ConfigError("a comparison selects each model by grid search; drop --search/--trials")
    shares = split_overrides(models, dataset, overrides)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    init_logger(output / "logs" / f"compare-{dataset}-{stamp}-{os.getpid()}.log", args.quiet)
    log = logging.getLogger()
    log.info(f"comparison of {', '.join(models)} on {dataset}; overrides {overrides or 'none'}")
    results = []
    for model in models:
        runs = compare_model(model, dataset, shares[model], seeds, args, output)
        if runs is not None:
            results.append(runs)
    if not results:
        raise HarnessError("no model finished a run; nothing to compare (see the log)")
    if results[0].model != models[0]:
        log.error(f"the first model {models[0]} has no result: the table compares the others without it")
    report(results, dataset, output / "comparison" / f"{dataset}-{'_'.join(models)}")
    return 0 if len(results) == len(models) else 1
