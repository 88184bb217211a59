"""Shared test set-up: ``src/`` on the import path and small builders for configs and data."""
from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src"
if str(SRC) not in sys.path:
    sys.path.insert(0, str(SRC))

import torch  # noqa: E402

# One thread per process: subprocess tests run beside the pytest process on small CI machines,
# where oversubscribed OpenMP threads slow training by an order of magnitude.
os.environ["OMP_NUM_THREADS"] = "1"
torch.set_num_threads(1)


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "slow: end-to-end runs on the embedded data (still run in CI)")


def load_benchmark(name: str):
    """A script of benchmarks/ (not a package) imported as a module, e.g. ``load_benchmark("ablations")``."""
    import importlib.util
    spec = importlib.util.spec_from_file_location(name, ROOT / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def make_config(model: str, dataset: str = "ml100k", **overrides):
    """A resolved single-point Config on the CPU (grid keys fixed to their first value)."""
    from utils.configurator import Config

    cfg = Config(model, dataset, overrides)
    cfg["device"] = torch.device("cpu")
    cfg["quiet"] = True
    return cfg.point({k: cfg[k][0] for k in cfg.grid_keys})


def make_data(cfg):
    """Dataset and loaders (train, valid, test) for a config."""
    from utils.quick_start import load_data

    return load_data(cfg)


@pytest.fixture(scope="session")
def ml100k_data():
    """The embedded dataset, loaded once per test session (with both feature files)."""
    return make_data(make_config("LightGCN", is_multimodal_model=True))


@pytest.fixture(scope="session")
def text_only_data():
    """ml100k with the text features only (as on the Amazon sets that lack images)."""
    return make_data(make_config("FREEDOM", vision_feature_file=""))


def build_model(name: str, data, point: dict, seed: int = 999):
    """A seeded model at ``point`` (overrides of its grid's first point) and its config."""
    from utils.utils import get_model, init_seed

    cfg = make_config(name, **point)
    init_seed(seed)
    return get_model(name)(cfg, data.train), cfg


def first_batch(data, size: int = 512):
    """The first ``size`` triples of the training loader at seed 999."""
    data.train.pretrain_setup(999)
    return next(iter(data.train))[:, :size]
