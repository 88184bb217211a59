"""Comparison: statistics, Holm correction, tables from a hand-written results file, plots, and
an end-to-end run that reuses finished runs."""
from __future__ import annotations

import csv
import io
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from scipy import stats

from conftest import ROOT
from utils.errors import ConfigError, HarnessError
from utils.results import ResultsStore
from utils.statistics import align, build_table, holm, load_per_user, paired_tests, write_table


# --- statistics -----------------------------------------------------------------------------
def test_paired_tests_match_scipy_on_fixed_example():
    a = np.array([0.31, 0.12, 0.50, 0.08, 0.44, 0.27, 0.19, 0.36, 0.05, 0.41])
    b = np.array([0.25, 0.15, 0.41, 0.02, 0.40, 0.30, 0.10, 0.29, 0.06, 0.33])
    t_p, w_p = paired_tests(a, b)
    assert t_p == pytest.approx(stats.ttest_rel(a, b).pvalue)
    assert w_p == pytest.approx(stats.wilcoxon(a, b).pvalue)
    # The t-test by hand: t = mean(d) / (sd(d) / sqrt(n)), two-sided with n - 1 df.
    d = a - b
    t = d.mean() / (d.std(ddof=1) / math.sqrt(d.size))
    assert t_p == pytest.approx(2 * stats.t.sf(abs(t), d.size - 1))
    assert 0.0 < t_p < 0.1


def test_identical_inputs_give_p_one():
    a = np.linspace(0, 1, 50)
    assert paired_tests(a, a.copy()) == (1.0, 1.0)


def test_constant_shift_is_significant_and_single_pair_undefined():
    a = np.arange(30) / 4  # exact in binary: every difference is exactly 0.5
    t_p, w_p = paired_tests(a + 0.5, a)
    assert t_p == 0.0 and w_p < 1e-5
    t_p, w_p = paired_tests(np.array([1.0]), np.array([0.0]))
    assert math.isnan(t_p) and math.isnan(w_p)


def test_paired_tests_reject_unequal_lengths():
    with pytest.raises(HarnessError, match="equal-length"):
        paired_tests(np.zeros(3), np.zeros(4))


def test_clearly_better_model_is_significant():
    rng = np.random.default_rng(0)
    base = rng.uniform(0, 0.5, 400)
    better = base + rng.uniform(0.01, 0.05, 400)
    t_p, w_p = paired_tests(better, base)
    assert t_p < 0.01 and w_p < 0.01
    # and the effect has a direction: better - base is positive
    assert stats.ttest_rel(better, base).statistic > 0


def test_holm_known_example():
    # sorted p: 0.01 (x3 = 0.03), 0.03 (x2 = 0.06), 0.04 (x1 = 0.04 -> raised to 0.06, monotone)
    assert holm([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])
    assert holm([0.5, 0.6]) == pytest.approx([1.0, 1.0])  # capped at 1
    out = holm([0.02, math.nan, 0.01])  # NaN is neither counted nor changed
    assert out[0] == pytest.approx(0.02) and math.isnan(out[1]) and out[2] == pytest.approx(0.02)
    assert holm([0.2]) == [0.2]


# --- per-user alignment -----------------------------------------------------------------------
def _npz(path: Path, users, **metrics) -> str:
    np.savez(path, users=np.asarray(users), **{k: np.asarray(v, dtype=float) for k, v in metrics.items()})
    return str(path)


def test_per_user_values_are_averaged_over_seeds_and_aligned_by_id(tmp_path):
    p1 = _npz(tmp_path / "s1.npz", [3, 1, 2], **{"recall@20": [0.3, 0.1, 0.2]})
    p2 = _npz(tmp_path / "s2.npz", [1, 2, 3, 4], **{"recall@20": [0.5, 0.4, 0.1, 0.9]})
    users, values = load_per_user([p1, p2], "recall@20")
    assert users.tolist() == [1, 2, 3]  # user 4 is missing from seed 1
    assert values == pytest.approx([0.3, 0.3, 0.2])
    a, b = align((users, values), (np.array([3, 2]), np.array([7.0, 8.0])))
    assert a == pytest.approx([0.3, 0.2]) and b == pytest.approx([8.0, 7.0])
    with pytest.raises(HarnessError, match="ndcg@20"):
        load_per_user([p1], "ndcg@20")


# --- the table from a hand-written results file ---------------------------------------------
METRICS = ["recall@10", "recall@20", "ndcg@10", "ndcg@20"]


def _write_results(tmp_path: Path) -> Path:
    """A results file with A (good, 2 seeds), B (worse, 2 seeds), C (close to A, 1 seed)."""
    rng = np.random.default_rng(1)
    users = np.arange(200)
    store = ResultsStore(tmp_path / "results.jsonl")
    plan = {"A": [(999, 0.30), (1, 0.32)], "B": [(999, 0.20), (1, 0.22)], "C": [(999, 0.29)]}
    for model, runs in plan.items():
        for seed, level in runs:
            per_user = {m: np.clip(rng.normal(level, 0.05, users.size), 0, 1) for m in METRICS}
            path = tmp_path / f"{model}-{seed}.npz"
            np.savez(path, users=rng.permutation(users), **per_user)
            # the npz's users are shuffled: record the means of the values as stored
            store.append({"model": model, "dataset": "toy", "key": f"{model}{seed}", "status": "ok",
                          "seed": seed, "parameters": {"seed": seed}, "valid": {},
                          "test": {m: float(v.mean()) for m, v in per_user.items()},
                          "per_user": str(path)})
    return store.path


def test_table_numbers_from_results_file(tmp_path):
    store = ResultsStore(_write_results(tmp_path))
    runs = {m: store.select(model=m, status="ok") for m in ["A", "B", "C"]}
    table = build_table(runs, "toy")
    tests = {(t.other, t.metric): t for t in table.tests}
    for m in METRICS:
        a = [r["test"][m] for r in runs["A"]]
        b = [r["test"][m] for r in runs["B"]]
        assert table.means["A"][m] == pytest.approx(np.mean(a))
        assert table.means["B"][m] == pytest.approx(np.mean(b))
        assert table.stds["A"][m] == pytest.approx(np.std(a, ddof=1))
        assert table.stds["C"][m] == 0.0  # a single seed
        best_other = max(table.means["B"][m], table.means["C"][m])
        assert table.improvement[m] == pytest.approx((table.means["A"][m] - best_other) / best_other * 100)
        assert table.best_model(m) == "A" and table.improvement[m] > 0
        # the tests against scipy on per-user values averaged over seeds, aligned by user ID
        ua, va = load_per_user([r["per_user"] for r in runs["A"]], m)
        ub, vb = load_per_user([r["per_user"] for r in runs["B"]], m)
        assert ua.tolist() == ub.tolist() == list(range(200))
        raw_t = stats.ttest_rel(va, vb).pvalue
        assert tests[("B", m)].t_p == pytest.approx(raw_t)
        assert tests[("B", m)].delta == pytest.approx((va - vb).mean()) and tests[("B", m)].delta > 0
        assert tests[("B", m)].t_p_holm == pytest.approx(holm([raw_t, tests[("C", m)].t_p])[0])
        assert tests[("B", m)].t_p_holm < 0.01 and tests[("B", m)].n_users == 200

    md = table.to_markdown()
    assert "| A | **" in md and "Holm" in md and "| Improv. |" in md
    b_row = next(line for line in md.splitlines() if line.startswith("| B |"))
    assert "†" in b_row and "‡" in b_row and "**" not in b_row
    assert f"{table.means['B']['recall@20']:.4f} ± {table.stds['B']['recall@20']:.4f}" in b_row

    paths = write_table(table, tmp_path / "out")
    rows = list(csv.DictReader(io.StringIO(paths["csv"].read_text())))
    score = {(r["model"], r["metric"]): r for r in rows if r["kind"] == "score"}
    assert float(score[("A", "ndcg@20")]["mean"]) == table.means["A"]["ndcg@20"]
    assert score[("A", "ndcg@20")]["best"] == "1" and score[("B", "ndcg@20")]["best"] == "0"
    assert len([r for r in rows if r["kind"] == "test"]) == 2 * len(METRICS)
    tex = paths["tex"].read_text()
    assert r"\textbf{" in tex and "Holm" in tex and r"\begin{tabular}{lcccc}" in tex
    assert "±" not in tex and "_" not in tex.replace(r"\_", "")


def test_table_needs_runs_and_metrics():
    with pytest.raises(HarnessError, match="no finished run"):
        build_table({"A": []})
    with pytest.raises(HarnessError, match="topk"):
        build_table({"A": [{"test": {"recall@5": 0.1}}]})
    single = build_table({"A": [{"test": {m: 0.1 for m in METRICS}}]})
    assert single.tests == [] and single.improvement == {} and "Improv." not in single.to_markdown()
    no_users = build_table({"A": [{"test": {m: 0.2 for m in METRICS}}], "B": [{"test": {m: 0.1 for m in METRICS}}]})
    assert no_users.tests == [] and no_users.improvement["recall@20"] == pytest.approx(100.0)
    assert "No significance tests" in no_users.caption()


# --- the selection seed is not averaged ----------------------------------------------------
def _model_runs(tmp_path: Path, model: str, levels: dict[int, float], include: bool = False):
    """ModelRuns of ``model`` with one record per seed (999 = selection); per-user values around ``levels``."""
    from utils.comparison import ModelRuns

    rng = np.random.default_rng(abs(hash(model)) % 1000)
    users, recs = np.arange(100), []
    for seed, level in levels.items():
        per_user = {m: np.clip(rng.normal(level, 0.02, users.size), 0, 1) for m in METRICS}
        path = tmp_path / f"{model}-{seed}.npz"
        np.savez(path, users=users, **per_user)
        recs.append({"model": model, "key": f"{model}{seed}", "status": "ok", "seed": seed,
                     "parameters": {"seed": seed, "reg_weight": 0.1}, "valid": {"recall@20": level},
                     "test": {m: float(v.mean()) for m, v in per_user.items()}, "per_user": str(path),
                     "history": [{"epoch": 0, "loss": float(seed), "valid_score": level}]})
    selection = next(r for r in recs if r["seed"] == 999)
    return ModelRuns(model, {"reg_weight": 0.1, "seed": 999}, recs, [], "Recall@20", [], include, selection)


def test_selection_seed_is_left_out_of_means_stds_and_tests(tmp_path):
    from utils.comparison import comparison_table

    # the selection runs (seed 999) score far higher than the fresh ones: a leak would show at once
    a = _model_runs(tmp_path, "A", {999: 0.60, 1: 0.30, 2: 0.34})
    b = _model_runs(tmp_path, "B", {999: 0.20, 1: 0.31, 2: 0.33})
    table = comparison_table([a, b], "toy")
    assert table.seeds == {"A": [1, 2], "B": [1, 2]} and table.n_seeds == {"A": 2, "B": 2}
    for m in METRICS:
        fresh = [r["test"][m] for r in a.seed_runs if r["seed"] != 999]
        assert table.means["A"][m] == pytest.approx(np.mean(fresh))
        assert table.stds["A"][m] == pytest.approx(np.std(fresh, ddof=1))
        assert table.means["A"][m] < 0.4  # with seed 999 it would be about 0.41
        # the per-user tests average the fresh seeds only
        ua, va = load_per_user([r["per_user"] for r in a.seed_runs[1:]], m)
        ub, vb = load_per_user([r["per_user"] for r in b.seed_runs[1:]], m)
        test = table.test("B", m)
        assert test.delta == pytest.approx((va - vb).mean()) and abs(test.delta) < 0.05
        assert test.t_p == pytest.approx(stats.ttest_rel(va, vb).pvalue)

    # --include-selection-seed: every seed, as before
    a.include_selection = b.include_selection = True
    every = comparison_table([a, b], "toy")
    assert every.seeds == {"A": [999, 1, 2], "B": [999, 1, 2]}
    assert every.means["A"]["recall@20"] == pytest.approx(np.mean([r["test"]["recall@20"] for r in a.seed_runs]))
    assert every.test("B", "recall@20").delta > 0.1  # the selection runs dominate the difference


def test_caption_says_which_seeds_are_averaged(tmp_path):
    from utils.comparison import comparison_table

    a = _model_runs(tmp_path, "A", {999: 0.6, 1: 0.30, 2: 0.32, 3: 0.31})
    b = _model_runs(tmp_path, "B", {999: 0.2, 1: 0.28, 2: 0.29, 3: 0.27})
    table = comparison_table([a, b], "toy")
    phrase = "3 fresh seeds (1, 2, 3); the selection seed 999 is excluded"
    assert phrase in table.caption() and table.caption().startswith("Test metrics on toy")
    assert "Bold: best mean per column" in table.caption() and "Holm" in table.caption()
    paths = write_table(table, tmp_path / "out")
    assert phrase in paths["md"].read_text()
    assert phrase in paths["tex"].read_text()
    rows = list(csv.DictReader(io.StringIO(paths["csv"].read_text())))
    assert [r["note"] for r in rows if r["kind"] == "caption"] == [table.caption()]
    seeds = {r["model"]: r for r in rows if r["kind"] == "seeds"}
    assert seeds["A"]["n_seeds"] == "3" and seeds["A"]["note"] == "1,2,3 (selection seed 999 excluded)"
    assert all(r["n_seeds"] == "3" for r in rows if r["kind"] == "score")

    a.include_selection = b.include_selection = True
    every = comparison_table([a, b], "toy")
    assert "4 seeds (999, 1, 2, 3), including the selection seed 999" in every.caption()
    a.seed_runs, b.seed_runs = a.seed_runs[1:], b.seed_runs[1:]  # --seeds 1,2,3 --include-selection-seed
    assert "3 seeds (1, 2, 3); the selection seed 999 is not among them" in comparison_table([a, b], "toy").caption()
    b.seed_runs = b.seed_runs[:2]  # a failed seed: the caption lists each model's seeds
    assert "2/3 seeds (A: 1, 2, 3; B: 1, 2); the selection seed 999 is not among them" in comparison_table([a, b], "toy").caption()


def test_report_plots_use_the_table_s_seeds(tmp_path, monkeypatch):
    import utils.comparison as comparison

    seen = {}
    real_curves, real_bars = comparison.plot_curves, comparison.plot_bars
    monkeypatch.setattr(comparison, "plot_curves",
                        lambda h, path, *a, **k: seen.setdefault("curves", h) and real_curves(h, path, *a, **k))
    monkeypatch.setattr(comparison, "plot_bars",
                        lambda t, path, **k: seen.setdefault("bars", (t, k)) and real_bars(t, path, **k))
    runs = [_model_runs(tmp_path, "A", {999: 0.6, 1: 0.30, 2: 0.32}), _model_runs(tmp_path, "B", {999: 0.2, 1: 0.28})]
    paths = comparison.report(runs, "toy", tmp_path / "cmp")
    table, kwargs = seen["bars"]
    assert table.seeds == {"A": [1, 2], "B": [1]} and table.means["A"]["recall@20"] < 0.4
    assert "the selection seed 999 is excluded" in kwargs["seeds"]
    assert [h[0]["loss"] for h in seen["curves"].values()] == [1.0, 1.0]  # seed 1's history, not 999's
    summary = json.loads(paths["json"].read_text())
    assert summary["models"]["A"]["seeds"] == [1, 2] and summary["models"]["A"]["keys"] == ["A1", "A2"]
    assert summary["models"]["A"]["selection"] == {"seed": 999, "in_table": False, "key": "A999",
                                                   "test": runs[0].selection_run["test"]}
    assert summary["caption"] == table.caption() and not summary["selection_seed_included"]
    _png_ok(paths["bars"])


# --- plots ----------------------------------------------------------------------------------
def _png_ok(path: Path, min_kb: int = 10) -> None:
    import matplotlib.image as mpimg

    assert path.exists() and path.stat().st_size > min_kb * 1024
    pixels = mpimg.imread(path)[..., :3].reshape(-1, 3)
    assert len(np.unique(pixels, axis=0)) > 1


def test_plots_are_written(tmp_path):
    from utils.plots import plot_bars, plot_curves, plot_sensitivity, sensitivity_series

    history = [{"epoch": e, "loss": 50 / (e + 1), "train_seconds": 0.1, "valid_score": 0.1 + 0.01 * e}
               for e in range(12)]
    _png_ok(plot_curves({"A": history, "B": history[:6]}, tmp_path / "curves.png"))

    points = []
    for layers in (1, 2, 3):
        for reg in (1e-1, 1e-3, 1e-5):
            rec = {"valid": {"recall@20": 0.2 - 0.01 * layers}, "test": {"recall@20": 0.19 - reg}}
            points.append(({"seed": 999, "n_layers": layers, "reg_weight": reg}, rec))
    best = {"seed": 999, "n_layers": 1, "reg_weight": 1e-5}
    series = sensitivity_series(points, best)
    assert set(series) == {"n_layers", "reg_weight"}
    assert [v for v, _, _ in series["n_layers"]] == [1, 2, 3]
    _png_ok(plot_sensitivity("A", series, tmp_path / "sens.png"))
    assert plot_sensitivity("A", {}, tmp_path / "none.png") is None and not (tmp_path / "none.png").exists()
    # zero among values that span decades (symlog axis), and non-numeric values (categorical axis)
    mixed = {"reg_weight": [(0.0, 0.2, 0.19), (1e-5, 0.21, 0.2), (1e-3, 0.22, 0.2)],
             "dims": [([64, 64], 0.2, 0.19), ([128], 0.21, 0.2)]}
    _png_ok(plot_sensitivity("B", mixed, tmp_path / "mixed.png"))

    store = ResultsStore(_write_results(tmp_path))
    table = build_table({m: store.select(model=m) for m in ["A", "B", "C"]}, "toy")
    _png_ok(plot_bars(table, tmp_path / "bars.png"))
    assert not [f.name for f in tmp_path.rglob("*") if ".tmp" in f.name]  # written atomically


@pytest.mark.parametrize("n", [3, 12, 25])
def test_every_model_gets_its_own_colour(n):
    # matplotlib's default cycle repeats after 10: a 12-model comparison showed SMORE in SIGREC's blue
    from utils.plots import model_colors

    colors = model_colors([f"M{i}" for i in range(n)])
    assert len(colors) == n and len(set(colors.values())) == n


# --- orchestration --------------------------------------------------------------------------
def test_overrides_are_split_per_model():
    from utils.comparison import split_overrides

    shares = split_overrides(["BPR", "LightGCN"], "ml100k", {"n_layers": 1, "reg_weight": 0.001})
    assert shares == {"BPR": {"reg_weight": 0.001}, "LightGCN": {"n_layers": 1, "reg_weight": 0.001}}
    with pytest.raises(ConfigError, match="n_layerz.*n_layers"):
        split_overrides(["BPR", "LightGCN"], "ml100k", {"n_layerz": 1})


def _main(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, str(ROOT / "src" / "main.py"), *args], capture_output=True,
                          text=True, env=env, timeout=300)


def test_bad_comparison_input_is_a_clear_error(tmp_path):
    from main import run

    base = ["-d", "ml100k", "--output", str(tmp_path), "--device", "cpu", "--quiet"]
    with pytest.raises(ConfigError, match="twice"):
        run(["-m", "BPR,BPR", *base])
    with pytest.raises(ConfigError, match="distinct"):
        run(["-m", "BPR,LightGCN", "--seeds", "1,1", *base])
    with pytest.raises(ConfigError, match="did you mean n_layers"):
        run(["-m", "BPR,LightGCN", "--n_layerz", "1", *base])
    # only the selection seed: nothing fresh to average, and nothing is trained
    with pytest.raises(ConfigError, match="no fresh seed.*selection seed 999.*--include-selection-seed"):
        run(["-m", "BPR,LightGCN", "--seeds", "999", *base])
    with pytest.raises(ConfigError, match="no fresh seed"):
        run(["-m", "BPR,LightGCN", *base])          # the config's seed list is [999]
    with pytest.raises(ConfigError, match="selection seed 5"):
        run(["-m", "BPR,LightGCN", "--seed", "5", "--seeds", "5", *base])
    with pytest.raises(ConfigError, match="applies to a comparison"):
        run(["-m", "BPR", "--include-selection-seed", *base])
    assert not (tmp_path / "results.jsonl").exists()
    assert not (tmp_path / "logs").exists()


def test_only_the_selection_seed_is_one_clear_line(tmp_path):
    out = _main("-m", "BPR,LightGCN", "-d", "ml100k", "--seeds", "999", "--output", str(tmp_path), "--device", "cpu")
    assert out.returncode != 0 and "Traceback" not in out.stderr
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: BPR: no fresh seed") and "--include-selection-seed" in lines[0]


def test_selection_seed_flag_is_parsed():
    from main import build_parser

    assert build_parser().parse_args(["--include-selection-seed"]).include_selection_seed is True
    assert build_parser().parse_args([]).include_selection_seed is False


def test_seed_plan_picks_the_config_s_first_seed():
    from utils.comparison import seed_plan

    assert seed_plan("A", [999], [999, 1, 2], False) == (999, [999, 1, 2], [1, 2])
    assert seed_plan("A", [999], [999, 1, 2], True) == (999, [999, 1, 2], [999, 1, 2])
    assert seed_plan("A", [999], [1, 2], False) == (999, [1, 2], [1, 2])
    assert seed_plan("A", [5, 6, 7], None, False) == (5, [5, 6, 7], [6, 7])  # no --seeds: the config's list
    assert seed_plan("A", [999], None, True) == (999, [999], [999])
    with pytest.raises(ConfigError, match="A: no fresh seed.*--seeds 999,1,2,3.*--include-selection-seed"):
        seed_plan("A", [999], None, False)


@pytest.mark.slow
def test_end_to_end_comparison_reuses_finished_runs(tmp_path):
    common = ["-m", "BPR,LightGCN", "-d", "ml100k", "--epochs", "3", "--output", str(tmp_path), "--quiet",
              "--device", "cpu", "--reg_weight", "0.001", "--n_layers", "1"]
    first = _main(*common, "--seeds", "999,1")
    assert first.returncode == 0, first.stderr[-2000:]
    results = tmp_path / "results.jsonl"
    assert len(results.read_text().splitlines()) == 4  # 2 models x 2 seeds (seed 999 is the grid point)
    folder = tmp_path / "comparison" / "ml100k-BPR_LightGCN"
    for name in ["comparison.md", "comparison.csv", "comparison.tex", "training_curves.png", "comparison_bars.png"]:
        assert (folder / name).stat().st_size > 0
    assert "| LightGCN |" in first.stdout and "Holm" in first.stdout
    assert "1 fresh seed (1); the selection seed 999 is excluded" in (folder / "comparison.md").read_text()

    second = _main(*common, "--seeds", "999,1,2")
    assert second.returncode == 0, second.stderr[-2000:]
    lines = [json.loads(x) for x in results.read_text().splitlines()]
    assert len(lines) == 6  # only seed 2 of each model was trained
    assert sorted((r["model"], r["seed"]) for r in lines[4:]) == [("BPR", 2), ("LightGCN", 2)]
    summary = json.loads((folder / "comparison.json").read_text())
    assert summary["models"]["BPR"]["seeds"] == [1, 2]  # the selection seed 999 is not averaged
    assert summary["models"]["BPR"]["selection"]["seed"] == 999 and not summary["models"]["BPR"]["selection"]["in_table"]
    assert "2 fresh seeds (1, 2); the selection seed 999 is excluded" in (folder / "comparison.md").read_text()
    fresh = [r["test"]["recall@20"] for r in lines if r["model"] == "BPR" and r["seed"] in (1, 2)]
    assert summary["table"]["means"]["BPR"]["recall@20"] == pytest.approx(np.mean(fresh))

    third = _main(*common, "--seeds", "999,1,2", "--include-selection-seed")  # today's table, nothing trained
    assert third.returncode == 0, third.stderr[-2000:]
    assert len(results.read_text().splitlines()) == 6
    summary = json.loads((folder / "comparison.json").read_text())
    assert summary["models"]["BPR"]["seeds"] == [999, 1, 2] and summary["selection_seed_included"]
    every = [r["test"]["recall@20"] for r in lines if r["model"] == "BPR"]
    assert summary["table"]["means"]["BPR"]["recall@20"] == pytest.approx(np.mean(every))
    assert "3 seeds (999, 1, 2), including the selection seed 999" in (folder / "comparison.md").read_text()


def test_per_user_file_is_found_in_a_moved_output_folder(tmp_path):
    from utils.comparison import _finished_ok
    from utils.configurator import Config
    from utils.quick_start import run_dir
    from utils.results import point_key

    cfg = Config("BPR", "ml100k").point({"seed": 999, "reg_weight": 0.1})
    key = point_key(cfg.final_config_dict)
    store = ResultsStore(tmp_path / "results.jsonl")
    rec = {"model": "BPR", "dataset": "ml100k", "key": key, "status": "ok", "per_user": "/gone/per_user_test.npz"}
    store.append(rec)
    moved = run_dir(tmp_path, rec, key) / "per_user_test.npz"
    moved.parent.mkdir(parents=True)
    _npz(moved, [1], **{"recall@20": [0.5]})
    assert _finished_ok(store, cfg, tmp_path)["per_user"] == str(moved)
    store.append({**rec, "status": "failed"})  # the latest record of a key wins
    assert _finished_ok(store, cfg, tmp_path) is None


def test_overrides_go_to_the_models_that_know_them():
    from utils.comparison import split_overrides

    shares = split_overrides(["SIGREC", "LGMRec", "BPR"], "ml100k",
                             {"cl_weight": 0.5, "SIGREC.cl_weight": 0.01, "epochs": 3})
    assert shares["SIGREC"]["cl_weight"] == 0.01          # the scoped value wins for its model
    assert shares["LGMRec"]["cl_weight"] == 0.5
    assert "cl_weight" not in shares["BPR"] and shares["BPR"]["epochs"] == 3
    with pytest.raises(ConfigError, match="not compared here"):
        split_overrides(["BPR"], "ml100k", {"SIGREC.cl_weight": 0.01})
    with pytest.raises(ConfigError, match="did you mean"):
        split_overrides(["BPR"], "ml100k", {"BPR.reg_wieght": 0.01})


def test_curves_number_epochs_from_zero_as_the_log_does():
    from utils.plots import curve_points

    history = [{"epoch": 0, "loss": 2.0, "valid_score": 0.1}, {"epoch": 1, "loss": 1.0}]
    assert curve_points(history) == ([0, 1], [2.0, 1.0], [(0, 0.1)])
