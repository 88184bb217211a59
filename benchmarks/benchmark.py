"""Speed and memory of one grid point: seconds per training epoch, seconds per full evaluation
(validation pass), peak memory, and epochs run until early stopping.

    python benchmarks/benchmark.py -m LightGCN -d ml100k --n_layers 1 --reg_weight 0.01
    python benchmarks/benchmark.py -m LightGCN -d sports --data_path ../shared/datasets/amazon/ --epochs 5

Grid keys not fixed on the command line take their first grid value. Figures are medians over
epochs; compare them with docs/performance.md (MMRec's own figures on the same kind of machine).
"""
from __future__ import annotations

import argparse
import json
import logging
import resource
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from main import parse_overrides  # noqa: E402
from utils.configurator import Config  # noqa: E402
from utils.errors import HarnessError  # noqa: E402
from utils.logger import init_logger  # noqa: E402
from utils.quick_start import load_data, train_point  # noqa: E402
from utils.utils import resolve_device  # noqa: E402


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def warnings_only_logging() -> None:
    """No log file, no progress bars, warnings and errors only: the benchmark prints its own table."""
    init_logger(None, quiet=True)
    logging.getLogger().setLevel(logging.WARNING)


def point_config(model: str, dataset: str, overrides: dict, device: str | None) -> Config:
    """One quiet grid point: keys not fixed by ``overrides`` take their first grid value."""
    config = Config(model, dataset, overrides)
    config["device"] = resolve_device(device, config["use_gpu"])
    config["quiet"] = True
    return config.point({k: config[k][0] for k in config.grid_keys})


def benchmark(model: str, dataset: str, overrides: dict, device: str | None) -> dict:
    cfg = point_config(model, dataset, overrides, device)
    t0 = time.perf_counter()
    data = load_data(cfg)
    load_s = time.perf_counter() - t0
    with tempfile.TemporaryDirectory() as tmp:
        cfg["save_model"] = False
        rec = train_point(cfg, data, Path(tmp))
    return {
        "model": model, "dataset": dataset, "device": str(cfg["device"]),
        "parameters": {k: cfg[k] for k in cfg.grid_keys},
        "seconds_per_epoch": rec.get("seconds_per_epoch"), "seconds_per_eval": rec.get("seconds_per_eval"),
        "epochs_run": rec.get("epochs_run"), "best_epoch": rec.get("best_epoch"),
        "early_stopped": rec.get("epochs_run", 0) < int(cfg["epochs"]),
        "test_recall@20": (rec.get("test") or {}).get("recall@20"),
        "seconds_total": rec.get("seconds"), "seconds_data_load": round(load_s, 3),
        "peak_rss_mib": round(peak_rss_mib(), 1), "status": rec["status"],
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-m", "--model", required=True)
    p.add_argument("-d", "--dataset", required=True)
    p.add_argument("--device", default="cpu")
    p.add_argument("--json", default=None, help="also append the result as a JSON line to this file")
    args, extra = p.parse_known_args()
    warnings_only_logging()
    try:
        res = benchmark(args.model, args.dataset, parse_overrides(extra), args.device)
    except HarnessError as exc:
        sys.exit(f"error: {exc}")
    print(f"| {res['model']} | {res['dataset']} | {res['seconds_per_epoch']:.3f} | {res['seconds_per_eval']:.3f} "
          f"| {res['epochs_run']} ({res['best_epoch']}) | {res['peak_rss_mib']:.0f} MiB | "
          f"{res['test_recall@20']:.4f} |")
    if args.json:
        with open(args.json, "a", encoding="utf-8") as fh:
            fh.write(json.dumps(res) + "\n")


if __name__ == "__main__":
    main()
