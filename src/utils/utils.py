"""Seeding, model lookup and small helpers."""
from __future__ import annotations

import importlib
import os
import random
from typing import Any

import numpy as np
import torch

from utils.errors import ConfigError


def init_seed(seed: int, deterministic: bool = True) -> None:
    """Seed Python, numpy and torch; optionally force deterministic kernels."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    if torch.cuda.is_available():
        torch.cuda.manual_seed_all(seed)
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(bool(deterministic), warn_only=True)
    torch.backends.cudnn.deterministic = bool(deterministic)
    torch.backends.cudnn.benchmark = False


def get_model(name: str) -> type:
    """``SIGREC`` -> ``models.sigrec.SIGREC``, as in MMRec."""
    module_name = f"models.{name.lower()}"
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name != module_name:
            raise
        raise ConfigError(f"model '{name}' not found: expected class {name} in src/models/{name.lower()}.py") from None
    if not hasattr(module, name):
        raise ConfigError(f"src/models/{name.lower()}.py has no class named {name} (names are case-sensitive)")
    return getattr(module, name)


def resolve_device(requested: str | None, use_gpu: Any = True) -> torch.device:
    """``--device`` wins; otherwise cuda when available and ``use_gpu`` is not False."""
    if requested:
        try:
            device = torch.device(requested)
        except RuntimeError:
            raise ConfigError(f"--device '{requested}' is not a device; use cpu, cuda or cuda:N") from None
        if device.type == "cuda" and not torch.cuda.is_available():
            raise ConfigError(f"--device {requested} was asked for but CUDA is not available; use --device cpu")
        return device
    return torch.device("cuda" if use_gpu is not False and torch.cuda.is_available() else "cpu")
