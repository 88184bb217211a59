"""The typed schema of the known config keys, checked once, after the command line is merged and
before any data is read (``Config`` calls ``check_config``).

Three sources of rules, in this order of precedence:

1. the model class's own declarations, two class attributes that MMRec ignores::

       choices = {"perturb_mode": ("modulus", "constant")}      # the allowed values
       ranges = {"perturb_eps": (float, ">= 0"), "knn_k": (int, ">= 1")}   # type and bounds

   (``float`` means any finite number, ``int`` a whole number);
2. ``OVERALL`` below, for the keys of ``overall.yaml`` and the dataset yamls;
3. for any other key set on the command line, the type of its value in the yaml files (a number
   stays a number, True/False stays a bool, text stays text).

Cross-key rules: ``eval_step`` <= ``epochs``, and ``valid_metric`` must be one of ``metrics`` at
one of the ``topk`` cut-offs. Grid keys are checked value by value, and a grid list must not be
empty. A failure is one ConfigError line naming the key, the value, where it was set and what is
allowed.
"""
from __future__ import annotations

import math
import operator
from dataclasses import dataclass
from typing import Any, Callable

from utils.errors import ConfigError

LEARNERS = ("adam", "sgd", "adagrad", "rmsprop")   # common.trainer.OPTIMIZERS has the same names
METRIC_NAMES = ("Recall", "NDCG", "Precision", "MAP")  # utils.metrics.METRICS, case-insensitive

_OPS: dict[str, Callable[[Any, Any], bool]] = {">=": operator.ge, ">": operator.gt,
                                               "<=": operator.le, "<": operator.lt}


@dataclass(frozen=True)
class Rule:
    """What one key may hold. ``kind``: int (whole number), float (finite number), bool, str,
    list or dict; ``bounds`` such as ``(">= 0", "<= 1")``; ``choices``: the allowed values;
    ``items``: the rule of every element of a list; ``length``: a list's exact length."""
    kind: type
    bounds: tuple[str, ...] = ()
    choices: tuple = ()
    nullable: bool = False
    items: "Rule | None" = None
    length: int | None = None
    fold_case: bool = False  # choices compared without case (learner: Adam = adam)

    def describe(self) -> str:
        """What is allowed, in words: 'a whole number >= 1', 'one of adam, sgd'."""
        if self.choices:
            text = "True or False" if self.kind is bool else "one of " + ", ".join(map(str, self.choices))
        elif self.kind is list:
            what = f"a list of {self.length}" if self.length else "a non-empty list of"
            text = f"{what} {self.items.describe_plural()}" if self.items else f"{what} values"
        else:
            text = {int: "a whole number", float: "a number", bool: "True or False", str: "text",
                    dict: "a mapping"}[self.kind]
            if self.bounds:
                text += " " + " and ".join(self.bounds)
        return text + (", or ~ (none)" if self.nullable and self.kind is not bool else "")

    def describe_plural(self) -> str:
        if self.choices:
            return "values from " + ", ".join(map(str, self.choices))
        noun = {int: "whole numbers", float: "numbers", bool: "True/False values", str: "texts"}.get(self.kind, "values")
        return noun + (" " + " and ".join(self.bounds) if self.bounds else "")

    def accepts(self, value: Any) -> bool:
        if value is None:
            return self.nullable
        if self.choices:
            if self.fold_case and isinstance(value, str):
                return value.lower() in {str(c).lower() for c in self.choices}
            # strict about types: 1 is not True, '1' is not 1
            return any(type(value) is type(c) and value == c for c in self.choices)
        if not _has_kind(value, self.kind):
            return False
        if self.kind is list:
            if not value or (self.length is not None and len(value) != self.length):
                return False
            return self.items is None or all(self.items.accepts(v) for v in value)
        return all(_within(value, bound) for bound in self.bounds)


def _has_kind(value: Any, kind: type) -> bool:
    if isinstance(value, bool):
        return kind is bool
    if kind is int:
        return isinstance(value, int)
    if kind is float:
        return isinstance(value, (int, float)) and math.isfinite(value)
    return isinstance(value, kind)


def _within(value: Any, bound: str) -> bool:
    op, _, limit = bound.partition(" ")
    return _OPS[op](value, float(limit))


def _number(*bounds: str, nullable: bool = False) -> Rule:
    return Rule(float, bounds, nullable=nullable)


def _whole(*bounds: str, nullable: bool = False) -> Rule:
    return Rule(int, bounds, nullable=nullable)


# ~ (None) is allowed where the code reads a missing key as its default, as MMRec's code does
BOOL, TEXT, OPTIONAL_TEXT = Rule(bool, nullable=True), Rule(str), Rule(str, nullable=True)

# The keys of overall.yaml and of the dataset yamls (src/configs/); models add their own.
OVERALL: dict[str, Rule] = {
    "embedding_size": _whole(">= 1"),
    "epochs": _whole(">= 1"),
    "stopping_step": _whole(">= 0"),
    "train_batch_size": _whole(">= 1"),
    "eval_batch_size": _whole(">= 1"),
    "learner": Rule(str, choices=LEARNERS, fold_case=True),
    "learning_rate": _number("> 0"),
    "learning_rate_scheduler": Rule(list, items=_number("> 0"), length=2, nullable=True),
    "weight_decay": _number(">= 0"),
    "eval_step": _whole(">= 1"),
    "metrics": Rule(list, items=Rule(str, choices=METRIC_NAMES, fold_case=True)),
    "topk": Rule(list, items=_whole(">= 1")),
    "valid_metric": TEXT,
    "metric_decimal_place": _whole(">= 0", nullable=True),
    "seed": Rule(int),
    "use_gpu": Rule(bool, nullable=True),
    "data_path": OPTIONAL_TEXT,
    "inter_splitting_label": OPTIONAL_TEXT,
    "filter_out_cod_start_users": BOOL,
    "is_multimodal_model": BOOL,
    "use_neg_sampling": BOOL,
    "use_full_sampling": BOOL,
    "end2end": BOOL,
    "req_training": BOOL,
    "NEG_PREFIX": TEXT,
    "USER_ID_FIELD": TEXT,
    "ITEM_ID_FIELD": TEXT,
    "deterministic": BOOL,
    "amp": BOOL,
    "checkpoint_interval": _whole(">= 0", nullable=True),
    "save_model": BOOL,
    "inter_file_name": OPTIONAL_TEXT,
    "vision_feature_file": OPTIONAL_TEXT,
    "text_feature_file": OPTIONAL_TEXT,
    "field_separator": OPTIONAL_TEXT,
}
CLIP_TEXT = "a number > 0, a mapping like {max_norm: 5, norm_type: 2}, or ~ (none)"
UNCHECKED = {"hyper_parameters", "model", "dataset", "device", "quiet", "output_dir", "NEG_ITEM_ID",
             "gpu_id", "clip_grad_norm"}  # clip_grad_norm has its own check below


def model_rules(model_cls: type | None) -> dict[str, Rule]:
    """A model class's ``choices`` and ``ranges`` attributes as rules."""
    rules: dict[str, Rule] = {}
    for key, spec in (getattr(model_cls, "ranges", None) or {}).items():
        kind, *bounds = spec
        for bound in bounds:
            if bound.partition(" ")[0] not in _OPS:
                raise ValueError(f"{model_cls.__name__}.ranges[{key!r}]: bound {bound!r} must look like '>= 0'")
        rules[key] = Rule(kind, tuple(bounds))
    for key, allowed in (getattr(model_cls, "choices", None) or {}).items():
        rules[key] = Rule(type(allowed[0]), choices=tuple(allowed))
    return rules


def inferred_rule(default: Any) -> Rule | None:
    """The rule a key's yaml value implies: a number stays a number, a bool a bool, text text."""
    if isinstance(default, bool):
        return BOOL
    if isinstance(default, (int, float)):
        return Rule(float)
    if isinstance(default, str):
        return TEXT
    if isinstance(default, dict):
        return Rule(dict)
    return None  # a list or None: anything goes


def show(value: Any) -> str:
    """A value as the user typed it: text quoted, the rest as YAML writes it."""
    return repr(value) if isinstance(value, str) else str(value)


def _fail(key: str, value: Any, source: str, allowed: str, grid: bool = False) -> ConfigError:
    where = f"a value of its grid list, {source}" if grid else source
    return ConfigError(f"{key} = {show(value)} ({where}): must be {allowed}")


def check_config(values: dict, sources: dict[str, str], grid_keys: list[str], model_name: str,
                 model_cls: type | None, defaults: dict) -> None:
    """Check every known key of a merged config; raise the first problem as a ConfigError.

    ``sources`` names where each key was set; ``defaults`` holds the yaml values (before the
    command line), from which the type of keys without a rule is inferred."""
    own = model_rules(model_cls)
    for key, value in values.items():
        if key in UNCHECKED:
            continue
        source = sources.get(key, "config")
        rule = own.get(key) or OVERALL.get(key)
        if rule is None and source == "command line":
            base = defaults.get(key)
            rule = inferred_rule(base[0] if isinstance(base, list) and key in grid_keys and base else base)
        is_grid = key in grid_keys
        if is_grid and isinstance(value, list) and not value:
            example = defaults.get(key) if isinstance(defaults.get(key), list) and defaults.get(key) else ["..."]
            raise ConfigError(f"{key} = [] ({source}): a grid list needs at least one value, "
                              f"e.g. --{key} \"{example}\"")
        if rule is None:
            continue
        suffix = f" ({model_name}'s rule)" if key in own else ""
        items = value if is_grid and isinstance(value, list) else [value]
        for item in items:
            if not rule.accepts(item):
                raise _fail(key, item, source, rule.describe() + suffix, grid=len(items) > 1)
    _check_clip(values, sources)
    _check_eval_step(values, sources)
    _check_valid_metric(values, sources)


def _scalars(value: Any) -> list:
    return value if isinstance(value, list) else [value]


def _check_clip(values: dict, sources: dict[str, str]) -> None:
    value = values.get("clip_grad_norm")
    if value is None:
        return
    if isinstance(value, dict):
        ok = _number("> 0").accepts(value.get("max_norm"))
    else:
        ok = _number("> 0").accepts(value)
    if not ok:
        raise _fail("clip_grad_norm", value, sources.get("clip_grad_norm", "config"), CLIP_TEXT)


def _check_eval_step(values: dict, sources: dict[str, str]) -> None:
    for epochs in _scalars(values.get("epochs")):
        for step in _scalars(values.get("eval_step")):
            if isinstance(epochs, int) and isinstance(step, int) and step > epochs:
                raise ConfigError(f"eval_step = {step} ({sources.get('eval_step', 'config')}) is larger than "
                                  f"epochs = {epochs}: validation would never run; use eval_step <= epochs")


def _check_valid_metric(values: dict, sources: dict[str, str]) -> None:
    metric = values.get("valid_metric")
    if metric is None:
        return
    source = sources.get("valid_metric", "config")
    name, at, k = str(metric).partition("@")
    metrics = [str(m).lower() for m in values.get("metrics") or []]
    topk = values.get("topk") or []
    if not at or not k.isdigit():
        raise _fail("valid_metric", metric, source, "a metric at a cut-off, like Recall@20")
    if name.lower() not in metrics:
        raise ConfigError(f"valid_metric = {show(metric)} ({source}): {name} is not among metrics = "
                          f"{values.get('metrics')}; add it there or pick one of them")
    if int(k) not in topk:
        raise ConfigError(f"valid_metric = {show(metric)} ({source}) needs {k} in topk = {topk} "
                          f"({sources.get('topk', 'config')}); add {k} to topk or pick another valid_metric")
