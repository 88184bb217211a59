"""Read a study folder's records (``results.jsonl``) for benchmarks/sigrec_study.sh: the best point,
the bracket's table, and the table of the best points of a search. Validation selects (Recall@20,
NDCG@20 breaking ties); test is shown, never used.

    python benchmarks/study_records.py best    OUT [MODEL]          key=value,... of the best ok record
    python benchmarks/study_records.py bracket OUT key=value ...    one-value-at-a-time table around BASE
    python benchmarks/study_records.py top     OUT N                the N best ok records of SIGREC
    python benchmarks/study_records.py early   OUT                  how well epoch e's score ranks the points
    python benchmarks/study_records.py around  OUT key=list ...     each key's best value and its neighbours
    python benchmarks/study_records.py curves  OUT MODEL ...        each model's validation-best run, per epoch

Every SIGREC value is read from the run's own ``config.yaml``, so keys that are no grid key of
SIGREC.yaml (``temperature``) are found too.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
from utils.plots import plot_curves, plot_sensitivity  # noqa: E402
from utils.results import write_text_atomic  # noqa: E402

KEYS = ("perturb_eps", "cl_weight", "anchor_weight", "align_weight", "temperature")  # the study's five


def ok_records(out: Path, model: str = "SIGREC") -> list[dict]:
    """The finished (ok) records of ``model`` in ``out/results.jsonl``, each with its ``values``:
    the grid values without the seed, and for SIGREC the study's five keys from the run's config."""
    records = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines() if line.strip()]
    ok = [r for r in records if r.get("status") == "ok" and r.get("model") == model]
    for r in ok:
        r["values"] = {k: v for k, v in r["parameters"].items() if k != "seed"}
        if model == "SIGREC":
            path = next(out.glob(f"runs/SIGREC-*/{r['key']}/config.yaml"), None)
            if path is None:
                raise SystemExit(f"error: the run folder of record {r['key']} (runs/SIGREC-*/{r['key']}/config.yaml) "
                                 f"is missing in {out}: restore it from git or rerun that point")
            config = yaml.safe_load(path.read_text())
            r["values"] = {**r["values"], **{k: config[k] for k in KEYS}}
    return ok


def validation_order(r: dict) -> tuple[float, float]:
    return r["valid"]["recall@20"], r["valid"]["ndcg@20"]


def row(r: dict, first: list[str]) -> str:
    v, t = r["valid"], r["test"]
    return "| " + " | ".join(first + [f"{r['epochs_run']} ({r['best_epoch']})", f"{v['recall@20']:.4f}",
                                      f"{v['ndcg@20']:.4f}", f"{t['recall@20']:.4f}", f"{t['ndcg@20']:.4f}"]) + " |"


METRIC_HEAD = "epochs (best) | valid R@20 | valid N@20 | test R@20 | test N@20 |"


def bracket(out: Path, base: dict[str, float]) -> str:
    """BASE and every record that moves one key of BASE, sorted by key and value; also bracket.md
    and bracket.png (validation and test R@20 against each moved key's value, BASE included)."""
    rows = []
    for r in ok_records(out):
        moved = [k for k in base if float(r["values"][k]) != base[k]]
        if len(moved) <= 1:
            rows.append((moved[0] if moved else "BASE", r["values"][moved[0]] if moved else "", r))
    lines = ["| varied | value | " + METRIC_HEAD, "|---|---|---|---|---|---|---|"]
    lines += [row(r, [key, str(value)]) for key, value, r in sorted(rows, key=lambda x: (x[0], float(x[1] or 0)))]
    text = "\n".join(lines)
    series: dict[str, list[tuple[float, float, float]]] = {}
    for key, value, r in rows:
        if key != "BASE":
            series.setdefault(key, []).append((float(value), r["valid"]["recall@20"], r["test"]["recall@20"]))
    base_runs = [r for key, _, r in rows if key == "BASE"]  # BASE is a point of every panel
    for moved in series:
        series[moved] += [(base[moved], r["valid"]["recall@20"], r["test"]["recall@20"]) for r in base_runs]
    seeds = ", ".join(sorted({str(r["parameters"].get("seed")) for _, _, r in rows}))
    plot_sensitivity("SIGREC", series, out / "bracket.png",
                     others=f"one key at a time, the others at BASE; seed {seeds}; validation selects, test is shown")
    write_text_atomic(out / "bracket.md", "BASE: " + ", ".join(f"{k} {v}" for k, v in base.items()) + "\n\n" + text + "\n")
    return text


def top(out: Path, n: int) -> str:
    """The ``n`` best ok SIGREC records on validation, with their five values; also top.md."""
    ok = sorted(ok_records(out), key=validation_order, reverse=True)
    lines = ["| rank | " + " | ".join(KEYS) + " | " + METRIC_HEAD, "|" + "---|" * (len(KEYS) + 6)]
    lines += [row(r, [str(i + 1)] + [str(r["values"][k]) for k in KEYS]) for i, r in enumerate(ok[:n])]
    text = "\n".join(lines)
    write_text_atomic(out / "top.md", f"The {min(n, len(ok))} best of {len(ok)} finished SIGREC points on validation "
                                f"(every phase's records in this folder)\n\n{text}\n")
    return text


def early(out: Path, epochs: tuple[int, ...] = (10, 20, 30, 40, 60, 80, 100)) -> str:
    """Whether a median pruner may stop at epoch e: over the ok SIGREC records validated at every
    epoch up to the last e, the Spearman rank correlation of each run's best valid R@20 up to e
    (what Optuna's MedianPruner holds against the others' value at e) with the final one, and the
    rank at e of the point that ends best (the pruner keeps the upper half); also early.md."""
    from scipy.stats import spearmanr

    def scores(r: dict) -> list[float]:
        return [h["valid_score"] for h in r.get("history") or [] if h.get("valid_score") is not None]
    runs = [r for r in ok_records(out) if len(scores(r)) > max(epochs)]
    if len(runs) < 3:
        raise SystemExit(f"error: {len(runs)} finished runs in {out} reach epoch {max(epochs)}; 3 are needed")
    final = [r["valid"]["recall@20"] for r in runs]
    winner = max(range(len(runs)), key=lambda i: (final[i], runs[i]["valid"]["ndcg@20"]))
    lines = ["| epoch e | rank correlation with the final valid R@20 | rank at e of the final best |", "|---|---|---|"]
    for e in epochs:
        at = [max(scores(r)[:e + 1]) for r in runs]
        rank = 1 + sum(score > at[winner] for score in at)
        lines.append(f"| {e} | {spearmanr(at, final).correlation:.2f} | {rank} of {len(runs)} |")
    text = "\n".join(lines)
    write_text_atomic(out / "early.md", f"{len(runs)} finished SIGREC runs of this folder that reach epoch {max(epochs)}; "
                                  f"each run's best valid R@20 up to epoch e\n\n{text}\n")
    return text


def curves(out: Path, models: list[str]) -> Path:
    """Loss and validation R@20 per epoch of each model's validation-best ok run in ``out``, each
    labelled with its values (SIGREC's with its five), their seeds in the title; curves.png in ``out``."""
    histories, seeds = {}, set()
    for model in models:
        ok = [r for r in ok_records(out, model) if r.get("history")]
        if not ok:
            raise SystemExit(f"error: no finished {model} run with a history in {out}/results.jsonl")
        best = max(ok, key=validation_order)
        label = ", ".join(f"{k} {v:g}" if isinstance(v, float) else f"{k} {v}" for k, v in best["values"].items())
        histories[f"{model} ({label})" if label else model] = best["history"]
        seeds.add(str(best["parameters"].get("seed")))
    return plot_curves(histories, out / "curves.png",
                       title=f"{out}: each model's validation-best run (seed {', '.join(sorted(seeds))})")


def around(out: Path, lists: dict[str, list[float]]) -> list[str]:
    """``key=[...]`` for every key: the validation-best SIGREC point's value (the nearest in the
    list) and its neighbours in the list, up to one on each side."""
    ok = ok_records(out)
    if not ok:
        raise SystemExit(f"error: no finished SIGREC run in {out}/results.jsonl")
    best = max(ok, key=validation_order)["values"]
    picked = []
    for key, values in lists.items():
        i = min(range(len(values)), key=lambda j: abs(values[j] - float(best[key])))
        picked.append(f"{key}={values[max(0, i - 1):i + 2]}")
    return picked


def main(argv: list[str]) -> None:
    if len(argv) < 2 or argv[0] not in ("best", "bracket", "top", "early", "around", "curves"):
        raise SystemExit("usage: study_records.py best OUT [MODEL] | bracket OUT key=value ... | top OUT N | "
                         "early OUT | around OUT key=list ... | curves OUT MODEL ...")
    what, out = argv[0], Path(argv[1])
    if not (out / "results.jsonl").is_file():
        raise SystemExit(f"error: no records in {out}: run the phase that writes them first")
    if what == "best":
        ok = ok_records(out, argv[2] if len(argv) > 2 else "SIGREC")
        if not ok:
            raise SystemExit(f"error: no finished run in {out}/results.jsonl")
        print(",".join(f"{k}={v}" for k, v in max(ok, key=validation_order)["values"].items()))
    elif what == "bracket":
        print(bracket(out, {k: float(v) for k, v in (pair.split("=", 1) for pair in argv[2:])}))
    elif what == "around":
        pairs = (pair.split("=", 1) for pair in argv[2:])
        print("\n".join(around(out, {k: yaml.safe_load(v) for k, v in pairs})))
    elif what == "curves":
        print(curves(out, argv[2:] or ["SIGREC"]))
    elif what == "top":
        print(top(out, int(argv[2]) if len(argv) > 2 else 10))
    else:
        print(early(out))


if __name__ == "__main__":
    main(sys.argv[1:])
