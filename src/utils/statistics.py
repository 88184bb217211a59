"""Statistics of a model comparison and the tables that report it.

The first model is compared with every other one on per-user test metrics (each user's value
averaged over seeds, users aligned by ID) with a paired t-test and a Wilcoxon signed-rank test;
the p-values of each test and metric are Holm-corrected over the comparisons.
"""
from __future__ import annotations

import csv
import io
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
from scipy import stats

from utils.errors import HarnessError
from utils.results import write_text_atomic

# The table's columns: metric key in the records -> short header.
TABLE_METRICS = {"recall@10": "R@10", "recall@20": "R@20", "ndcg@10": "N@10", "ndcg@20": "N@20"}
ALPHA = 0.05


# --- tests ----------------------------------------------------------------------------------
def paired_tests(a: np.ndarray, b: np.ndarray) -> tuple[float, float]:
    """Two-sided p-values (paired t-test, Wilcoxon signed-rank) of ``a`` against ``b``.

    Identical inputs give p = 1 for both; a test that is undefined otherwise gives NaN."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.shape != b.shape or a.ndim != 1:
        raise HarnessError(f"paired tests need two equal-length vectors, got shapes {a.shape} and {b.shape}")
    diff = a - b
    if diff.size == 0 or np.all(diff == 0):
        return 1.0, 1.0
    if diff.size < 2:
        return math.nan, math.nan
    if np.all(diff == diff[0]):
        t_p = 0.0  # a constant non-zero shift: the t statistic is infinite
    else:
        t_p = float(stats.ttest_rel(a, b).pvalue)
    try:
        w_p = float(stats.wilcoxon(a, b).pvalue)
    except ValueError:
        w_p = math.nan
    return t_p, w_p


def holm(pvalues: Sequence[float]) -> list[float]:
    """Holm's step-down adjustment; NaN entries stay NaN and are not counted."""
    p = np.asarray(pvalues, dtype=np.float64)
    out = np.full(p.shape, np.nan)
    valid = np.flatnonzero(~np.isnan(p))
    m = valid.size
    running = 0.0
    for rank, idx in enumerate(valid[np.argsort(p[valid], kind="stable")]):
        running = max(running, min(1.0, (m - rank) * p[idx]))
        out[idx] = running
    return out.tolist()


# --- per-user values ------------------------------------------------------------------------
def load_per_user(paths: Sequence[str | Path], metric: str) -> tuple[np.ndarray, np.ndarray]:
    """(users, values): one metric per user averaged over the given seeds' npz files.

    Only users present in every file are kept, sorted by ID."""
    users: np.ndarray | None = None
    columns: list[tuple[np.ndarray, np.ndarray]] = []
    for path in paths:
        try:
            with np.load(path) as npz:
                if metric not in npz.files:
                    raise HarnessError(f"{path} has no per-user '{metric}' (it has {', '.join(npz.files)})")
                u, v = np.asarray(npz["users"]), np.asarray(npz[metric], dtype=np.float64)
        except (OSError, ValueError) as exc:
            raise HarnessError(f"cannot read per-user metrics {path}: {exc}") from None
        columns.append((u, v))
        users = u if users is None else np.intersect1d(users, u)
    if users is None:
        return np.zeros(0, dtype=np.int64), np.zeros(0)
    users = np.unique(users)
    total = np.zeros(users.size)
    for u, v in columns:
        order = np.argsort(u, kind="stable")
        pos = np.searchsorted(u[order], users)
        total += v[order][pos]
    return users, total / len(columns)


def align(a: tuple[np.ndarray, np.ndarray], b: tuple[np.ndarray, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """The values of two (users, values) pairs on their common users, in the same order."""
    common, ia, ib = np.intersect1d(a[0], b[0], return_indices=True)
    return a[1][ia], b[1][ib]


# --- the table ------------------------------------------------------------------------------
@dataclass
class PairedTest:
    """One comparison of the first model with another on one metric."""
    other: str
    metric: str
    n_users: int
    delta: float          # mean per-user difference, first minus other
    t_p: float
    w_p: float
    t_p_holm: float = math.nan
    w_p_holm: float = math.nan


@dataclass
class ComparisonTable:
    models: list[str]
    metrics: list[str]                        # record keys, e.g. recall@20
    means: dict[str, dict[str, float]]        # model -> metric -> mean over seeds
    stds: dict[str, dict[str, float]]
    n_seeds: dict[str, int]
    dataset: str = ""
    improvement: dict[str, float] = field(default_factory=dict)  # metric -> % of first over best other
    tests: list[PairedTest] = field(default_factory=list)

    # helpers
    def best_model(self, metric: str) -> str:
        return max(self.models, key=lambda m: self.means[m][metric])

    def test(self, other: str, metric: str) -> PairedTest | None:
        return next((t for t in self.tests if t.other == other and t.metric == metric), None)

    def marks(self, model: str, metric: str) -> str:
        """``†`` / ``‡``: the first model differs significantly (Holm) by t-test / Wilcoxon."""
        row = self.test(model, metric)
        if row is None:
            return ""
        return ("†" if row.t_p_holm < ALPHA else "") + ("‡" if row.w_p_holm < ALPHA else "")

    def caption(self) -> str:
        seeds = sorted(set(self.n_seeds.values()))
        seed_text = "/".join(str(s) for s in seeds)
        text = (f"Test metrics on {self.dataset or 'the dataset'}: mean ± std over {seed_text} seed(s) of each "
                f"model's best grid point (selected on validation). Bold: best mean per column.")
        if len(self.models) > 1:
            text += f" Improv.: relative improvement of {self.models[0]} over the best other model."
        if len(self.models) > 1 and not self.tests:
            text += " No significance tests: some runs have no per-user test metrics."
        elif self.tests:
            first, k = self.models[0], len(self.models) - 1
            users = sorted({t.n_users for t in self.tests})
            text += (f" † / ‡: {first} differs from that model by a two-sided paired t-test / Wilcoxon"
                     f" signed-rank test on per-user metrics (each user's value averaged over seeds,"
                     f" {'/'.join(map(str, users)) or 0} users aligned by ID), p < {ALPHA} after Holm"
                     f" correction for the {k} comparison(s) per metric and test.")
        return text

    def _cell(self, model: str, metric: str, bold: tuple[str, str]) -> str:
        text = f"{self.means[model][metric]:.4f} ± {self.stds[model][metric]:.4f}"
        if model == self.best_model(metric):
            text = f"{bold[0]}{text}{bold[1]}"
        return text + self.marks(model, metric)

    def to_markdown(self) -> str:
        heads = [TABLE_METRICS.get(m, m) for m in self.metrics]
        lines = ["| Model | " + " | ".join(heads) + " |", "|---" * (len(heads) + 1) + "|"]
        for model in self.models:
            lines.append(f"| {model} | " + " | ".join(self._cell(model, m, ("**", "**")) for m in self.metrics) + " |")
        if self.improvement:
            lines.append("| Improv. | " + " | ".join(_pct(self.improvement[m]) for m in self.metrics) + " |")
        out = "\n".join(lines) + "\n\n" + self.caption() + "\n"
        if self.tests:
            out += "\n| Comparison | Metric | Users | Δ mean | t-test p | t-test p (Holm) | Wilcoxon p | Wilcoxon p (Holm) |\n"
            out += "|---|---|---|---|---|---|---|---|\n"
            for t in self.tests:
                out += (f"| {self.models[0]} vs {t.other} | {TABLE_METRICS.get(t.metric, t.metric)} | {t.n_users} "
                        f"| {t.delta:+.4f} | {_p(t.t_p)} | {_p(t.t_p_holm)} | {_p(t.w_p)} | {_p(t.w_p_holm)} |\n")
        return out

    def to_csv(self) -> str:
        """One row per model and metric, plus one row per test (numbers unrounded)."""
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        w.writerow(["kind", "model", "metric", "mean", "std", "n_seeds", "best", "improvement_pct",
                    "other", "n_users", "delta", "t_p", "t_p_holm", "w_p", "w_p_holm"])
        for model in self.models:
            for m in self.metrics:
                imp = self.improvement.get(m, "") if model == self.models[0] else ""
                w.writerow(["score", model, m, repr(self.means[model][m]), repr(self.stds[model][m]),
                            self.n_seeds[model], int(model == self.best_model(m)), imp] + [""] * 7)
        for t in self.tests:
            w.writerow(["test", self.models[0], t.metric] + [""] * 5 +
                       [t.other, t.n_users, repr(t.delta), repr(t.t_p), repr(t.t_p_holm), repr(t.w_p), repr(t.w_p_holm)])
        return buf.getvalue()

    def to_latex(self) -> str:
        heads = [TABLE_METRICS.get(m, m) for m in self.metrics]
        lines = [r"\begin{table}[t]", r"\centering",
                 r"\caption{" + _tex(self.caption()) + "}",
                 r"\begin{tabular}{l" + "c" * len(heads) + "}", r"\toprule",
                 "Model & " + " & ".join(_tex(h) for h in heads) + r" \\", r"\midrule"]
        for model in self.models:
            cells = []
            for m in self.metrics:
                text = f"{self.means[model][m]:.4f} $\\pm$ {self.stds[model][m]:.4f}"
                if model == self.best_model(m):
                    text = r"\textbf{" + text + "}"
                marks = self.marks(model, m).replace("†", r"\dagger").replace("‡", r"\ddagger")
                cells.append(text + (f"$^{{{marks}}}$" if marks else ""))
            lines.append(_tex(model) + " & " + " & ".join(cells) + r" \\")
        if self.improvement:
            lines += [r"\midrule", r"Improv. & " + " & ".join(_tex(_pct(self.improvement[m])) for m in self.metrics) + r" \\"]
        lines += [r"\bottomrule", r"\end{tabular}", r"\end{table}"]
        return "\n".join(lines) + "\n"


def _p(value: float) -> str:
    if math.isnan(value):
        return "n/a"
    return f"{value:.2e}" if value < 1e-3 else f"{value:.4f}"


def _pct(value: float) -> str:
    return "n/a" if math.isnan(value) else f"{value:+.2f}%"


def _tex(text: str) -> str:
    for a, b in (("\\", r"\textbackslash{}"), ("&", r"\&"), ("%", r"\%"), ("_", r"\_"), ("#", r"\#"),
                 ("<", r"$<$"), ("±", r"$\pm$"), ("Δ", r"$\Delta$"), ("†", r"$^{\dagger}$"), ("‡", r"$^{\ddagger}$")):
        text = text.replace(a, b)
    return text


def build_table(runs: dict[str, list[dict]], dataset: str = "") -> ComparisonTable:
    """The comparison of ``runs`` (model -> its ok records, one per seed; first model first).

    Records need ``test`` (mean metrics) and, for the tests, ``per_user`` (an npz path)."""
    models = list(runs)
    if not models:
        raise HarnessError("nothing to compare: no model has a finished run")
    for model in models:
        if not runs[model]:
            raise HarnessError(f"{model} has no finished run to compare")
    metrics = [m for m in TABLE_METRICS if all(m in r.get("test", {}) for recs in runs.values() for r in recs)]
    if not metrics:
        raise HarnessError(f"the runs report none of {', '.join(TABLE_METRICS)}; keep 10 and 20 in topk "
                           f"and Recall, NDCG in metrics")
    means, stds = {}, {}
    for model, recs in runs.items():
        values = {m: np.array([r["test"][m] for r in recs], dtype=np.float64) for m in metrics}
        means[model] = {m: float(v.mean()) for m, v in values.items()}
        stds[model] = {m: float(v.std(ddof=1)) if v.size > 1 else 0.0 for m, v in values.items()}
    table = ComparisonTable(models, metrics, means, stds, {m: len(r) for m, r in runs.items()}, dataset)
    if len(models) < 2:
        return table
    first, others = models[0], models[1:]
    for m in metrics:
        best_other = max(means[o][m] for o in others)
        table.improvement[m] = (means[first][m] - best_other) / best_other * 100 if best_other > 0 else math.nan
    has_users = all(r.get("per_user") for recs in runs.values() for r in recs)
    if not has_users:
        return table
    for m in metrics:
        base = load_per_user([r["per_user"] for r in runs[first]], m)
        rows = []
        for other in others:
            a, b = align(base, load_per_user([r["per_user"] for r in runs[other]], m))
            t_p, w_p = paired_tests(a, b)
            rows.append(PairedTest(other, m, int(a.size), float((a - b).mean()) if a.size else math.nan, t_p, w_p))
        for row, tp, wp in zip(rows, holm([r.t_p for r in rows]), holm([r.w_p for r in rows])):
            row.t_p_holm, row.w_p_holm = tp, wp
        table.tests.extend(rows)
    return table


def write_table(table: ComparisonTable, folder: Path) -> dict[str, Path]:
    """comparison.md / .csv / .tex in ``folder``; returns the paths by format."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = {"md": folder / "comparison.md", "csv": folder / "comparison.csv", "tex": folder / "comparison.tex"}
    write_text_atomic(paths["md"], table.to_markdown())
    write_text_atomic(paths["csv"], table.to_csv())
    write_text_atomic(paths["tex"], table.to_latex())
    return paths
