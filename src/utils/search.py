"""Grid or TPE search through an Optuna study, shared by any number of workers and machines.

Every worker runs the same command with the same ``--storage`` and ``--study``; Optuna's storage
is the only coordination. Each grid point is trained once (a duplicate hand-out is skipped), a
worker killed mid-trial is detected by Optuna's heartbeat and its trial retried (resuming from
``resume.pt``), and every worker ends with the same MMRec summary, read back from the study.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import logging
import multiprocessing as mp
import os
import random
import threading
import time
import warnings
from pathlib import Path
from typing import Any, Callable, Iterator

import optuna
import yaml
from optuna.storages import RDBStorage, RetryHeartbeatStaleTrialCallback
from optuna.trial import FrozenTrial, Trial, TrialState

from utils import quick_start
from utils.configurator import Config
from utils.errors import ConfigError
from utils.metrics import dict2str
from utils.results import ResultsStore, point_key

MAX_RETRY = 3            # a point whose worker died this many times more is given up
POLL_S = 1.0             # how often an idle worker looks at the study again
DEFAULT_HEARTBEAT_S = 60  # heartbeat interval; grace period is twice that
RECORD_KEYS = ("status", "error", "valid", "test", "best_epoch", "epochs_run", "seconds", "key",
               "parameters", "seed", "valid_metric", "model", "dataset", "checkpoint", "per_user")


class PointFailed(Exception):
    """Training of a point ended in a recorded failure (e.g. NaN loss): a result, not a crash."""


# --- parameters <-> Optuna ------------------------------------------------------------------
def encode(value: Any) -> Any:
    """Optuna stores only scalars: other grid values (lists, dicts) travel as JSON text."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return json.dumps(value, sort_keys=True)


def space(config: Config) -> dict[str, list]:
    """The grid as Optuna choices: ``{key: [encoded values]}`` (seed included)."""
    return {k: [encode(v) for v in config[k]] for k in config.grid_keys}


def decode(config: Config, params: dict) -> dict:
    """Optuna params back to the grid's own values, in grid key order."""
    out = {}
    for k in config.grid_keys:
        choices = config[k]
        out[k] = choices[[encode(v) for v in choices].index(params[k])]
    return out


def ident(params: dict) -> str:
    return json.dumps(params, sort_keys=True)


def fingerprint(config: Config, search: str) -> str:
    """What must be equal for two workers to share a study (grid lists included, device not)."""
    return point_key({**config.final_config_dict, "__search__": search})


# --- storage and study ----------------------------------------------------------------------
def heartbeat_seconds(args: argparse.Namespace) -> int:
    """``--heartbeat`` when main.py has it, else $SEARCH_HEARTBEAT_S, else 60 s."""
    value = getattr(args, "heartbeat", None) or os.environ.get("SEARCH_HEARTBEAT_S") or DEFAULT_HEARTBEAT_S
    try:
        seconds = int(value)
    except ValueError:
        raise ConfigError(f"heartbeat '{value}' is not a whole number of seconds") from None
    if seconds < 1:
        raise ConfigError(f"heartbeat must be at least 1 second, got {seconds}")
    return seconds


def storage_url(args: argparse.Namespace, output: Path) -> str:
    return args.storage or f"sqlite:///{output / 'optuna.db'}"


def retry_callback() -> RetryHeartbeatStaleTrialCallback:
    """Re-queue a dead worker's trial with its params, so that another worker resumes it."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return RetryHeartbeatStaleTrialCallback(max_retry=MAX_RETRY, inherit_intermediate_values=True)


@contextlib.contextmanager
def creation_lock(url: str) -> Iterator[None]:
    """For SQLite, an exclusive file lock around opening the storage, so that local workers
    starting together do not race to create (and stamp) the schema."""
    if not url.startswith("sqlite"):
        yield
        return
    import fcntl
    lock_path = Path(url.split(":///", 1)[-1] + ".lock")
    with open(lock_path, "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def make_storage(url: str, heartbeat: int) -> optuna.storages.BaseStorage:
    """A SQLAlchemy URL -> RDBStorage with heartbeat and retry; ``journal:PATH`` -> JournalStorage."""
    retry = retry_callback()
    if url.startswith("journal:"):
        path = Path(url[len("journal:"):]).expanduser()
        if not url[len("journal:"):]:
            raise ConfigError("--storage journal:PATH needs a file path, e.g. journal:/shared/study.log")
        path.parent.mkdir(parents=True, exist_ok=True)
        from optuna.storages.journal import JournalFileBackend, JournalFileOpenLock, JournalStorage
        # The open() lock works on NFS, where symlink locks may not.
        return JournalStorage(JournalFileBackend(str(path), lock_obj=JournalFileOpenLock(str(path))))
    if "://" not in url:
        raise ConfigError(f"--storage '{url}' is neither a SQLAlchemy URL (sqlite:///f.db, "
                          f"postgresql://user@host/db) nor journal:PATH")
    engine: dict = {}
    if url.startswith("sqlite"):
        Path(url.split(":///", 1)[-1]).parent.mkdir(parents=True, exist_ok=True)
        engine = {"connect_args": {"timeout": 120}}  # several processes wait on SQLite's lock
    error = ""
    for attempt in range(5):  # workers starting together race to create the tables: try again
        try:
            with warnings.catch_warnings(), creation_lock(url):
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                return RDBStorage(url, engine_kwargs=engine, heartbeat_interval=heartbeat,
                                  grace_period=2 * heartbeat, heartbeat_stale_trial_callback=retry)
        except ImportError as exc:
            raise ConfigError(f"--storage {url.split(':', 1)[0]} needs a driver: {exc}") from None
        except Exception as exc:  # noqa: BLE001 - SQLAlchemy raises many kinds; one line is enough
            error = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            if not any(w in error.lower() for w in ("exist", "duplicate", "unique constraint", "integrity")):
                break  # not the creation race: report it at once
            time.sleep(0.5 + random.random() * (attempt + 1))
    raise ConfigError(f"cannot open --storage {url}: {error}")


def open_study(config: Config, args: argparse.Namespace, output: Path) -> optuna.Study:
    """Create or join the study; refuse one that was made with a different config."""
    url = storage_url(args, output)
    storage = make_storage(url, heartbeat_seconds(args))
    name = args.study or f"{config['model']}-{config['dataset']}-{args.search}"
    if args.search == "grid":
        sampler: optuna.samplers.BaseSampler = optuna.samplers.GridSampler(space(config))
    else:
        sampler = optuna.samplers.TPESampler()
    pruner = optuna.pruners.MedianPruner() if args.prune == "median" else optuna.pruners.NopPruner()
    study = optuna.create_study(storage=storage, sampler=sampler, pruner=pruner, study_name=name,
                                direction="maximize", load_if_exists=True)
    mine = fingerprint(config, args.search)
    theirs = study.user_attrs.get("config_fingerprint")
    if theirs is None:
        study.set_user_attr("config_fingerprint", mine)
        study.set_user_attr("grid", {k: config[k] for k in config.grid_keys})
    elif theirs != mine:
        raise ConfigError(f"study '{name}' in {url} was made with a different config or search "
                          f"(fingerprint {theirs}, yours {mine}); use the same command or another --study")
    return study


# --- heartbeat for journal storage ----------------------------------------------------------
# Optuna 5 has heartbeats for RDBStorage only; a journal worker stamps its trial instead, and
# stale stamps are failed and retried with the same callback that RDBStorage uses.
@contextlib.contextmanager
def journal_heartbeat(study: optuna.Study, trial: Trial, seconds: int) -> Iterator[None]:
    if isinstance(study._storage, RDBStorage):
        yield  # Optuna's own heartbeat thread runs around the objective
        return
    stop = threading.Event()

    def beat() -> None:
        while True:
            study._storage.set_trial_system_attr(trial._trial_id, "heartbeat", time.time())
            if stop.wait(seconds):
                return

    thread = threading.Thread(target=beat, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


def fail_stale(study: optuna.Study, seconds: int) -> None:
    """Mark trials of dead workers FAIL and enqueue their retry."""
    if isinstance(study._storage, RDBStorage):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            optuna.storages.fail_stale_trials(study)
        return
    now = time.time()
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        stamp = t.system_attrs.get("heartbeat", t.datetime_start.timestamp() if t.datetime_start else now)
        if now - stamp > 2 * seconds:
            try:
                if study._storage.set_trial_state_values(t._trial_id, state=TrialState.FAIL):
                    logging.getLogger().warning(f"trial {t.number} lost its worker; it will be retried")
                    retry_callback()(study, study._storage.get_trial(t._trial_id))
            except optuna.exceptions.UpdateFinishedTrialError:
                pass  # another worker failed it first


# --- the study's view of the grid -----------------------------------------------------------
def is_duplicate(t: FrozenTrial) -> bool:
    return "duplicate_of" in t.user_attrs


def settles(t: FrozenTrial) -> bool:
    """Whether a trial is a point's final outcome (trained, recorded failure, or pruned)."""
    if is_duplicate(t):
        return False
    if t.state in (TrialState.COMPLETE, TrialState.PRUNED):
        return True
    return t.state == TrialState.FAIL and t.user_attrs.get("status") == "failed"


def scan(study: optuna.Study) -> tuple[dict[str, FrozenTrial], dict[str, int], set[str], int, int]:
    """(settled point -> trial, point -> worker deaths, running points, waiting trials, grid ids used)."""
    settled: dict[str, FrozenTrial] = {}
    deaths: dict[str, int] = {}
    running: set[str] = set()
    waiting, used = 0, set()
    for t in study.get_trials(deepcopy=False):
        pid = ident(t.params)
        if t.state == TrialState.WAITING:
            waiting += 1
            continue
        if "grid_id" in t.system_attrs:
            used.add(t.system_attrs["grid_id"])
        if t.state == TrialState.RUNNING:
            running.add(pid if t.params else f"#{t.number}")
        elif settles(t):
            settled.setdefault(pid, t)
        elif t.state == TrialState.FAIL:
            deaths[pid] = deaths.get(pid, 0) + 1
    return settled, deaths, running, waiting, len(used)


def given_up(deaths: dict[str, int], pid: str) -> bool:
    return deaths.get(pid, 0) > MAX_RETRY


# --- one trial ------------------------------------------------------------------------------
def pruning_callback(trial: Trial) -> Callable[[int, float], None]:
    """Reports each validation score to the trial and stops the point when told to prune."""

    def on_eval(epoch: int, score: float) -> None:
        trial.report(float(score), epoch)
        if trial.should_prune():
            raise optuna.TrialPruned(f"pruned at epoch {epoch} (median rule)")

    return on_eval


class Worker:
    """Trains the points Optuna hands out, one trial at a time."""

    def __init__(self, config: Config, args: argparse.Namespace, output: Path, study: optuna.Study) -> None:
        self.config, self.args, self.output, self.study = config, args, output, study
        self.store = ResultsStore(output / "results.jsonl")
        self.metric = str(config["valid_metric"] or "Recall@20").lower()
        self.heartbeat = heartbeat_seconds(args)
        self.choices = space(config)
        self.data: quick_start.Data | None = None
        self.log = logging.getLogger()

    def objective(self, trial: Trial) -> float:
        params = {k: trial.suggest_categorical(k, v) for k, v in self.choices.items()}
        point = decode(self.config, params)
        cfg = self.config.point(point)
        key = point_key(cfg.final_config_dict)
        trial.set_user_attr("key", key)
        self.log.info(f"=========trial {trial.number}: Parameters:{quick_start.params_text(point)}=======")
        same = self.earlier_twin(trial, params)
        if same is not None:
            trial.set_user_attr("duplicate_of", same.number)
            if self.args.search == "tpe" and same.state == TrialState.COMPLETE:
                return float(same.value)  # TPE asked again: the known value teaches it as much
            raise optuna.TrialPruned(f"point already taken by trial {same.number}; skipped")
        previous = None if self.args.rerun else self.store.finished(key)
        if previous is not None:
            self.log.info(f"already in results.jsonl ({previous['status']}), reusing it without training")
            return self.finish(trial, previous, reused=True)
        with journal_heartbeat(self.study, trial, self.heartbeat):
            return self.train(trial, cfg, point, key)

    def earlier_twin(self, trial: Trial, params: dict) -> FrozenTrial | None:
        """A trial of the same point that settled, or runs and is older (the older one wins)."""
        for t in self.study.get_trials(deepcopy=False):
            if t.number == trial.number or t.params != params or is_duplicate(t):
                continue
            if settles(t) or (t.state == TrialState.RUNNING and t.number < trial.number):
                return t
        return None

    def train(self, trial: Trial, cfg: Config, point: dict, key: str) -> float:
        if self.data is None:
            self.data = quick_start.load_data(self.config)
        folder = quick_start.run_dir(self.output, cfg, key)
        folder.mkdir(parents=True, exist_ok=True)
        with open(folder / "config.yaml", "w", encoding="utf-8") as fh:
            yaml.safe_dump(quick_start.plain_config(cfg), fh, sort_keys=True)
        pruning = self.args.prune != "none"
        try:
            record = quick_start.train_point(cfg, self.data, folder,
                                             on_eval=pruning_callback(trial) if pruning else None)
        except optuna.TrialPruned:
            (folder / "resume.pt").unlink(missing_ok=True)
            trial.set_user_attr("record", {"status": "pruned", "key": key, "parameters": point,
                                           "seed": int(cfg["seed"]), "valid_metric": self.metric})
            raise
        record.update(model=cfg["model"], dataset=cfg["dataset"], key=key, parameters=point,
                      seed=int(cfg["seed"]), valid_metric=self.metric, finished_at=time.time())
        self.store.append(record)
        (folder / "resume.pt").unlink(missing_ok=True)
        if record["status"] == "ok":
            self.log.info(f"best valid result: {dict2str(record['valid'])}")
            self.log.info(f"test result: {dict2str(record['test'])}")
        return self.finish(trial, record, reused=False)

    def finish(self, trial: Trial, record: dict, reused: bool) -> float:
        """Keep the record in the study (for any worker's summary) and give Optuna its value."""
        trial.set_user_attr("record", {k: record.get(k) for k in RECORD_KEYS})
        trial.set_user_attr("reused", reused)
        if record["status"] != "ok":
            trial.set_user_attr("status", "failed")
            raise PointFailed(record.get("error") or "training failed")
        trial.set_user_attr("status", "ok")
        return float(record["valid"].get(self.metric, float("nan")))

    # --- the loops ------------------------------------------------------------------------
    def run_grid(self) -> None:
        """Train until every grid point is settled, waiting for (or retrying) other workers' trials."""
        points = [ident(p) for p in self.grid_params()]
        while True:
            fail_stale(self.study, self.heartbeat)
            settled, deaths, running, waiting, used = scan(self.study)
            todo = [p for p in points if p not in settled and p not in running and not given_up(deaths, p)]
            if todo:
                if not waiting and used >= len(points):
                    # The sampler thinks the grid is visited (e.g. a crash failed a trial): queue it again.
                    self.study.enqueue_trial(json.loads(todo[0]), user_attrs={"requeued": True})
                self.study.optimize(self.objective, n_trials=1, catch=(PointFailed,))
            elif running:
                time.sleep(POLL_S)  # other workers are busy on the last points (or died: see fail_stale)
            else:
                return

    def run_tpe(self, n_trials: int) -> None:
        """Stop when the study holds ``n_trials`` finished trials or every point is settled."""
        points = [ident(p) for p in self.grid_params()]
        while True:
            fail_stale(self.study, self.heartbeat)
            settled, deaths, running, waiting, _ = scan(self.study)
            finished = len(self.study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED)))
            left = [p for p in points if p not in settled and not given_up(deaths, p)]
            if finished < n_trials and left:
                self.study.optimize(self.objective, n_trials=1, catch=(PointFailed,))
            elif running:
                time.sleep(POLL_S)
            else:
                return

    def grid_params(self) -> list[dict]:
        return [{k: encode(v) for k, v in p.items()} for p in quick_start.grid_points(self.config)]


# --- summary --------------------------------------------------------------------------------
def summarize(config: Config, study: optuna.Study) -> dict | None:
    """MMRec's end-of-grid log, from the study (the same on every worker); returns the best record."""
    metric = str(config["valid_metric"] or "Recall@20").lower()
    settled, deaths, _, _, _ = scan(study)
    done: list[tuple[dict, dict]] = []
    for p in quick_start.grid_points(config):
        pid = ident({k: encode(v) for k, v in p.items()})
        if pid in settled:
            rec = settled[pid].user_attrs.get("record") or {"status": "failed", "error": "no record"}
            done.append((p, rec))
        elif given_up(deaths, pid):
            done.append((p, {"status": "failed", "error": f"its worker died {deaths[pid]} times"}))
    return quick_start.log_summary(done, metric, f" (study {study.study_name}: {len(done)} points settled)")


# --- local worker processes -----------------------------------------------------------------
def _worker_process(config: Config, args: argparse.Namespace, output: Path, device: str, index: int) -> None:
    """Entry point of one spawned worker: its own log file and device, then the search."""
    import sys
    from utils.logger import init_logger
    from utils.utils import resolve_device

    stamp = time.strftime("%Y%m%d-%H%M%S")
    init_logger(output / "logs" / f"{config['model']}-{config['dataset']}-{stamp}-w{index}-{os.getpid()}.log",
                args.quiet)
    config["device"] = resolve_device(device, config["use_gpu"])
    sys.exit(run_search(config, args, output))


def spawn_workers(config: Config, args: argparse.Namespace, output: Path, devices: list[str]) -> list[int]:
    """Run ``args.workers`` worker processes (round-robin over ``devices``); their exit codes."""
    ctx = mp.get_context("spawn")
    one = argparse.Namespace(**{**vars(args), "workers": 1, "devices": None})
    procs = [ctx.Process(target=_worker_process, args=(config, one, output, devices[i % len(devices)], i),
                         name=f"search-worker-{i}") for i in range(args.workers)]
    for i, proc in enumerate(procs):
        proc.start()
        logging.getLogger().info(f"worker {i} (pid {proc.pid}) on {devices[i % len(devices)]}")
    try:
        for proc in procs:
            proc.join()
    except KeyboardInterrupt:
        for proc in procs:
            proc.join(timeout=30)  # they got the same SIGINT; their trials stay RUNNING and are retried
        raise
    return [int(p.exitcode or 0) for p in procs]


def run_search(config: Config, args: argparse.Namespace, output: Path) -> int:
    """``main.py --search/--storage/--study/--workers``: 0 when a best point exists, else 1."""
    if args.search == "tpe" and not args.trials:
        raise ConfigError("--search tpe needs --trials N (the number of trials in the whole study)")
    if args.search == "grid" and args.trials:
        raise ConfigError("--trials is for --search tpe; --search grid runs every point once")
    if args.workers < 1:
        raise ConfigError(f"--workers must be at least 1, got {args.workers}")
    devices = [d.strip() for d in (args.devices or "").split(",") if d.strip()] or [str(config["device"])]
    study = open_study(config, args, output)  # before spawning: creates tables, checks the config
    log = logging.getLogger()
    log.info(f"study '{study.study_name}' in {storage_url(args, output)} ({args.search})")
    if args.workers > 1:
        codes = spawn_workers(config, args, output, devices)
        best = summarize(config, study)
        bad = [c for c in codes if c != 0]
        if bad:
            log.error(f"{len(bad)} of {len(codes)} workers exited with an error (codes {bad}); see their logs")
        return 0 if best is not None and not bad else 1
    if args.devices:
        from utils.utils import resolve_device
        config["device"] = resolve_device(devices[0], config["use_gpu"])
    worker = Worker(config, args, output, study)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    if args.search == "grid":
        worker.run_grid()
    else:
        worker.run_tpe(int(args.trials))
    return 0 if summarize(config, study) is not None else 1

