"""Every bad value is refused before any work: one line naming the key, exit 2, nothing written."""
from __future__ import annotations

import pytest

import main
from utils.configurator import Config, available
from utils.errors import ConfigError
from utils.schema import LEARNERS, METRIC_NAMES, Rule, model_rules

# (model, arguments, the key the one line must name)
BAD_VALUES = [
    ("LightGCN", ["--epochs", "0"], "epochs = 0"),
    ("LightGCN", ["--epochs", "-1"], "epochs = -1"),
    ("LightGCN", ["--epochs", "abc"], "epochs = 'abc'"),
    ("LightGCN", ["--epochs", "3", "--eval_step", "5"], "eval_step = 5"),
    ("LightGCN", ["--learning_rate", "abc"], "learning_rate = 'abc'"),
    ("LightGCN", ["--learning_rate", "-1"], "learning_rate = -1"),
    ("LightGCN", ["--train_batch_size", "0"], "train_batch_size = 0"),
    ("LightGCN", ["--topk", "[0]"], "topk = [0]"),
    ("LightGCN", ["--topk", "20"], "topk = 20"),
    ("LightGCN", ["--topk", "[5,10]"], "topk = [5, 10]"),          # lacks valid_metric's k (20)
    ("LightGCN", ["--valid_metric", "Recal@20"], "valid_metric = 'Recal@20'"),
    ("LightGCN", ["--metrics", "[Recall, AUC]"], "metrics = ['Recall', 'AUC']"),
    ("LightGCN", ["--n_layers", "[]"], "n_layers = []"),            # an empty grid list
    ("LightGCN", ["--seed", "[]"], "seed = []"),
    ("LightGCN", ["--reg_weight", "[0.1, -1]"], "reg_weight = -1"),
    ("LightGCN", ["--learner", "adamw"], "learner = 'adamw'"),
    ("LightGCN", ["--deterministic", "1"], "deterministic = 1"),
    ("LightGCN", ["--clip_grad_norm", "-5"], "clip_grad_norm = -5"),
    ("SIGREC", ["--perturb_mode", "modulo"], "perturb_mode = 'modulo'"),
    ("SIGREC", ["--temperature", "0"], "temperature = 0"),
    ("SIGREC", ["--knn_k", "2.5"], "knn_k = 2.5"),
    ("SIGREC", ["--anchor_detach", "maybe"], "anchor_detach = 'maybe'"),
    ("FREEDOM", ["--dropout", "1.0"], "dropout = 1.0"),
    ("FREEDOM", ["--knn_k", "ten"], "knn_k = 'ten'"),
    ("LightGCN,BPR", ["--seeds", "1,2", "--epochs", "0"], "epochs = 0"),   # a comparison, too
    ("LightGCN", ["--threads", "0"], "threads = 0"),
]


def _run(capsys, argv: list[str]) -> tuple[int, str]:
    code = main.main(argv)
    return code, capsys.readouterr().err


@pytest.mark.parametrize("model, args, named", BAD_VALUES, ids=[" ".join([m, *a]) for m, a, _ in BAD_VALUES])
def test_a_bad_value_is_one_line_and_nothing_is_written(model, args, named, tmp_path, capsys):
    out = tmp_path / "out"
    code, err = _run(capsys, ["-m", model, "-d", "ml100k", "--device", "cpu", "--output", str(out), *args])
    assert code == 2
    assert err.count("\n") == 1 and err.startswith("error: ") and "Traceback" not in err
    assert named in err and ("command line" in err or "configs/" in err)
    assert not out.exists()  # no log, no results, no run folder: nothing was written


def test_messages_say_what_is_allowed(tmp_path, capsys):
    cases = {("--epochs", "0"): "must be a whole number >= 1",
             ("--learning_rate", "abc"): "must be a number > 0",
             ("--topk", "[5,10]"): "needs 20 in topk = [5, 10]",
             ("--n_layers", "[]"): "a grid list needs at least one value",
             ("--epochs", "3", "--eval_step", "5"): "is larger than epochs = 3"}
    for args, allowed in cases.items():
        _, err = _run(capsys, ["-m", "LightGCN", "--output", str(tmp_path / "o"), "--device", "cpu", *args])
        assert allowed in err, err
    _, err = _run(capsys, ["-m", "SIGREC", "--output", str(tmp_path / "o"), "--device", "cpu",
                           "--perturb_mode", "modulo"])
    assert "must be one of modulus, constant (SIGREC's rule)" in err


@pytest.mark.parametrize("where", ["a_file/out", "a_file"])
def test_an_impossible_output_is_one_line(where, tmp_path, capsys):
    (tmp_path / "a_file").write_text("not a folder")
    code, err = _run(capsys, ["-m", "BPR", "-d", "ml100k", "--device", "cpu", "--output", str(tmp_path / where)])
    assert code == 2 and err.count("\n") == 1 and "Traceback" not in err
    assert err.startswith("error: --output ") and "a_file is a file, not a folder" in err
    assert (tmp_path / "a_file").read_text() == "not a folder"


def test_an_output_that_cannot_be_created_is_one_line(capsys):
    code, err = _run(capsys, ["-m", "BPR", "-d", "ml100k", "--device", "cpu", "--output", "/proc/harness-test/out"])
    assert code == 2 and err.count("\n") == 1 and err.startswith("error: --output /proc/harness-test/out")


def test_every_shipped_config_passes_the_schema():
    for model in available("model"):
        for dataset in available("dataset"):
            Config(model, dataset)


def test_the_ablation_and_design_choice_switches_pass():
    """benchmarks/ablations.py's variants are valid values of SIGREC's schema."""
    from conftest import load_benchmark

    ablations = load_benchmark("ablations")
    variants = {**ablations.VARIANTS, **ablations.CHOICES, **ablations.STUDY, **ablations.SPEED_VARIANT}
    for args in variants.values():
        overrides = main.parse_overrides(args)
        Config("SIGREC", "ml100k", {"perturb_eps": 0.2, "cl_weight": 0.01, **overrides})


def test_model_declarations_name_only_known_keys_and_valid_defaults():
    """A model's choices start with its default, and its ranges accept its yaml values."""
    from utils.utils import get_model

    for model in available("model"):
        cls = get_model(model)
        cfg = Config(model, "ml100k")
        for key, allowed in (getattr(cls, "choices", None) or {}).items():
            assert key in cfg.known_keys, (model, key)
        for key, rule in model_rules(cls).items():
            assert key in cfg.known_keys, (model, key)


def test_rules_are_strict_about_types():
    assert Rule(int, (">= 1",)).accepts(3) and not Rule(int, (">= 1",)).accepts(3.0)
    assert not Rule(int).accepts(True) and not Rule(float).accepts(True)       # a bool is not a number
    assert not Rule(float, ("> 0",)).accepts(float("inf")) and not Rule(float).accepts(float("nan"))
    assert not Rule(bool, choices=(True, False)).accepts(1)
    assert Rule(str, choices=LEARNERS, fold_case=True).accepts("Adam")
    assert Rule(list, items=Rule(str, choices=METRIC_NAMES, fold_case=True)).accepts(["recall", "NDCG"])
    with pytest.raises(ConfigError, match=r"epochs = 1\.5 \(command line\): must be a whole number >= 1"):
        Config("BPR", "ml100k", {"epochs": 1.5})


def test_trainer_learners_match_the_schema():
    from common.trainer import OPTIMIZERS

    assert tuple(OPTIMIZERS) == LEARNERS
