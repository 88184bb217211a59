"""Training loop: optimiser and scheduler, epoch hooks, validation every ``eval_step`` epochs,
test only when validation improves, early stopping as in MMRec, NaN detection and resume."""
from __future__ import annotations

import copy
import logging
import math
import os
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch import optim

from utils.errors import ConfigError, TrainingError
from utils.evaluator import EvalResult, autocast, evaluate
from utils.logger import progress
from utils.metrics import dict2str

OPTIMIZERS = {"adam": optim.Adam, "sgd": optim.SGD, "adagrad": optim.Adagrad, "rmsprop": optim.RMSprop}


def early_stopping(value: float, best: float, cur_step: int, max_step: int) -> tuple[float, int, bool, bool]:
    """MMRec's rule: a strict improvement resets the counter; stop once it exceeds ``max_step``.

    Returns (best, cur_step, stop, improved)."""
    if value > best:
        return value, 0, False, True
    cur_step += 1
    return best, cur_step, cur_step > max_step, False


def build_optimizer(config: Any, params: Any) -> optim.Optimizer:
    name = str(config["learner"] or "adam").lower()
    if name not in OPTIMIZERS:
        raise ConfigError(f"learner '{config['learner']}' is not supported; use one of {', '.join(OPTIMIZERS)}")
    kwargs = {"lr": config["learning_rate"], "weight_decay": config["weight_decay"] or 0.0}
    if name == "adam":
        kwargs["fused"] = True  # one kernel per step: ~9x faster on dense feature tables, same maths
    return OPTIMIZERS[name](params, **kwargs)


def build_scheduler(config: Any, optimizer: optim.Optimizer) -> optim.lr_scheduler.LambdaLR:
    """LambdaLR with factor a^(epoch / b), from ``learning_rate_scheduler: [a, b]``."""
    a, b = config["learning_rate_scheduler"] or [1.0, 50]
    return optim.lr_scheduler.LambdaLR(optimizer, lambda epoch: a ** (epoch / b))


def save_atomic(obj: Any, path: Path) -> None:
    """torch.save to a temporary file, then rename: a crash never leaves a torn file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def sums_text(sums: list[float]) -> str:
    """A loss value for an error line: nan or inf, or the summed terms."""
    total = sum(sums)
    return str(total) if not math.isfinite(total) else ", ".join(f"{v:g}" for v in sums)


def rng_state() -> dict:
    """Every RNG a training step may draw from: Python, numpy, torch's CPU and CUDA generators."""
    state = {"torch_rng": torch.get_rng_state(), "numpy_rng": np.random.get_state(),
             "python_rng": random.getstate()}
    if torch.cuda.is_available():
        state["cuda_rng"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    """Restore ``rng_state()``'s output, whatever device its tensors were loaded onto
    (``torch.set_rng_state`` takes only a CPU byte tensor)."""
    torch.set_rng_state(state["torch_rng"].cpu())
    np.random.set_state(state["numpy_rng"])
    random.setstate(state["python_rng"])
    cuda = state.get("cuda_rng")
    if cuda is not None and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all([t.cpu() for t in cuda])


@dataclass
class FitResult:
    """What one grid point's training produced."""
    best_epoch: int = -1
    best_valid_score: float = -math.inf
    best_valid: dict = field(default_factory=dict)
    best_test: dict = field(default_factory=dict)
    test_eval: EvalResult | None = None
    best_state: dict | None = None
    history: list = field(default_factory=list)
    epochs_run: int = 0
    resumed_seconds: float = 0.0  # training seconds of earlier runs of this point (from resume.pt)


class Trainer:
    """Trains one model at one grid point."""

    def __init__(self, config: Any, model: torch.nn.Module) -> None:
        self.config, self.model = config, model
        self.logger = logging.getLogger()
        self.device = config["device"]
        self.epochs = int(config["epochs"])
        self.eval_step = max(1, int(config["eval_step"] or 1))
        self.stopping_step = int(config["stopping_step"])
        self.valid_metric = str(config["valid_metric"] or "Recall@20").lower()
        self.quiet = bool(config["quiet"])
        self.clip = config["clip_grad_norm"]
        self.optimizer = build_optimizer(config, [p for p in model.parameters() if p.requires_grad])
        self.scheduler = build_scheduler(config, self.optimizer)
        # Called as on_eval(epoch, valid_score) after every validation; it may raise to stop
        # the point (the search uses it for pruning).
        self.on_eval: Callable[[int, float], None] | None = None
        # MMRec's req_training: a closed-form model (EASE) sets the class attribute
        # ``req_training = False`` (an MMRec yaml may set the key); see _fit_without_batches.
        self.req_training = getattr(model, "req_training", True) is not False and config["req_training"] is not False
        self.amp = bool(config.get("amp"))  # bf16 autocast around calculate_loss (opt-in)

    # --- one epoch -----------------------------------------------------------------------
    def run_epoch(self, train_data: Any, epoch: int) -> tuple[float | tuple, float]:
        """One training epoch as MMRec times it: ``pre_epoch_processing`` (e.g. FREEDOM's graph
        pruning), the batches and the scheduler step. Returns (loss, seconds)."""
        t0 = time.perf_counter()
        self.model.pre_epoch_processing()
        if self.req_training:
            loss = self._train_epoch(train_data, epoch)
            self.scheduler.step()
        else:
            loss = self._fit_without_batches(train_data)
        if torch.device(self.device).type == "cuda":
            torch.cuda.synchronize(self.device)  # kernels still queued belong to this epoch
        return loss, time.perf_counter() - t0

    def _fit_without_batches(self, train_data: Any) -> float:
        """The epoch of a model that takes no gradient steps (``req_training`` False): one call of
        its ``fit(train_data)`` if it has one (MMRec's such models fit in ``__init__``); no batch
        is read, no scheduler step, loss 0."""
        self.model.train()
        fit = getattr(self.model, "fit", None)
        if callable(fit):
            fit(train_data)
        return 0.0

    def _train_epoch(self, train_data: Any, epoch: int) -> float | tuple:
        """The batches of one epoch. Loss sums and the non-finite check stay on the device and
        are read once, at the end: no host-device synchronisation per step."""
        self.model.train()
        total = first_bad = None
        n_terms = 0
        batches = progress(train_data, desc=f"epoch {epoch}", leave=False, disable=self.quiet)
        for step, interaction in enumerate(batches):
            interaction = interaction.to(self.device)
            self.optimizer.zero_grad()
            with autocast(self.device, self.amp):
                losses = self.model.calculate_loss(interaction)
            terms = tuple(losses) if isinstance(losses, (tuple, list)) else (losses,)
            loss = sum(terms) if len(terms) > 1 else terms[0]
            values = torch.stack([torch.as_tensor(t).detach().reshape(()).double() for t in terms])
            if total is None:
                n_terms = len(terms)
                total = torch.zeros_like(values)
                first_bad = torch.full((), -1, dtype=torch.long, device=values.device)
            total += values
            # the first batch whose loss is not finite, kept on the device
            bad = ~torch.isfinite(loss.detach()).reshape(())
            first_bad = torch.where(bad & (first_bad < 0), torch.full_like(first_bad, step), first_bad)
            loss.backward()
            if self.clip:
                kwargs = self.clip if isinstance(self.clip, dict) else {"max_norm": float(self.clip)}
                torch.nn.utils.clip_grad_norm_(self.model.parameters(), **kwargs)
            self.optimizer.step()
        if total is None:
            return 0.0
        bad_step = int(first_bad)  # the epoch's one read-back, with the sums below
        sums = total.tolist()
        if bad_step >= 0:
            raise TrainingError(f"training loss became {sums_text(sums)} at epoch {epoch} (first non-finite at "
                                f"batch {bad_step}); lower learning_rate or check the model's regularisation")
        return tuple(sums) if n_terms > 1 or isinstance(losses, (tuple, list)) else sums[0]

    @staticmethod
    def _loss_text(loss: float | tuple) -> str:
        if isinstance(loss, tuple):
            return ", ".join(f"train_loss{i + 1}: {v:.4f}" for i, v in enumerate(loss))
        return f"train loss: {loss:.4f}"

    def evaluate(self, loader: Any) -> EvalResult:
        return evaluate(self.model, loader, self.config)

    # --- resume --------------------------------------------------------------------------
    def _state(self, epoch: int, fit: FitResult, cur_step: int, train_data: Any, seconds: float) -> dict:
        return {"epoch": epoch, "model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(), "fit": fit, "cur_step": cur_step,
                "loader": train_data.state_dict() if hasattr(train_data, "state_dict") else None,
                "seconds": seconds, **rng_state()}

    def _restore(self, path: Path, train_data: Any) -> tuple[int, FitResult, int]:
        # Everything is read onto the CPU: load_state_dict copies weights and optimiser state to
        # the parameters' device, and RNG states must stay CPU byte tensors.
        state = torch.load(path, map_location="cpu", weights_only=False)
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        if state["loader"] is not None and hasattr(train_data, "load_state_dict"):
            train_data.load_state_dict(state["loader"])
        set_rng_state(state)
        fit = state["fit"]
        fit.resumed_seconds = float(state.get("seconds", 0.0))
        self.logger.info(f"resumed from {path} at epoch {state['epoch']}")
        return state["epoch"], fit, state["cur_step"]

    def _restore_or_start(self, path: Path, train_data: Any) -> tuple[int, FitResult, int]:
        """Resume from ``path``; an unusable file (torn, from other code, another model) starts the
        point afresh with one warning, the model, optimiser, loader and RNGs as they were."""
        before = (copy.deepcopy(self.model.state_dict()), copy.deepcopy(self.optimizer.state_dict()),
                  self.scheduler.state_dict(),
                  train_data.state_dict() if hasattr(train_data, "state_dict") else None, rng_state())
        try:
            return self._restore(path, train_data)
        except Exception as exc:  # noqa: BLE001 - any unusable checkpoint means: train from scratch
            model_state, optim_state, sched_state, loader_state, rngs = before
            self.model.load_state_dict(model_state)
            self.optimizer.load_state_dict(optim_state)
            self.scheduler.load_state_dict(sched_state)
            if loader_state is not None:
                train_data.load_state_dict(loader_state)
            set_rng_state(rngs)
            reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            self.logger.warning(f"{path} cannot be resumed ({type(exc).__name__}: {reason}); "
                                f"training this point afresh")
            return 0, FitResult(), 0

    # --- the loop ------------------------------------------------------------------------
    def fit(self, train_data: Any, valid_data: Any, test_data: Any, resume_path: Path | None = None) -> FitResult:
        fit, start, cur_step = FitResult(), 0, 0
        if resume_path is not None and Path(resume_path).exists():
            start, fit, cur_step = self._restore_or_start(Path(resume_path), train_data)
        began = time.perf_counter()
        interval = int(self.config["checkpoint_interval"] or 0)
        name = self.config["model"]
        names = tuple(getattr(self.model, "loss_names", ()) or ())
        if len(names) > 1 and self.req_training:  # the terms, once; the epoch lines stay MMRec's
            self.logger.info("loss terms: " + ", ".join(f"train_loss{i + 1} = {n}" for i, n in enumerate(names)))
        epochs = progress(range(start, self.epochs), desc=name, initial=start, total=self.epochs,
                          disable=self.quiet)
        for epoch in epochs:
            loss, train_time = self.run_epoch(train_data, epoch)
            record = {"epoch": epoch, "loss": sum(loss) if isinstance(loss, tuple) else loss,
                      "train_seconds": train_time}
            if isinstance(loss, tuple):  # each weighted term (loss_names), for reading a study
                record["loss_terms"] = list(loss)
            self.logger.info(f"epoch {epoch} training [time: {train_time:.2f}s, {self._loss_text(loss)}]")
            note = self.model.post_epoch_processing()
            if note:
                self.logger.info(note)
            fit.epochs_run = epoch + 1
            stop = False
            if (epoch + 1) % self.eval_step == 0:
                t0 = time.perf_counter()
                valid = self.evaluate(valid_data)
                eval_time = time.perf_counter() - t0
                if self.valid_metric not in valid.mean:
                    raise ConfigError(f"valid_metric '{self.config['valid_metric']}' is not computed; "
                                      f"pick one of {', '.join(valid.mean)}")
                score = valid.mean[self.valid_metric]
                record.update(valid_score=score, eval_seconds=eval_time)
                self.logger.info(f"epoch {epoch} evaluating [time: {eval_time:.2f}s, valid_score: {score:.6f}]")
                self.logger.info("valid result: \n" + dict2str(valid.mean))
                if self.on_eval is not None:
                    self.on_eval(epoch, score)
                fit.best_valid_score, cur_step, stop, improved = early_stopping(
                    score, fit.best_valid_score, cur_step, self.stopping_step)
                if improved:
                    fit.test_eval = self.evaluate(test_data)
                    fit.best_epoch, fit.best_valid, fit.best_test = epoch, valid.mean, fit.test_eval.mean
                    fit.best_state = {k: v.detach().clone() for k, v in self.model.state_dict().items()}
                    self.logger.info("test result: \n" + dict2str(fit.best_test))
                    self.logger.info(f"██ {name}--Best validation results updated!!!")
            fit.history.append(record)
            if stop:
                self.logger.info(f"+++++Finished training, best eval result in epoch {fit.best_epoch}")
                if fit.best_epoch == self.eval_step - 1:  # stopped with nothing better than the start
                    self.logger.warning(
                        f"{name}: the best validation epoch was the first evaluated ({fit.best_epoch}): the model "
                        f"may not have learned before early stopping ended it; if its loss stays flat at the start, "
                        f"raise stopping_step (now {self.stopping_step})")
                break
            if interval and resume_path is not None and (epoch + 1) % interval == 0:
                seconds = fit.resumed_seconds + time.perf_counter() - began
                save_atomic(self._state(epoch + 1, fit, cur_step, train_data, seconds), Path(resume_path))
        return fit
