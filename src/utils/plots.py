"""Plots of a comparison (PNG, matplotlib's Agg backend): training curves, grid sensitivity and
a bar chart of the compared models."""
from __future__ import annotations

import math
import numbers
from pathlib import Path
from typing import Any, Sequence

import matplotlib

matplotlib.use("Agg")
from matplotlib.figure import Figure  # noqa: E402

from utils.results import atomic_write  # noqa: E402
from utils.statistics import TABLE_METRICS, ComparisonTable  # noqa: E402

DPI = 120


def _save(fig: Figure, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_write(path) as fh:  # a file object: the format comes from the name's suffix
        fig.savefig(fh, format=path.suffix.lstrip(".") or "png", dpi=DPI, bbox_inches="tight")
    return path


def model_colors(models: Sequence[str]) -> dict[str, tuple[float, ...]]:
    """One distinct colour per model: matplotlib's default cycle repeats after 10, so a larger
    comparison takes tab20, and one past 20 samples a continuous map."""
    n = len(models)
    if n > 20:
        turbo = matplotlib.colormaps["turbo"]
        return {m: tuple(turbo(i / (n - 1))) for i, m in enumerate(models)}
    qualitative = matplotlib.colormaps["tab10" if n <= 10 else "tab20"]
    return {m: tuple(qualitative(i)) for i, m in enumerate(models)}


def _spans_decades(values: Sequence[float]) -> bool:
    """Whether positive values cover at least two orders of magnitude (then use a log axis)."""
    return all(v > 0 for v in values) and max(values) / min(values) >= 100


def curve_points(history: list[dict]) -> tuple[list[int], list[float], list[tuple[int, float]]]:
    """(epochs, losses, [(epoch, valid score)]) of one history, epochs numbered from 0 as in the log."""
    epochs = [h["epoch"] for h in history]
    loss = [h["loss"] for h in history]
    scored = [(h["epoch"], h["valid_score"]) for h in history if h.get("valid_score") is not None]
    return epochs, loss, scored


def plot_curves(histories: dict[str, list[dict]], path: Path, metric: str = "Recall@20",
                title: str = "Training curves (best grid point, first seed)") -> Path:
    """Training loss and validation ``metric`` per epoch, one line per model; epochs are numbered
    from 0, as the log numbers them (``epoch 0 training [...]``)."""
    fig = Figure(figsize=(11, 4.2), layout="constrained")
    ax_loss, ax_valid = fig.subplots(1, 2)
    losses: list[float] = []
    colors = model_colors(list(histories))
    for model, history in histories.items():
        epochs, loss, scored = curve_points(history)
        losses += [v for v in loss if v is not None and math.isfinite(v)]
        ax_loss.plot(epochs, loss, marker="." if len(epochs) < 30 else None, label=model, color=colors[model])
        if scored:
            ax_valid.plot(*zip(*scored), marker="." if len(scored) < 30 else None, label=model,
                          color=colors[model])
    if losses and _spans_decades(losses):
        ax_loss.set_yscale("log")
    ax_loss.set(xlabel="epoch (from 0, as in the log)", ylabel="training loss (sum over batches)", title="Training loss")
    ax_valid.set(xlabel="epoch (from 0, as in the log)", ylabel=f"validation {metric}", title=f"Validation {metric}")
    for ax in (ax_loss, ax_valid):
        ax.grid(alpha=0.3)
        ax.xaxis.get_major_locator().set_params(integer=True)
    if ax_loss.lines:  # one legend for both panels, below them: labels may be long (a run's values)
        fig.legend(*ax_loss.get_legend_handles_labels(), loc="outside lower center",
                   ncols=1 if max(len(m) for m in histories) > 40 else min(4, len(histories)))
    fig.suptitle(title)
    return _save(fig, path)


def sensitivity_series(points: list[tuple[dict, dict]], best: dict, metric: str = "recall@20"
                       ) -> dict[str, list[tuple[Any, float, float]]]:
    """For each grid key with several values: (value, valid, test) with the other keys at ``best``.

    ``points`` holds (parameters, ok record) pairs; ``seed`` is never a plotted key."""
    keys = [k for k in best if k != "seed"]
    out: dict[str, list[tuple[Any, float, float]]] = {}
    for key in keys:
        series = []
        for params, rec in points:
            if all(params.get(k) == best[k] for k in keys if k != key) and params.get("seed") == best.get("seed"):
                if metric in rec.get("valid", {}) and metric in rec.get("test", {}):
                    series.append((params[key], rec["valid"][metric], rec["test"][metric]))
        if len({repr(v) for v, _, _ in series}) > 1:
            out[key] = series
    return out


def plot_sensitivity(model: str, series: dict[str, list[tuple[Any, float, float]]], path: Path,
                     metric: str = "Recall@20",
                     others: str = "other hyper-parameters at their best; selection seed") -> Path | None:
    """One panel per hyper-parameter: validation and test ``metric`` against its value; ``others``
    says where the other hyper-parameters are held (the figure's subtitle)."""
    if not series:
        return None
    n = len(series)
    fig = Figure(figsize=(max(5.5, 4.8 * n), 4.0), layout="constrained")
    axes = fig.subplots(1, n, squeeze=False)[0]
    for ax, (key, rows) in zip(axes, series.items()):
        numeric = all(isinstance(v, numbers.Real) and not isinstance(v, bool) for v, _, _ in rows)
        if numeric:
            rows = sorted(rows, key=lambda r: r[0])
            xs = [float(v) for v, _, _ in rows]
        else:
            xs = list(range(len(rows)))
            ax.set_xticks(xs, [str(v) for v, _, _ in rows])
        ax.plot(xs, [r[1] for r in rows], marker="o", label="validation")
        ax.plot(xs, [r[2] for r in rows], marker="s", linestyle="--", label="test")
        positive = [x for x in xs if x > 0]
        if numeric and _spans_decades(xs):
            ax.set_xscale("log")
        elif numeric and min(xs) == 0 and len(positive) > 1 and max(positive) / min(positive) >= 10:
            ax.set_xscale("symlog", linthresh=min(positive))  # 0 plus values over a decade or more
            ax.set_xlim(left=0)
            if len(xs) <= 8:
                ax.set_xticks(xs, [f"{x:g}" for x in xs])
        elif numeric and len(xs) <= 8:
            ax.set_xticks(xs, [f"{x:g}" for x in xs])  # a tick at every grid value
        ax.set(xlabel=key, ylabel=metric, title=key)
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle(f"{model}: grid sensitivity\n({others})")
    return _save(fig, path)


def plot_bars(table: ComparisonTable, path: Path, seeds: str | None = None) -> Path:
    """Mean test R@20 and N@20 of every model, with the std over seeds as error bars.

    The bars are the table's own means and stds, so they average the table's seeds; ``seeds``
    (e.g. '5 fresh seeds (1, 2, 3, 4, 5); the selection seed 999 is excluded') names them in the title."""
    metrics = [m for m in ("recall@20", "ndcg@20") if m in table.metrics] or table.metrics[:2]
    fig = Figure(figsize=(max(5.0, 1.6 + 1.1 * len(table.models) * len(metrics)), 4.2), layout="constrained")
    ax = fig.subplots()
    width = 0.8 / len(table.models)
    colors = model_colors(table.models)
    for i, model in enumerate(table.models):
        xs = [j + (i - (len(table.models) - 1) / 2) * width for j in range(len(metrics))]
        ax.bar(xs, [table.means[model][m] for m in metrics], width,
               yerr=[table.stds[model][m] for m in metrics], capsize=4, label=model, color=colors[model])
    ax.set_xticks(range(len(metrics)), [TABLE_METRICS.get(m, m) for m in metrics])
    title = f"{table.dataset}: test metrics of the compared models".strip(": ")
    if seeds:
        title += f"\nmean ± std over {seeds}"
    ax.set(ylabel="test score (mean ± std over seeds)", title=title)
    ax.grid(axis="y", alpha=0.3)
    ax.legend()
    return _save(fig, path)
