"""Grid or TPE search through an Optuna study, shared by any number of workers and machines.

Every worker runs the same command with the same ``--storage`` and ``--study``; Optuna's storage
is the only coordination, and every worker ends with the same MMRec summary, read from the study.

**How a point is claimed.** Each grid point is trained through a *claim*: a trial created WAITING
with the point's params fixed at creation (``enqueue_trial``; user attrs ``role: claim`` and
``point``, written in the same storage operation that creates the trial). A worker takes a WAITING
trial with Optuna's WAITING -> RUNNING switch (``set_trial_state_values``), which is atomic: a
row lock (SELECT ... FOR UPDATE) under PostgreSQL, the order of the log under a journal file, and
under SQLite, where FOR UPDATE does nothing, a file lock of ours around it (``sqlite_lock``; SQLite
serves one machine). So each claim runs on one worker.
Two workers may still queue a claim for the same point at the same moment; then the claim with the
lowest trial number wins. Trial numbers are handed out atomically and in creation order (RDBStorage
numbers a trial inside the write transaction that inserts it, after locking the study row, which
SQLite's single writer makes implicit; the journal numbers in log order), so a claim created later
always has a higher number, and every lower one is visible to whoever holds it. A worker that
took claim N looks, before training, at the claims of the same point numbered below N: if one is
waiting, running or settled, N is closed as its duplicate (FAIL with ``duplicate_of``) untrained. Claims that died never
come back (a FAIL is final), so at most one claim of a point trains at a time and a settled one
is never trained again. With ``--search tpe`` a worker first runs a *proposal* trial (queued the
same way, ``role: proposal``) in which TPE picks the params; a new point becomes a claim, a point
already settled completes the proposal with the known value (TPE learns it again), and the
proposal itself is closed (FAIL), which TPE ignores.

**Dead workers.** A worker stamps its running trial (Optuna's RDB heartbeat, or a ``heartbeat``
system attr under a journal); any worker fails a trial whose stamp is older than twice the
interval. A point whose claim died is queued again (up to ``MAX_RETRY`` times) by the next worker
that looks, and resumes from its ``resume.pt``.
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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import optuna
from optuna.storages import RDBStorage
from optuna.trial import FrozenTrial, Trial, TrialState

from utils import quick_start
from utils.claim import PointClaim
from utils.configurator import Config
from utils.dataset import fingerprint as data_fingerprint
from utils.errors import ConfigError, DataError, HarnessError, Interrupted
from utils.metrics import dict2str
from utils.results import DATA_KEY, ResultsStore, point_key
from utils.utils import resolve_device, threads_per_worker

MAX_RETRY = 3            # a point whose worker died this many times more is given up
POLL_S = 1.0             # how often an idle worker looks at the study again
DEFAULT_HEARTBEAT_S = 60  # heartbeat interval; grace period is twice that
RECORD_KEYS = ("status", "error", "valid", "test", "best_epoch", "epochs_run", "seconds", "key",
               "parameters", "seed", "valid_metric", "model", "dataset", "checkpoint", "per_user",
               "threads", "device", DATA_KEY)
CLAIM, PROPOSAL = "claim", "proposal"  # the roles of a trial (user attr "role")


class PointFailed(Exception):
    """Training of a point ended in a recorded failure (e.g. NaN loss): a result, not a crash."""


class Closed(Exception):
    """The trial is closed without training (a duplicate claim, a proposal): not a death."""


PRUNE_STARTUP_TRIALS = 5   # --prune median: finished trials before any pruning
PRUNE_WARMUP_EPOCHS = 20   # --prune median: the first epoch at which a trial may be pruned (--prune_warmup)


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
    """What must be equal for two workers to share a study (grid lists and the data's content
    fingerprint included, device not)."""
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


@contextlib.contextmanager
def sqlite_lock(url: str) -> Iterator[None]:
    """For SQLite, an exclusive file lock beside the database (SQLite serves one machine): around
    opening the storage, so that local workers starting together do not race to create the schema,
    and around taking a trial, which Optuna does with SELECT ... FOR UPDATE, a no-op in SQLite."""
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
    """A SQLAlchemy URL -> RDBStorage with heartbeat; ``journal:PATH`` -> JournalStorage.

    No stale-trial callback: a dead worker's trial is only failed, and ``Worker`` queues its
    point again (the same way for every storage and every cause of death)."""
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
            with warnings.catch_warnings(), sqlite_lock(url):
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                return RDBStorage(url, engine_kwargs=engine, heartbeat_interval=heartbeat,
                                  grace_period=2 * heartbeat)
        except ImportError as exc:
            raise ConfigError(f"--storage {url.split(':', 1)[0]} needs a driver: {exc}") from None
        except Exception as exc:  # noqa: BLE001 - SQLAlchemy raises many kinds; one line is enough
            error = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            if not any(w in error.lower() for w in ("exist", "duplicate", "unique constraint", "integrity")):
                break  # not the creation race: report it at once
            time.sleep(0.5 + random.random() * (attempt + 1))
    raise ConfigError(f"cannot open --storage {url}: {error}")


def prune_warmup(args: argparse.Namespace) -> int:
    """``--prune_warmup`` (the first epoch at which a trial may be pruned: Optuna's steps are epochs),
    else 20; refused below 0 or without ``--prune median``."""
    value = getattr(args, "prune_warmup", None)
    if value is None:
        return PRUNE_WARMUP_EPOCHS
    if value < 0:
        raise ConfigError(f"--prune_warmup must be an epoch >= 0, got {value}")
    if getattr(args, "prune", "none") == "none":
        raise ConfigError("--prune_warmup applies to a pruned search: add --prune median")
    return value


def open_study(config: Config, args: argparse.Namespace, output: Path) -> optuna.Study:
    """Create or join the study; refuse one that was made with a different config or data."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # our log says which study, once
    url = storage_url(args, output)
    storage = make_storage(url, heartbeat_seconds(args))
    name = args.study or f"{config['model']}-{config['dataset']}-{args.search}"
    # Claims carry their params, so the grid needs no sampler; TPE samples in proposals.
    # seeded by the selection seed (+ the worker's index): one worker's TPE search is reproducible
    seeds = config["seed"] if isinstance(config["seed"], list) else [config["seed"]]
    seed = int(seeds[0] or 0) + int(getattr(args, "worker_index", 0) or 0)
    sampler = optuna.samplers.TPESampler(seed=seed) if args.search == "tpe" else optuna.samplers.RandomSampler(seed=seed)
    # no pruning before 5 trials have finished, nor before epoch --prune_warmup:
    # auxiliary weights that start slowly (e.g. SIGREC at 0.1) are not cut at their first epochs
    pruner = optuna.pruners.MedianPruner(n_startup_trials=PRUNE_STARTUP_TRIALS, n_warmup_steps=prune_warmup(args)) \
        if args.prune == "median" else optuna.pruners.NopPruner()
    study = optuna.create_study(storage=storage, sampler=sampler, pruner=pruner, study_name=name,
                                direction="maximize", load_if_exists=True)
    mine = fingerprint(config, args.search)
    theirs = study.user_attrs.get("config_fingerprint")
    if theirs is None:
        study.set_user_attr("config_fingerprint", mine)
        study.set_user_attr("grid", {k: config[k] for k in config.grid_keys})
    elif theirs != mine:
        raise ConfigError(f"study '{name}' in {url} was made with a different config, data or search "
                          f"(fingerprint {theirs}, yours {mine}); use the same command or another --study")
    return study


# --- heartbeat ------------------------------------------------------------------------------
def optuna_heartbeat(storage: optuna.storages.BaseStorage) -> bool:
    """Whether the storage has Optuna's own heartbeat (RDBStorage, which Optuna wraps in a cache;
    its stamps use the database's clock). Journal storage has none."""
    interval = getattr(storage, "get_heartbeat_interval", None)
    return callable(interval) and hasattr(storage, "record_heartbeat") and interval() is not None


@contextlib.contextmanager
def heartbeat(study: optuna.Study, trial_id: int, seconds: int) -> Iterator[None]:
    """Stamp the trial now and every ``seconds`` until the block ends: Optuna's heartbeat where
    the storage has one, else a ``heartbeat`` system attr read by ``fail_stale``."""
    storage = study._storage
    if optuna_heartbeat(storage):
        def beat() -> None:
            storage.record_heartbeat(trial_id)
    else:
        def beat() -> None:
            storage.set_trial_system_attr(trial_id, "heartbeat", time.time())
    beat()  # at once: a claim is never left without a stamp for long
    stop = threading.Event()

    def loop() -> None:
        while not stop.wait(seconds):
            try:
                beat()
            except Exception as exc:  # noqa: BLE001 - e.g. another worker failed the trial as stale
                logging.getLogger().warning(f"heartbeat of trial id {trial_id} stopped: {exc}")
                return

    thread = threading.Thread(target=loop, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


def fail_stale(study: optuna.Study, seconds: int) -> None:
    """Mark the trials of dead workers FAIL (their points are queued again by ``Worker``)."""
    if optuna_heartbeat(study._storage):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            optuna.storages.fail_stale_trials(study)
        return
    now = time.time()
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        started = t.datetime_start.timestamp() if t.datetime_start else now
        if now - max(float(t.system_attrs.get("heartbeat", 0.0)), started) > 2 * seconds:
            try:
                if study._storage.set_trial_state_values(t._trial_id, state=TrialState.FAIL):
                    logging.getLogger().warning(f"trial {t.number} lost its worker; it will be retried")
            except optuna.exceptions.UpdateFinishedTrialError:
                pass  # another worker failed it first


# --- the study's view of the grid -----------------------------------------------------------
def role(t: FrozenTrial) -> str | None:
    return t.user_attrs.get("role")


def point_of(t: FrozenTrial) -> str | None:
    """The point a claim stands for (fixed when it was created); None for other trials."""
    return t.user_attrs.get("point") if role(t) == CLAIM else None


def is_duplicate(t: FrozenTrial) -> bool:
    return t.user_attrs.get("duplicate_of") is not None


def is_live(t: FrozenTrial) -> bool:
    return t.state in (TrialState.WAITING, TrialState.RUNNING) and not is_duplicate(t)


def settles(t: FrozenTrial) -> bool:
    """Whether a claim is its point's final outcome (trained, recorded failure, or pruned)."""
    if point_of(t) is None or is_duplicate(t):
        return False
    if t.state in (TrialState.COMPLETE, TrialState.PRUNED):
        return True
    return t.state == TrialState.FAIL and t.user_attrs.get("status") == "failed"


def died(t: FrozenTrial) -> bool:
    """A claim that ended FAIL without a result: its worker died or crashed."""
    return (point_of(t) is not None and t.state == TrialState.FAIL and not is_duplicate(t)
            and t.user_attrs.get("status") != "failed")


@dataclass
class View:
    """The study's trials seen as grid points."""
    settled: dict[str, FrozenTrial] = field(default_factory=dict)  # point -> the claim that settled it
    live: dict[str, list[FrozenTrial]] = field(default_factory=dict)  # point -> waiting/running claims
    deaths: dict[str, int] = field(default_factory=dict)
    finished: int = 0   # COMPLETE or PRUNED trials (the budget of --trials)
    proposals: int = 0  # waiting or running proposals

    def running(self) -> set[str]:
        return {p for p, ts in self.live.items() if any(t.state == TrialState.RUNNING for t in ts)}


def scan(study: optuna.Study) -> View:
    view = View()
    for t in study.get_trials(deepcopy=False):
        if t.state in (TrialState.COMPLETE, TrialState.PRUNED):
            view.finished += 1
        pid = point_of(t)
        if pid is None:
            view.proposals += role(t) == PROPOSAL and is_live(t)
        elif settles(t):
            view.settled.setdefault(pid, t)
        elif is_live(t):
            view.live.setdefault(pid, []).append(t)
        elif died(t):
            view.deaths[pid] = view.deaths.get(pid, 0) + 1
    return view


def given_up(deaths: dict[str, int], pid: str) -> bool:
    return deaths.get(pid, 0) > MAX_RETRY


def earlier_claim(study: optuna.Study, number: int, pid: str) -> FrozenTrial | None:
    """A claim of the same point numbered below ``number`` that is waiting, running or settled:
    it has priority (see the module docstring)."""
    for t in study.get_trials(deepcopy=False):
        if t.number < number and point_of(t) == pid and (is_live(t) or settles(t)):
            return t
    return None


# --- one trial ------------------------------------------------------------------------------
def pruning_callback(trial: Trial) -> Callable[[int, float], None]:
    """Reports each validation score to the trial and stops the point when told to prune."""

    def on_eval(epoch: int, score: float) -> None:
        trial.report(float(score), epoch)
        if trial.should_prune():
            raise optuna.TrialPruned(f"pruned at epoch {epoch} (median rule)")

    return on_eval


class Worker:
    """Takes the study's queued trials one at a time: trains claims, runs TPE's proposals."""

    def __init__(self, config: Config, args: argparse.Namespace, output: Path, study: optuna.Study) -> None:
        self.config, self.args, self.output, self.study = config, args, output, study
        if config[DATA_KEY] is None:  # keys must name the data (run_search has hashed it already)
            config[DATA_KEY] = data_fingerprint(config, output)
        self.store = ResultsStore(output / "results.jsonl")
        self.metric = str(config["valid_metric"] or "Recall@20").lower()
        self.heartbeat = heartbeat_seconds(args)
        self.choices = space(config)
        self.points = {ident(p): p for p in self.grid_params()}
        self.data: quick_start.Data | None = None
        self.url = storage_url(args, output)
        self.log = logging.getLogger()

    # --- queue and take -------------------------------------------------------------------
    def enqueue(self, pid: str) -> None:
        """Queue a claim for a point: params, role and point fixed at its creation."""
        self.study.enqueue_trial(self.points[pid], user_attrs={"role": CLAIM, "point": pid})

    def take(self, only: Any = None) -> bool:
        """Take one WAITING trial (atomically; if ``only``, a claim of one of those points) and run
        it; False when none was left."""
        for t in self.study.get_trials(deepcopy=False, states=(TrialState.WAITING,)):
            if only is not None and point_of(t) not in only:
                continue
            try:
                with sqlite_lock(self.url):
                    if not self.study._storage.set_trial_state_values(t._trial_id, state=TrialState.RUNNING):
                        continue  # another worker took it first
            except optuna.exceptions.UpdateFinishedTrialError:
                continue
            self.run_trial(t._trial_id)
            return True
        return False

    def run_trial(self, trial_id: int) -> None:
        """Run a taken trial under a heartbeat and tell the study how it ended."""
        self.study._thread_local.cached_all_trials = None  # samplers must see the latest trials
        with heartbeat(self.study, trial_id, self.heartbeat):
            trial = Trial(self.study, trial_id)
            try:
                value = self.propose(trial) if trial.user_attrs.get("role") == PROPOSAL else self.objective(trial)
            except optuna.TrialPruned as exc:
                self.log.info(f"trial {trial.number} pruned: {exc}")
                self.study.tell(trial, state=TrialState.PRUNED)
                return
            except (PointFailed, Closed):
                self.study.tell(trial, state=TrialState.FAIL)
                return
            except BaseException:
                with contextlib.suppress(Exception):  # a crash or Ctrl-C: the point is queued again later
                    self.study.tell(trial, state=TrialState.FAIL)
                raise
        self.study.tell(trial, value)

    # --- what a trial does ----------------------------------------------------------------
    def objective(self, trial: Trial) -> float:
        """A claim: skip it if an earlier claim of its point has priority, else reuse or train."""
        params = {k: trial.suggest_categorical(k, v) for k, v in self.choices.items()}
        point = decode(self.config, params)
        cfg = self.config.point(point)
        key = point_key(cfg.final_config_dict)
        trial.set_user_attr("key", key)
        earlier = earlier_claim(self.study, trial.number, trial.user_attrs["point"])
        if earlier is not None:
            trial.set_user_attr("duplicate_of", earlier.number)
            self.log.info(f"trial {trial.number}: its point was claimed first by trial {earlier.number}; skipped")
            raise Closed
        self.log.info(f"=========trial {trial.number}: Parameters:{quick_start.params_text(point)}=======")
        previous = None if self.args.rerun else self.store.finished(key)
        if previous is not None:
            self.log.info(f"already in results.jsonl ({previous['status']}), reusing it without training")
            return self.finish(trial, previous, reused=True)
        return self.train(trial, cfg, point, key)

    def propose(self, trial: Trial) -> float:
        """A TPE proposal: TPE picks a point; a new one is queued as a claim."""
        params = {k: trial.suggest_categorical(k, v) for k, v in self.choices.items()}
        pid = ident(params)
        view = scan(self.study)
        if pid in view.settled:
            same = view.settled[pid]
            trial.set_user_attr("duplicate_of", same.number)
            if same.state == TrialState.COMPLETE:
                return float(same.value)  # TPE asked again: the known value teaches it as much
        elif pid in view.live:
            trial.set_user_attr("duplicate_of", view.live[pid][0].number)
            time.sleep(POLL_S)  # TPE insists on a point being trained: do not spin
        elif not given_up(view.deaths, pid):
            self.enqueue(pid)
        raise Closed

    def train(self, trial: Trial, cfg: Config, point: dict, key: str) -> float:
        if self.data is None:
            self.data = quick_start.load_data(self.config, self.output)
            if self.data.fingerprint != cfg[DATA_KEY]:
                raise DataError(f"the files of dataset {cfg['dataset']} changed since this search started "
                                f"(fingerprint {cfg[DATA_KEY]}, now {self.data.fingerprint}); start it again")
        folder = quick_start.run_dir(self.output, cfg, key)
        # the point's file claim too: a plain run on the same output may be training it
        claim = PointClaim(folder)
        if not claim.acquire():
            self.log.info(f"point claimed by {claim.holder()} (another run on this output); waiting for it")
            claim.acquire(wait=True)
        with claim:
            previous = None if self.args.rerun else self.store.finished(key)
            if previous is not None:
                self.log.info(f"finished by another run meanwhile ({previous['status']}); reusing its record")
                return self.finish(trial, previous, reused=True)
            quick_start.write_point_config(folder, cfg)
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
                          seed=int(cfg["seed"]), valid_metric=self.metric, finished_at=time.time(),
                          data_fingerprint=cfg[DATA_KEY])
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

    # --- the loop -------------------------------------------------------------------------
    def run(self, n_trials: int | None = None) -> None:
        """Work until every point is settled (grid), or the study holds ``n_trials`` finished
        trials (TPE); then wait for the points other workers are training, so that every
        worker's summary is final."""
        while True:
            fail_stale(self.study, self.heartbeat)
            view = scan(self.study)
            open_points = [p for p in self.points if p not in view.settled and not given_up(view.deaths, p)]
            done = not open_points or (n_trials is not None and view.finished >= n_trials)
            if done:
                if self.take(only=view.settled):
                    continue  # a claim queued twice for a settled point: closed as a duplicate
                if not view.running() & set(open_points):
                    return
                time.sleep(POLL_S)
                continue
            # Queue a claim for every point that has none: the whole grid, or (TPE) the points whose
            # claim died. A claim queued twice at once is closed as a duplicate when taken.
            for pid in open_points:
                if pid not in view.live and (n_trials is None or pid in view.deaths):
                    self.enqueue(pid)
            if self.take():
                continue
            if n_trials is not None and view.finished + len(view.live) + view.proposals < n_trials:
                if any(p not in view.live for p in open_points):
                    self.study.enqueue_trial({}, user_attrs={"role": PROPOSAL})
                    continue
            time.sleep(POLL_S)  # the open points are being trained by other workers

    def grid_params(self) -> list[dict]:
        return [{k: encode(v) for k, v in p.items()} for p in quick_start.grid_points(self.config)]


# --- summary --------------------------------------------------------------------------------
def summarize(config: Config, study: optuna.Study) -> dict | None:
    """MMRec's end-of-grid log, from the study (the same on every worker); returns the best record."""
    metric = str(config["valid_metric"] or "Recall@20").lower()
    view = scan(study)
    settled, deaths = view.settled, view.deaths
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
def _worker_process(config: Config, args: argparse.Namespace, output: Path, device: str, index: int,
                    threads: int | None = None) -> None:
    """Entry point of one spawned worker: its own log file, device and thread count, then the search."""
    import signal
    import sys

    import torch
    from utils.logger import init_logger, to_log_file
    from utils.utils import resolve_device

    def on_sigterm(signum: int, frame: object) -> None:
        raise Interrupted(signal.Signals(signum).name)

    signal.signal(signal.SIGTERM, on_sigterm)  # like Ctrl-C: the running trial is failed and retried later
    if threads:
        torch.set_num_threads(threads)

    stamp = time.strftime("%Y%m%d-%H%M%S")
    init_logger(output / "logs" / f"{config['model']}-{config['dataset']}-{stamp}-w{index}-{os.getpid()}.log",
                args.quiet)
    config["device"] = resolve_device(device, config["use_gpu"])
    args.worker_index = index  # this process's copy: its sampler's seed
    try:
        code = run_search(config, args, output)
    except (KeyboardInterrupt, Interrupted) as exc:
        line = f"worker {index} {'interrupted' if isinstance(exc, KeyboardInterrupt) else f'terminated ({exc})'}"
        print(line, file=sys.stderr, flush=True)
        to_log_file(line)
        code = 130 if isinstance(exc, KeyboardInterrupt) else 143
    except HarnessError as exc:
        print(f"error: {exc}", file=sys.stderr, flush=True)
        to_log_file(f"error: {exc}")
        code = 2
    sys.exit(code)


def spawn_workers(config: Config, args: argparse.Namespace, output: Path, devices: list[str]) -> list[int]:
    """Run ``args.workers`` worker processes (round-robin over ``devices``); their exit codes."""
    ctx = mp.get_context("spawn")
    one = argparse.Namespace(**{**vars(args), "workers": 1, "devices": None})
    on_cpu = [str(resolve_device(d, config["use_gpu"])).startswith("cpu") for d in devices]
    # CPU workers split the cores between them (each max(1, cores // N) threads) unless
    # --threads or OMP_NUM_THREADS says otherwise
    threads = [threads_per_worker(args.workers, getattr(args, "threads", None), on_cpu[i % len(devices)])
               for i in range(args.workers)]
    procs = [ctx.Process(target=_worker_process, args=(config, one, output, devices[i % len(devices)], i, threads[i]),
                         name=f"search-worker-{i}") for i in range(args.workers)]
    for i, proc in enumerate(procs):
        proc.start()
        logging.getLogger().info(f"worker {i} (pid {proc.pid}) on {devices[i % len(devices)]}, "
                                 f"{threads[i] or 'default'} thread(s)")
    try:
        for proc in procs:
            proc.join()
    except KeyboardInterrupt:
        for proc in procs:
            proc.join(timeout=30)  # they got the same SIGINT; their trials stay RUNNING and are retried
        raise
    except Interrupted:
        for proc in procs:
            proc.terminate()  # SIGTERM reached this process only: pass it on
        for proc in procs:
            proc.join(timeout=30)
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
    # The data's content is part of every key and of the study's fingerprint: hash it first.
    config[DATA_KEY] = data_fingerprint(config, output)
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
    worker.run(None if args.search == "grid" else int(args.trials))
    return 0 if summarize(config, study) is not None else 1

