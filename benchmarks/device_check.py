"""The one prepared device check: everything a GPU run must show, in one command.

    python benchmarks/device_check.py --sports ../shared/datasets/amazon/ --out results/device

On a CUDA machine (about 5-8 minutes on one GPU):
  (a) every model for 2 epochs on ml100k, and SIGREC, FREEDOM and VBPR (text only) on Amazon
      Sports when ``--sports`` names MMRec's data folder;
  (b) one SIGREC point twice with the same seed: every metric must be equal (with ``--models``
      not naming SIGREC, the first model named);
  (c) a point interrupted after a checkpoint and resumed, against the same point uninterrupted;
  (d) seconds per training epoch and per evaluation and peak GPU memory per model, beside the
      same models on the CPU (``--no-cpu`` leaves that out);
  (e) host-device synchronisations per training step, per model, with where they happen.
It writes ``device_check.json`` and ``device_check.md`` into ``--out``. Without CUDA it runs the
same checks on the CPU at reduced size (ml100k, two models, one epoch): what CI runs.
"""
from __future__ import annotations

import argparse
import json
import logging
import platform
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any, Callable

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from benchmark import point_config, warnings_only_logging  # noqa: E402
from common.trainer import Trainer  # noqa: E402
from utils.errors import HarnessError  # noqa: E402
from utils.profiling import count_host_syncs  # noqa: E402
from utils.quick_start import Data, load_data, train_point  # noqa: E402
from utils.results import write_text_atomic  # noqa: E402
from utils.utils import get_model, init_seed  # noqa: E402

MODELS_DIR = Path(__file__).resolve().parents[1] / "src" / "models"
SPORTS_MODELS = {"SIGREC": {}, "FREEDOM": {}, "VBPR": {}}  # text only there (the proxy modality)
SIGREC_POINT = {"perturb_eps": 0.2, "cl_weight": 0.01, "anchor_weight": 0.01, "align_weight": 0.01}
QUICK_MODELS = ["BPR", "SIGREC"]


def all_models() -> list[str]:
    """Every model class the harness ships: the class in models/<name>.py named like its yaml."""
    yamls = {p.stem.lower(): p.stem for p in (MODELS_DIR.parent / "configs" / "model").glob("*.yaml")}
    return sorted(yamls[p.stem] for p in MODELS_DIR.glob("*.py") if p.stem in yamls)


def model_overrides(model: str) -> dict:
    return dict(SIGREC_POINT) if model == "SIGREC" else {}


class Check:
    """Collects the report's rows; a check that raises is recorded as an error, not fatal."""

    def __init__(self) -> None:
        self.rows: dict[str, list[dict]] = {"runs": [], "determinism": [], "resume": [], "syncs": []}

    def run(self, section: str, label: dict, fn: Callable[[], dict]) -> None:
        try:
            row = {**label, **fn(), "status": "ok"}
        except HarnessError as exc:  # a model refusing the data (e.g. one modality): one line
            row = {**label, "status": "refused", "error": str(exc)}
        except Exception as exc:  # noqa: BLE001 - the report must say what broke and go on
            row = {**label, "status": "error", "error": f"{type(exc).__name__}: {exc}",
                   "trace": traceback.format_exc(limit=4)}
        self.rows[section].append(row)
        logging.getLogger("device_check").warning(f"{section}: {json.dumps({k: v for k, v in row.items() if k != 'trace'})}")


_DATA: dict[tuple, Data] = {}


def config_and_data(model: str, dataset: str, device: str, epochs: int, extra: dict) -> tuple[Any, Data]:
    cfg = point_config(model, dataset, {**model_overrides(model), **extra, "epochs": epochs,
                                        "stopping_step": 1000, "save_model": False}, device)
    # data are loaded once per dataset and modality set, as in a grid
    key = (dataset, str(cfg["data_path"]), cfg["is_multimodal_model"], cfg["vision_feature_file"],
           cfg["text_feature_file"])
    if key not in _DATA:
        _DATA[key] = load_data(cfg)
    return cfg, _DATA[key]


def peak_memory(device: str) -> Callable[[], float | None]:
    """Starts a peak-memory window; the returned function reads it (MiB, CUDA only)."""
    if torch.device(device).type != "cuda":
        return lambda: None
    torch.cuda.synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    return lambda: round(torch.cuda.max_memory_allocated(device) / 2**20, 1)


def train_run(model: str, dataset: str, device: str, epochs: int, extra: dict) -> dict:
    """(a) and (d): a short training run; its speed, memory and metrics."""
    cfg, data = config_and_data(model, dataset, device, epochs, extra)
    read_peak = peak_memory(device)
    with tempfile.TemporaryDirectory() as tmp:
        rec = train_point(cfg, data, Path(tmp))
    if rec["status"] != "ok":
        raise RuntimeError(rec.get("error"))
    return {"seconds_per_epoch": rec["seconds_per_epoch"], "seconds_per_eval": rec["seconds_per_eval"],
            "peak_gpu_mib": read_peak(), "epochs": rec["epochs_run"],
            "valid_recall@20": rec["valid"].get("recall@20"), "test_recall@20": rec["test"].get("recall@20")}


def determinism(model: str, device: str, epochs: int) -> dict:
    """(b): the same point twice with the same seed gives the same metrics, every one."""
    cfg, data = config_and_data(model, "ml100k", device, epochs, {})
    with tempfile.TemporaryDirectory() as tmp:
        a = train_point(cfg, data, Path(tmp) / "a")
        b = train_point(cfg, data, Path(tmp) / "b")
    differ = [f"{split}/{k}" for split in ("valid", "test") for k in a[split] if a[split][k] != b[split].get(k)]
    if differ:
        raise AssertionError(f"same seed, other metrics: {', '.join(differ)}")
    return {"metrics_compared": len(a["valid"]) + len(a["test"]), "valid_recall@20": a["valid"]["recall@20"]}


def resume(model: str, device: str, epochs: int) -> dict:
    """(c): interrupted after the checkpoint of epoch 1 and run again == uninterrupted."""
    cfg, data = config_and_data(model, "ml100k", device, epochs, {"checkpoint_interval": 1})

    class Stop(Exception):
        pass

    def interrupt(epoch: int, score: float) -> None:
        if epoch == 1:
            raise Stop

    with tempfile.TemporaryDirectory() as tmp:
        whole = train_point(cfg, data, Path(tmp) / "whole")
        try:
            train_point(cfg, data, Path(tmp) / "cut", on_eval=interrupt)
        except Stop:
            pass
        if not (Path(tmp) / "cut" / "resume.pt").exists():
            raise AssertionError("no resume.pt was written before the interruption")
        again = train_point(cfg, data, Path(tmp) / "cut")
    differ = [k for k in ("valid", "test", "best_epoch", "epochs_run") if whole[k] != again[k]]
    if differ:
        raise AssertionError(f"resumed run differs in {', '.join(differ)}")
    return {"epochs": whole["epochs_run"], "valid_recall@20": whole["valid"]["recall@20"]}


def syncs_per_step(model: str, dataset: str, device: str, extra: dict) -> dict:
    """(e): host-device synchronisations of one training step (the second: the first may set up)."""
    cfg, data = config_and_data(model, dataset, device, 1, extra)
    init_seed(int(cfg["seed"]), cfg["deterministic"] is not False)
    data.train.pretrain_setup(int(cfg["seed"]))
    net = get_model(model)(cfg, data.train).to(cfg["device"])
    if getattr(net, "req_training", True) is False:
        return {"syncs": None, "note": "closed form: no training step"}
    trainer = Trainer(cfg, net)
    net.pre_epoch_processing()
    batches = iter(data.train)
    for step in range(2):
        batch = next(batches).to(cfg["device"])
        with count_host_syncs() as counts:
            trainer.optimizer.zero_grad()
            losses = net.calculate_loss(batch)
            (sum(losses) if isinstance(losses, (tuple, list)) else losses).backward()
            trainer.optimizer.step()
    return {"syncs": counts.total, "cuda_reported": counts.cuda_reported,
            "where": {f"{label} @ {place}": n for (label, place), n in sorted(counts.where.items())}}


def markdown(report: dict) -> str:
    env = report["environment"]
    lines = [f"# Device check: {env['device_name']}", "",
             f"torch {env['torch']}, CUDA {env['cuda']}, {env['threads']} CPU threads, mode {report['mode']}, "
             f"{report['seconds']:.0f} s in all.", "",
             "## Runs (a, d)", "",
             "| model | data | device | status | s/epoch | s/eval | peak GPU MiB | valid R@20 |",
             "|---|---|---|---|---|---|---|---|"]
    fmt = lambda v, f="{:.3f}": "–" if v is None else f.format(v)  # noqa: E731
    for r in report["runs"]:
        lines.append(f"| {r['model']} | {r['dataset']} | {r['device']} | {r['status']} | "
                     f"{fmt(r.get('seconds_per_epoch'))} | {fmt(r.get('seconds_per_eval'))} | "
                     f"{fmt(r.get('peak_gpu_mib'), '{:.0f}')} | {fmt(r.get('valid_recall@20'), '{:.4f}')} |")
    for section, title in (("determinism", "Same seed twice (b)"), ("resume", "Interrupted and resumed (c)")):
        lines += ["", f"## {title}", ""]
        lines += [f"- {r.get('model', 'SIGREC')} on {r['device']}: {r['status']}"
                  + (f" ({r['error']})" if r.get("error") else "") for r in report[section]]
    lines += ["", "## Host-device synchronisations per training step (e)", "",
              "| model | data | device | syncs | torch's CUDA count | where |", "|---|---|---|---|---|---|"]
    for r in report["syncs"]:
        where = "; ".join(f"{k} ×{n}" for k, n in (r.get("where") or {}).items()) or r.get("error", "")
        lines.append(f"| {r['model']} | {r['dataset']} | {r['device']} | {fmt(r.get('syncs'), '{}')} | "
                     f"{fmt(r.get('cuda_reported'), '{}')} | {where} |")
    failed = [r for rows in report.values() if isinstance(rows, list) for r in rows if r.get("status") == "error"]
    lines += ["", f"**{len(failed)} check(s) failed.**" if failed else "**Every check passed.**", ""]
    return "\n".join(lines)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default=None, help="default: cuda when available, else cpu (reduced size)")
    p.add_argument("--sports", default=None, help="MMRec data folder holding sports/ (e.g. ../shared/datasets/amazon/)")
    p.add_argument("--out", default="results/device", help="folder for device_check.json and .md")
    p.add_argument("--epochs", type=int, default=None, help="epochs per run (default 2, 1 at reduced size)")
    p.add_argument("--models", default=None, help="comma-separated models (default: all; reduced: BPR,SIGREC)")
    p.add_argument("--no-cpu", action="store_true", help="on CUDA, skip the CPU runs beside the GPU ones")
    args = p.parse_args()
    warnings_only_logging()
    logging.getLogger("device_check").setLevel(logging.WARNING)
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    full = torch.device(device).type == "cuda"
    epochs = args.epochs or (2 if full else 1)
    models = args.models.split(",") if args.models else (all_models() if full else QUICK_MODELS)
    devices = [device] + (["cpu"] if full and not args.no_cpu else [])
    started = time.perf_counter()
    check = Check()
    for dev in devices:
        for model in models:
            check.run("runs", {"model": model, "dataset": "ml100k", "device": dev},
                      lambda: train_run(model, "ml100k", dev, epochs, {}))
        if args.sports:
            for model in SPORTS_MODELS:
                if model in models:
                    extra = {"data_path": args.sports, "modalities": "text"} if model == "SIGREC" else \
                        {"data_path": args.sports}
                    check.run("runs", {"model": model, "dataset": "sports", "device": dev},
                              lambda: train_run(model, "sports", dev, epochs, extra))
    same_model = "SIGREC" if "SIGREC" in models else models[0]
    check.run("determinism", {"model": same_model, "device": device}, lambda: determinism(same_model, device, epochs))
    resume_model = "SIGREC" if full and "SIGREC" in models else models[0]
    check.run("resume", {"model": resume_model, "device": device}, lambda: resume(resume_model, device, epochs + 2))
    for model in models:
        check.run("syncs", {"model": model, "dataset": "ml100k", "device": device},
                  lambda: syncs_per_step(model, "ml100k", device, {}))
    if args.sports and "SIGREC" in models:
        check.run("syncs", {"model": "SIGREC", "dataset": "sports", "device": device},
                  lambda: syncs_per_step("SIGREC", "sports", device, {"data_path": args.sports, "modalities": "text"}))
    report = {"mode": "full" if full else "reduced (no CUDA)", "seconds": time.perf_counter() - started,
              "environment": {"torch": torch.__version__, "cuda": torch.version.cuda, "python": platform.python_version(),
                              "threads": torch.get_num_threads(),
                              "device_name": torch.cuda.get_device_name(0) if full else platform.processor() or "CPU"},
              **check.rows}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    write_text_atomic(out / "device_check.json", json.dumps(report, indent=2, default=str))
    write_text_atomic(out / "device_check.md", markdown(report))
    print(markdown(report))
    return 1 if any(r.get("status") == "error" for rows in check.rows.values() for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
