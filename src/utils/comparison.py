"""Side-by-side comparison of several models on one dataset over several seeds.

For each model: run (or reuse) its grid at the selection seed (the first value of the config's
``seed``), pick the best point on validation, run that point for every seed (reusing finished ones),
then compare the models on test with significance tests, and write tables and plots to
OUTPUT/comparison/<dataset>-<models>/.

The selection run won a maximum over the grid on validation, so its test scores are biased upwards,
and more so for larger grids. The table therefore averages fresh seeds only: the selection seed is
left out of the means, the stds, the per-user tests and the plots (it is still recorded and reused).
``--include-selection-seed`` averages every seed of ``--seeds``, as before.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import time
import csv
import io
from dataclasses import dataclass, field, fields
from pathlib import Path

from utils.configurator import Config, closest
from utils.errors import ConfigError, HarnessError
from utils.logger import init_logger
from utils.plots import plot_bars, plot_curves, plot_sensitivity, sensitivity_series
from utils.quick_start import RunOptions, grid_points, load_data, params_text, run_dir, run_grid
from utils.results import ResultsStore, point_key, prepare_output, write_text_atomic
from utils.statistics import ComparisonTable, build_table, write_table
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
    include_selection: bool = False               # whether the table averages the selection run too
    selection_run: dict | None = None             # the best point's record at the selection seed

    @property
    def selection_seed(self) -> int:
        """The seed the grid was searched at (``best`` holds it)."""
        return int(self.best["seed"])

    @property
    def table_runs(self) -> list[dict]:
        """The records the table averages: fresh seeds only, unless the selection seed is included."""
        return [r for r in self.seed_runs if self.include_selection or int(r["seed"]) != self.selection_seed]


def seed_plan(model: str, config_seeds: list, seeds: list[int] | None,
              include_selection: bool) -> tuple[int, list[int], list[int]]:
    """(selection seed, seeds to run the best point at, seeds the table averages) of one model.

    The selection seed is the config's first ``seed``; the grid is searched there. Without
    ``include_selection`` it is dropped from the averaged seeds, and none left is a ConfigError."""
    selection = int(config_seeds[0])
    compared = list(seeds) if seeds else [int(s) for s in config_seeds]
    averaged = compared if include_selection else [s for s in compared if s != selection]
    if not averaged:
        raise ConfigError(f"{model}: no fresh seed to average: seeds {','.join(map(str, compared))} hold only "
                          f"the selection seed {selection}, at which the grid is searched; add fresh seeds "
                          f"(e.g. --seeds {selection},1,2,3) or pass --include-selection-seed")
    return selection, compared, averaged


def _count(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


@dataclass
class SeedTable(ComparisonTable):
    """A comparison table that states which seeds it averages and whether the selection seed is one."""
    seeds: dict[str, list[int]] = field(default_factory=dict)       # model -> averaged seeds
    selection_seeds: dict[str, int] = field(default_factory=dict)   # model -> its selection seed
    include_selection: bool = False

    def seed_phrase(self) -> str:
        """E.g. '5 fresh seeds (1, 2, 3, 4, 5); the selection seed 999 is excluded'."""
        kind = "seed" if self.include_selection else "fresh seed"
        lists = [self.seeds[m] for m in self.models]
        if len({tuple(s) for s in lists}) == 1:
            text = f"{_count(len(lists[0]), kind)} ({', '.join(map(str, lists[0]))})"
        else:
            counts = "/".join(str(n) for n in sorted({len(s) for s in lists}))
            text = f"{counts} {kind}s ({'; '.join(f'{m}: ' + ', '.join(map(str, self.seeds[m])) for m in self.models)})"
        chosen = sorted(set(self.selection_seeds[m] for m in self.models))
        seed = f"selection seed{'s' if len(chosen) > 1 else ''} {', '.join(map(str, chosen))}"
        if not self.include_selection:
            return f"{text}; the {seed} {'are' if len(chosen) > 1 else 'is'} excluded"
        inside = [m for m in self.models if self.selection_seeds[m] in self.seeds[m]]
        if len(inside) == len(self.models):
            return f"{text}, including the {seed}"
        if not inside:
            return f"{text}; the {seed} {'are' if len(chosen) > 1 else 'is'} not among them"
        return f"{text}, including the {seed} for {', '.join(inside)}"

    def caption(self) -> str:
        first = (f"Test metrics on {self.dataset or 'the dataset'} of each model's best grid point (selected on "
                 f"validation at the selection seed): mean ± std over {self.seed_phrase()}.")
        base = super().caption()
        rest = base[base.index(" Bold: "):] if " Bold: " in base else " " + base
        return first + rest

    def to_csv(self) -> str:
        """The base CSV with a ``note`` column, one ``seeds`` row per model and a ``caption`` row."""
        rows = list(csv.reader(io.StringIO(super().to_csv())))
        header = rows[0] + ["note"]
        out = [header] + [row + [""] for row in rows[1:]]
        blank = [""] * len(header)
        for model in self.models:
            row = list(blank)
            row[0], row[1], row[header.index("n_seeds")] = "seeds", model, str(len(self.seeds[model]))
            chosen = self.selection_seeds[model]
            state = ("excluded" if not self.include_selection else
                     "included" if chosen in self.seeds[model] else "not among the seeds")
            row[-1] = f"{','.join(map(str, self.seeds[model]))} (selection seed {chosen} {state})"
            out.append(row)
        out.append(["caption"] + [""] * (len(header) - 2) + [self.caption()])
        buf = io.StringIO()
        csv.writer(buf, lineterminator="\n").writerows(out)
        return buf.getvalue()


def comparison_table(results: list[ModelRuns], dataset: str) -> SeedTable:
    """The table of the compared models over the seeds they average (see ``ModelRuns.table_runs``)."""
    for r in results:
        if not r.table_runs:
            raise HarnessError(f"{r.model} has no fresh-seed run to average; add fresh seeds to --seeds "
                               f"or pass --include-selection-seed")
    base = build_table({r.model: r.table_runs for r in results}, dataset)
    include = {r.include_selection for r in results}
    if len(include) > 1:
        raise HarnessError("the compared models disagree on whether the selection seed is averaged")
    return SeedTable(**{f.name: getattr(base, f.name) for f in fields(ComparisonTable)},
                     seeds={r.model: [int(x["seed"]) for x in r.table_runs] for r in results},
                     selection_seeds={r.model: r.selection_seed for r in results},
                     include_selection=include.pop())


def split_overrides(models: list[str], dataset: str, overrides: dict,
                    config_dir: str | None = None) -> dict[str, dict]:
    """Each model's share of the command-line overrides: the keys its config knows.

    ``MODEL.key`` (e.g. ``--SIGREC.cl_weight 0.01``) goes to that model only and wins over a plain
    ``key``. A key that no model knows is a ConfigError naming the closest known keys."""
    known = {m: set(Config(m, dataset, extra_config_dir=config_dir).known_keys) for m in models}
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
    config = Config(model, dataset, overrides, extra_config_dir=getattr(args, "config_dir", None))
    config["device"] = resolve_device(args.device, config["use_gpu"])
    config["quiet"] = args.quiet
    config["output_dir"] = str(output)  # graph caches go under it
    include = bool(getattr(args, "include_selection_seed", False))
    search_seed, model_seeds, averaged = seed_plan(model, config["seed"], seeds, include)
    log.info(f"########## {model} on {dataset}: grid search at seed {search_seed}, then seeds {model_seeds}; "
             f"the table averages {averaged} ({'including' if include else 'excluding'} the selection seed) "
             f"##########")
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
    # The grid has just run (or reused) the selection seed's point: never train it again here.
    to_run = [s for s in model_seeds if s != search_seed]
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
    result = ModelRuns(model, {**fixed, "seed": search_seed}, runs, grid,
                       str(config["valid_metric"] or "Recall@20"), missing, include,
                       _finished_ok(store, config.point({**fixed, "seed": search_seed}), output))
    if not result.table_runs:
        log.error(f"{model}: the best point failed for every {'' if include else 'fresh '}seed; "
                  f"it is left out of the comparison")
        return None
    return result


def report(results: list[ModelRuns], dataset: str, folder: Path) -> dict[str, Path]:
    """Write the table (md, csv, tex), the plots and comparison.json; return the written paths.

    The table, its tests and the bar and curve plots all use each model's ``table_runs``."""
    log = logging.getLogger()
    table = comparison_table(results, dataset)
    paths: dict[str, Path] = dict(write_table(table, folder))
    log.info(f"\n\n============ Comparison on {dataset} ============\n{table.to_markdown()}")
    firsts = sorted({r.table_runs[0]["seed"] for r in results})
    paths["curves"] = plot_curves({r.model: r.table_runs[0].get("history") or [] for r in results},
                                  folder / "training_curves.png", results[0].valid_metric,
                                  title=f"Training curves (best grid point, seed {', '.join(map(str, firsts))}: "
                                        f"the first seed of the table)")
    paths["bars"] = plot_bars(table, folder / "comparison_bars.png", seeds=table.seed_phrase())
    for r in results:
        png = plot_sensitivity(r.model, sensitivity_series(r.grid, r.best), folder / f"sensitivity_{r.model}.png")
        if png is not None:
            paths[f"sensitivity_{r.model}"] = png
    summary = {"dataset": dataset, "caption": table.caption(), "selection_seed_included": table.include_selection,
               "models": {r.model: {
                   "best_parameters": r.best, "seeds": [rec["seed"] for rec in r.table_runs],
                   "failed_seeds": r.missing_seeds, "keys": [rec["key"] for rec in r.table_runs],
                   "selection": {"seed": r.selection_seed, "in_table": any(rec["seed"] == r.selection_seed
                                                                           for rec in r.table_runs),
                                 "key": (r.selection_run or {}).get("key"),
                                 "test": (r.selection_run or {}).get("test")}} for r in results},
               "table": {"means": table.means, "stds": table.stds, "n_seeds": table.n_seeds,
                         "improvement_pct": table.improvement, "tests": [t.__dict__ for t in table.tests]}}
    paths["json"] = folder / "comparison.json"
    write_text_atomic(paths["json"], json.dumps(summary, indent=2, default=str))
    log.info("comparison written:\n" + "\n".join(f"  {p}" for p in paths.values()))
    return paths


def run_comparison(models: list[str], dataset: str, seeds: list[int] | None, overrides: dict,
                   args: argparse.Namespace, output: Path) -> int:
    """``main.py -m A,B,C [--seeds s1,s2]``: 0 when every model compared, 1 when some failed."""
    if len(set(models)) != len(models):
        raise ConfigError(f"a model is named twice in -m {','.join(models)}")
    if seeds is not None and (not seeds or len(set(seeds)) != len(seeds)):
        raise ConfigError("--seeds needs distinct integers, e.g. --seeds 999,1,2,3")
    if getattr(args, "search", "grid") != "grid":
        raise ConfigError("a comparison selects each model by grid search; drop --search/--trials")
    config_dir = getattr(args, "config_dir", None)
    shares = split_overrides(models, dataset, overrides, config_dir)
    include = bool(getattr(args, "include_selection_seed", False))
    for model in models:  # every model's values and seeds are checked before anything is written
        seed_plan(model, Config(model, dataset, shares[model], extra_config_dir=config_dir)["seed"], seeds, include)
    prepare_output(output)
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
