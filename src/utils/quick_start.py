"""Runs the grid of one model on one dataset: every point seeded, trained, logged and recorded.

The best point is chosen on validation (``valid_metric``), never on test."""
from __future__ import annotations

import itertools
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import yaml

from common.trainer import Trainer, save_atomic
from utils.claim import PointClaim
from utils.configurator import Config
from utils.dataloader import EvalDataLoader, TrainDataLoader
from utils.dataset import RecDataset, fingerprint
from utils.errors import DataError, TrainingError
from utils.metrics import dict2str
from utils.results import DATA_KEY, ResultsStore, atomic_write, best_record, point_key
from utils.utils import get_model, init_seed


@dataclass
class RunOptions:
    output_dir: Path
    rerun: bool = False


@dataclass
class Data:
    """A dataset with its loaders, built once and shared by every grid point."""
    dataset: RecDataset
    train: TrainDataLoader
    valid: EvalDataLoader
    test: EvalDataLoader
    fingerprint: str | None = None  # dataset.fingerprint of the files it was read from


def load_data(config: Config, cache_dir: Path | None = None) -> Data:
    """Read the dataset and build its loaders; also sets ``config["data_fingerprint"]`` (the
    content hash that point keys include), cached in ``cache_dir`` when given."""
    dataset = RecDataset(config)
    logging.getLogger().info("\n" + dataset.statistics())
    check_topk(config, dataset)
    config[DATA_KEY] = fingerprint(config, cache_dir)
    train, valid, test = dataset.split()
    return Data(dataset,
                TrainDataLoader(config, train, batch_size=config["train_batch_size"], shuffle=True),
                EvalDataLoader(config, valid, additional_dataset=train, batch_size=config["eval_batch_size"]),
                EvalDataLoader(config, test, additional_dataset=train, batch_size=config["eval_batch_size"]),
                config[DATA_KEY])


def check_topk(config: Any, dataset: RecDataset) -> None:
    """Refuse, before training, a ``topk`` that asks for more items than the dataset has."""
    topk = [int(k) for k in config["topk"] or []]
    if topk and max(topk) > dataset.n_items:
        fitting = [k for k in topk if k <= dataset.n_items]
        hint = f', e.g. --topk "{fitting}"' if fitting else ""
        raise DataError(f"topk = {topk} asks for the top {max(topk)} items, but dataset {config['dataset']} has "
                        f"only {dataset.n_items} items; lower topk{hint} (valid_metric's k included)")


def grid_points(config: Config) -> list[dict]:
    """The cartesian product of the grid lists, in key order (seed included)."""
    keys = config.grid_keys
    return [dict(zip(keys, combo)) for combo in itertools.product(*(config[k] for k in keys))]


def params_text(point: dict) -> str:
    return f"{list(point)}={tuple(point.values())}"


def run_dir(output_dir: Path, config: Any, key: str) -> Path:
    return Path(output_dir) / "runs" / f"{config['model']}-{config['dataset']}" / key


def plain_config(config: Any) -> dict:
    return {k: (str(v) if isinstance(v, torch.device) else v) for k, v in config.final_config_dict.items()}


def write_point_config(folder: Path, config: Any) -> None:
    """``folder/config.yaml``, written atomically."""
    folder.mkdir(parents=True, exist_ok=True)
    with atomic_write(folder / "config.yaml") as fh:
        fh.write(yaml.safe_dump(plain_config(config), sort_keys=True).encode())


def train_point(cfg: Config, data: Data, folder: Path,
                on_eval: Callable[[int, float], None] | None = None) -> dict:
    """Train one point; return its results record (status ok or failed).

    ``on_eval(epoch, valid_score)`` is called after every validation and may raise to stop."""
    log = logging.getLogger()
    init_seed(int(cfg["seed"]), cfg["deterministic"] is not False)
    data.train.pretrain_setup(int(cfg["seed"]))
    start = time.perf_counter()
    # a model refusing its data raises ModelInputError (one line); any other error is a bug
    model = get_model(cfg["model"])(cfg, data.train).to(cfg["device"])
    log.info(str(model))
    trainer = Trainer(cfg, model)
    trainer.on_eval = on_eval
    record: dict = {"status": "ok", "error": None}
    try:
        fit = trainer.fit(data.train, data.valid, data.test, resume_path=folder / "resume.pt")
    except TrainingError as exc:
        log.error(f"grid point failed: {exc}")
        record.update(status="failed", error=str(exc))
        fit = None
    # A resumed point counts the seconds of its earlier runs too (kept in resume.pt).
    earlier = float(getattr(fit, "resumed_seconds", 0.0) or 0.0) if fit is not None else 0.0
    record.update(seconds=round(time.perf_counter() - start + earlier, 3),
                  threads=torch.get_num_threads(), device=str(cfg["device"]))
    if fit is not None:
        train_t = [h["train_seconds"] for h in fit.history]
        eval_t = [h["eval_seconds"] for h in fit.history if "eval_seconds" in h]
        record.update(best_epoch=fit.best_epoch, epochs_run=fit.epochs_run, valid=fit.best_valid,
                      test=fit.best_test, history=fit.history,
                      seconds_per_epoch=float(np.median(train_t)) if train_t else None,
                      seconds_per_eval=float(np.median(eval_t)) if eval_t else None)
        if fit.test_eval is not None:
            folder.mkdir(parents=True, exist_ok=True)
            with atomic_write(folder / "per_user_test.npz") as fh:  # a file object: no ".npz" appended
                np.savez_compressed(fh, users=fit.test_eval.users, **fit.test_eval.per_user)
            record["per_user"] = str(folder / "per_user_test.npz")
        if fit.best_state is not None and cfg["save_model"] is not False:
            save_atomic({"state_dict": fit.best_state, "config": plain_config(cfg)}, folder / "model.pth")
            record["checkpoint"] = str(folder / "model.pth")
    return record


def run_grid(config: Config, options: RunOptions, data: Data | None = None) -> dict | None:
    """Run (or reuse) every grid point; log MMRec's summary; return the best record.

    Each point is trained under its claim (``utils.claim``): a point another command on the same
    output is training is passed over, and waited for once the others are done; its record is
    then reused, or, if that command died first, the point is trained (resumed) here."""
    log = logging.getLogger()
    data = data or load_data(config, options.output_dir)
    if data.fingerprint is not None:
        config[DATA_KEY] = data.fingerprint  # keys name the data actually trained on
    store = ResultsStore(Path(options.output_dir) / "results.jsonl")
    metric = str(config["valid_metric"] or "Recall@20").lower()
    points = grid_points(config)
    started = time.time()  # with --rerun, records written after this are this run's, not old ones
    results: list[tuple[dict, dict] | None] = [None] * len(points)
    passed_over: list[tuple[int, PointClaim, str]] = []
    for idx, point in enumerate(points):
        cfg = config.point(point)
        key = point_key(cfg.final_config_dict)
        log.info(f"========={idx + 1}/{len(points)}: Parameters:{params_text(point)}=======")
        previous = store.finished(key)
        if previous is not None and not options.rerun:
            log.info(f"already finished ({previous['status']}), reusing its result; --rerun trains it again")
            results[idx] = (point, previous)
            continue
        claim = PointClaim(run_dir(options.output_dir, cfg, key))
        if not claim.acquire():
            holder = claim.holder()
            log.info(f"claimed by {holder}, which is training it: going on, and back to it at the end")
            passed_over.append((idx, claim, holder))
            continue
        with claim:
            results[idx] = (point, _train_claimed(cfg, key, point, data, store, options, metric, started))
        _log_current_best([r for r in results if r is not None], metric)
    for idx, claim, holder in passed_over:
        point = points[idx]
        cfg = config.point(point)
        log.info(f"=========waiting for {params_text(point)}, claimed by {holder}=======")
        claim.acquire(wait=True)
        with claim:
            results[idx] = (point, _train_claimed(cfg, point_key(cfg.final_config_dict), point, data, store,
                                                  options, metric, started))
        _log_current_best([r for r in results if r is not None], metric)
    return log_summary([r for r in results if r is not None], metric)


def _train_claimed(cfg: Config, key: str, point: dict, data: Data, store: ResultsStore, options: RunOptions,
                   metric: str, started: float) -> dict:
    """Train a point whose claim this process holds, unless another run finished it meanwhile
    (then its record is reused); store and return the record."""
    log = logging.getLogger()
    previous = store.finished(key)
    if previous is not None and (not options.rerun or float(previous.get("finished_at") or 0) >= started):
        log.info(f"finished by another run meanwhile ({previous['status']}); reusing its record")
        return previous
    folder = run_dir(options.output_dir, cfg, key)
    write_point_config(folder, cfg)
    record = train_point(cfg, data, folder)
    record.update(model=cfg["model"], dataset=cfg["dataset"], key=key, parameters=point,
                  seed=int(cfg["seed"]), valid_metric=metric, finished_at=time.time(),
                  data_fingerprint=cfg[DATA_KEY])
    store.append(record)
    (folder / "resume.pt").unlink(missing_ok=True)
    if record["status"] == "ok":
        log.info(f"best valid result: {dict2str(record['valid'])}")
        log.info(f"test result: {dict2str(record['test'])}")
    return record


def _log_current_best(done: list[tuple[dict, dict]], metric: str) -> None:
    best = best_record([r for _, r in done], metric)
    if best is not None:
        logging.getLogger().info(f"████Current BEST████:\nParameters: {params_text(best['parameters'])},\n"
                                 f"Valid: {dict2str(best['valid'])},\nTest: {dict2str(best['test'])}\n\n")


def log_summary(done: list[tuple[dict, dict]], metric: str, note: str = "") -> dict | None:
    """MMRec's closing block: every point's results, then the best one (chosen on validation)."""
    log = logging.getLogger()
    log.info(f"\n============All Over====================={note}")
    for point, rec in done:
        if rec["status"] == "ok":
            log.info(f"Parameters: {params_text(point)},\n best valid: {dict2str(rec['valid'])},\n "
                     f"best test: {dict2str(rec['test'])}")
        else:
            log.info(f"Parameters: {params_text(point)},\n {rec['status']}: {rec.get('error')}")
    best = best_record([r for _, r in done], metric)
    if best is None:
        log.error("no grid point finished successfully")
        return None
    log.info(f"\n\n█████████████ BEST ████████████████ (selected on valid {metric})")
    log.info(f"\tParameters: {params_text(best['parameters'])},\nValid: {dict2str(best['valid'])},\n"
             f"Test: {dict2str(best['test'])}\n\n")
    return best
