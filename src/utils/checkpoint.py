"""Reload a saved grid point (``model.pth`` with its config) and score it again."""
from __future__ import annotations

import logging
from pathlib import Path

import torch

from utils.configurator import Config
from utils.errors import ConfigError
from utils.evaluator import evaluate
from utils.metrics import dict2str
from utils.utils import get_model, init_seed, resolve_device


def evaluate_checkpoint(path: Path, device: str | None = None, config_dir: str | None = None) -> dict:
    """Rebuild data and model from the checkpoint's config, load the weights, score valid and test."""
    from utils.quick_start import load_data

    if not path.exists():
        raise ConfigError(f"checkpoint {path} does not exist; checkpoints are written as "
                          f"<output>/runs/<model>-<dataset>/<key>/model.pth")
    try:
        saved = torch.load(path, map_location="cpu", weights_only=False)
        state, values = saved["state_dict"], saved["config"]
    except Exception as exc:  # noqa: BLE001 - any unreadable file gets the same message
        raise ConfigError(f"{path} is not a checkpoint written by this harness ({exc})") from None
    config = Config(values["model"], values["dataset"], extra_config_dir=config_dir)
    config.final_config_dict.update(values)
    config["device"] = resolve_device(device, values.get("use_gpu"))
    config["quiet"] = True
    init_seed(int(config["seed"]), config["deterministic"] is not False)
    data = load_data(config)
    model = get_model(config["model"])(config, data.train).to(config["device"])
    model.load_state_dict(state)
    out = {}
    for name, loader in (("valid", data.valid), ("test", data.test)):
        out[name] = evaluate(model, loader, config).mean
        logging.getLogger().info(f"{name} result: \n{dict2str(out[name])}")
    return out
