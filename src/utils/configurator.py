"""Config layering: overall.yaml < dataset/<d>.yaml < model/<M>.yaml < command line.

``Config`` behaves like MMRec's: ``config[key]`` reads None for a missing key, ``hyper_parameters``
lists are concatenated across files, and ``seed`` is always part of the grid.
"""
from __future__ import annotations

import difflib
import os
import re
from pathlib import Path
from typing import Any, Iterator

import yaml

from utils.errors import ConfigError
from utils.schema import check_config

SRC_DIR = Path(__file__).resolve().parents[1]
CONFIG_DIR = SRC_DIR / "configs"

# Keys the harness itself sets or reads at run time; they are known even when no yaml names them.
RUNTIME_KEYS = {"model", "dataset", "device", "quiet", "output_dir", "NEG_ITEM_ID"}


class _Loader(yaml.SafeLoader):
    """SafeLoader that reads ``1e-4`` (no dot) as a float, as MMRec users expect."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(
        r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
        |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
        |\.[0-9_]+(?:[eE][-+]?[0-9]+)?
        |[-+]?\.(?:inf|Inf|INF)
        |\.(?:nan|NaN|NAN))$""",
        re.X,
    ),
    list("-+0123456789."),
)


def parse_value(text: str) -> Any:
    """Parse a command-line value as YAML (``0.01`` -> float, ``[1,2]`` -> list, ``True`` -> bool)."""
    try:
        return yaml.load(text, Loader=_Loader)
    except yaml.YAMLError:
        return text


def load_yaml(path: Path) -> dict:
    """Read one config file; an unreadable or non-mapping file is a ConfigError."""
    try:
        with open(path, encoding="utf-8") as fh:
            data = yaml.load(fh, Loader=_Loader)
    except yaml.YAMLError as exc:
        first = str(exc).splitlines()[0]
        raise ConfigError(f"{path} is not valid YAML ({first}); fix the file") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path} must hold a mapping of key: value lines")
    return data


def available(kind: str) -> list[str]:
    """Names of the configs of one kind (``dataset`` or ``model``)."""
    return sorted(p.stem for p in (CONFIG_DIR / kind).glob("*.yaml"))


def _shown_path(path: Path) -> str:
    """A config file as error lines name it: relative to src/ when it is one of ours."""
    try:
        return str(Path(path).resolve().relative_to(SRC_DIR))
    except ValueError:
        return str(path)


def _model_class(model: str) -> type | None:
    """The model's class, whose ``choices``/``ranges`` the schema reads; None when there is no
    such module yet (the error then comes when the model is built, as before)."""
    from utils.utils import get_model
    try:
        return get_model(model)
    except ConfigError:
        return None


def closest(key: str, known: list[str], n: int = 3) -> str:
    """A hint naming the known keys closest to ``key``."""
    near = difflib.get_close_matches(key, known, n=n, cutoff=0.5)
    if not near:
        near = [k for k in known if key.lower() in k.lower()][:n]
    return f"did you mean {', '.join(near)}?" if near else "run with --help to see how keys are set"


def merge(base: dict, layer: dict) -> dict:
    """Merge one layer: later values win, ``hyper_parameters`` lists are concatenated."""
    out = dict(base)
    for key, value in layer.items():
        if key == "hyper_parameters":
            grid = list(out.get("hyper_parameters") or [])
            grid += [k for k in (value or []) if k not in grid]
            out[key] = grid
        else:
            out[key] = value
    return out


def _from_cwd(path: str) -> str:
    """``path`` made absolute from the current directory (``~`` expanded), with its trailing slash."""
    p = Path(os.path.expanduser(path))
    return str(p if p.is_absolute() else (Path.cwd() / p).resolve()) + (os.sep if path.endswith(("/", os.sep)) else "")


class Config:
    """The resolved config of one run (all grid values still as lists), checked against the
    schema (``utils.schema``) before it is returned: a bad value never reaches the data."""

    def __init__(self, model: str, dataset: str, overrides: dict | None = None,
                 config_dir: Path | None = None, extra_config_dir: Path | None = None,
                 check: bool = True) -> None:
        root = Path(config_dir) if config_dir else CONFIG_DIR
        self.model, self.dataset = model, dataset
        # main.py --config_dir: a folder with more dataset/model yamls (prepare.py --config-dir)
        self.extra_config_dir = Path(extra_config_dir).expanduser() if extra_config_dir else None
        ds_file = self._find(root, "dataset", dataset)
        model_file = self._find(root, "model", model)
        if ds_file is None:
            raise ConfigError(f"no config for dataset '{dataset}': expected {root / 'dataset' / f'{dataset}.yaml'}"
                              f"{self._extra_hint('dataset', dataset)} "
                              f"(known datasets: {', '.join(self._available(root, 'dataset'))})")
        if model_file is None:
            raise ConfigError(f"no config for model '{model}': expected {root / 'model' / f'{model}.yaml'}"
                              f"{self._extra_hint('model', model)} "
                              f"(known models: {', '.join(self._available(root, 'model'))})")
        files = [root / "overall.yaml", ds_file, model_file]
        layers = [load_yaml(path) for path in files]
        merged: dict = {}
        self.sources: dict[str, str] = {}  # key -> where its value was set (for error lines)
        for path, layer in zip(files, layers):
            merged = merge(merged, layer)
            self.sources.update({key: _shown_path(path) for key in layer})
        self.known_keys = sorted(set().union(*layers) | RUNTIME_KEYS)
        grid = list(merged.get("hyper_parameters") or [])
        if "seed" not in grid:
            grid.insert(0, "seed")
        merged["hyper_parameters"] = grid
        self.defaults = dict(merged)  # the yaml values, before the command line
        for key, value in (overrides or {}).items():
            if key not in self.known_keys:
                raise ConfigError(f"unknown config key '{key}' for {model} on {dataset}: "
                                  f"{closest(key, self.known_keys)}")
            if key == "hyper_parameters":
                raise ConfigError("hyper_parameters cannot be overridden; override a grid key instead")
            if key == "data_path" and isinstance(value, str) and value:
                value = _from_cwd(value)  # a path typed by the user is read from where it was typed
            merged[key] = value
            self.sources[key] = "command line"
        for key in grid:
            if key not in merged:
                raise ConfigError(f"grid key '{key}' of {model} has no values in any config file")
            if not isinstance(merged[key], list):
                merged[key] = [merged[key]]
        merged["model"], merged["dataset"] = model, dataset
        merged.setdefault("USER_ID_FIELD", "userID")
        merged.setdefault("ITEM_ID_FIELD", "itemID")
        merged.setdefault("NEG_PREFIX", "neg_")
        if check:
            check_config(merged, self.sources, grid, model, _model_class(model), self.defaults)
        merged["NEG_ITEM_ID"] = merged["NEG_PREFIX"] + merged["ITEM_ID_FIELD"]
        merged["data_path"] = self._resolve_data_path(merged.get("data_path") or "../data/")
        self.final_config_dict = merged

    def _find(self, root: Path, kind: str, name: str) -> Path | None:
        """``<extra>/<kind>/<name>.yaml`` (and, for a dataset, ``<extra>/<name>.yaml``, as
        prepare.py --config-dir writes it) first, then the built-in one."""
        candidates = []
        if self.extra_config_dir is not None:
            if kind == "dataset":
                candidates.append(self.extra_config_dir / f"{name}.yaml")
            candidates.append(self.extra_config_dir / kind / f"{name}.yaml")
        candidates.append(root / kind / f"{name}.yaml")
        return next((p for p in candidates if p.is_file()), None)

    def _extra_hint(self, kind: str, name: str) -> str:
        if self.extra_config_dir is None:
            return ""
        return f" or {self.extra_config_dir / (f'{name}.yaml' if kind == 'dataset' else f'{kind}/{name}.yaml')} (--config_dir)"

    def _available(self, root: Path, kind: str) -> list[str]:
        names = {p.stem for p in (root / kind).glob("*.yaml")}
        if self.extra_config_dir is not None:
            if kind == "dataset":
                names |= {p.stem for p in self.extra_config_dir.glob("*.yaml")}
            names |= {p.stem for p in (self.extra_config_dir / kind).glob("*.yaml")}
        return sorted(names - {"overall"})

    @staticmethod
    def _resolve_data_path(path: str) -> str:
        """Relative data paths in the yaml files are taken from ``src/`` (MMRec's ``../data/``, as
        with ``cd src``), whatever the cwd; an override's path was made absolute from the cwd."""
        p = Path(os.path.expanduser(str(path)))
        if not p.is_absolute():
            p = (SRC_DIR / p).resolve()
        return str(p) + os.sep

    def point(self, values: dict) -> "Config":
        """A copy with the grid keys set to one point's scalar values."""
        point = object.__new__(Config)
        point.__dict__.update(self.__dict__)
        point.final_config_dict = {**self.final_config_dict, **values}
        return point

    @property
    def grid_keys(self) -> list[str]:
        return list(self.final_config_dict["hyper_parameters"])

    def __getitem__(self, key: str) -> Any:
        return self.final_config_dict.get(key)

    def __setitem__(self, key: str, value: Any) -> None:
        self.final_config_dict[key] = value

    def __contains__(self, key: str) -> bool:
        return key in self.final_config_dict

    def __iter__(self) -> Iterator[str]:
        return iter(self.final_config_dict)

    def get(self, key: str, default: Any = None) -> Any:
        return self.final_config_dict.get(key, default)

    def __str__(self) -> str:
        return "\n".join(f"{k}: {v}" for k, v in sorted(self.final_config_dict.items(), key=lambda kv: kv[0].lower()))
