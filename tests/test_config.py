"""Config layering, grid handling and command-line overrides."""
import shutil

import pytest

from main import parse_overrides
from utils.configurator import Config, SRC_DIR, parse_value
from utils.errors import ConfigError
from utils.quick_start import grid_points


def _config_dir(tmp_path, model_yaml: str, dataset_yaml: str = "learning_rate: 0.005\nembedding_size: 32\n"):
    root = tmp_path / "configs"
    (root / "model").mkdir(parents=True)
    (root / "dataset").mkdir()
    shutil.copy(SRC_DIR / "configs" / "overall.yaml", root / "overall.yaml")
    (root / "dataset" / "toy.yaml").write_text(dataset_yaml)
    (root / "model" / "Toy.yaml").write_text(model_yaml)
    return root


def test_layering_order_and_grid(tmp_path):
    root = _config_dir(tmp_path, "embedding_size: 16\nreg_weight: [0.1, 1e-4]\nn_layers: [1, 2]\n"
                                 "hyper_parameters: ['reg_weight', 'n_layers']\n")
    cfg = Config("Toy", "toy", {"learning_rate": 0.01}, config_dir=root)
    assert cfg["embedding_size"] == 16          # model beats dataset beats overall
    assert cfg["learning_rate"] == 0.01          # command line beats all
    assert cfg["stopping_step"] == 20            # from overall
    assert cfg["no_such_key"] is None            # missing keys read as None
    assert cfg["reg_weight"] == [0.1, 1e-4] and isinstance(cfg["reg_weight"][1], float)  # 1e-4 is a float
    assert cfg.grid_keys == ["seed", "reg_weight", "n_layers"]
    points = grid_points(cfg)
    assert len(points) == 4 and points[0] == {"seed": 999, "reg_weight": 0.1, "n_layers": 1}
    assert points[-1] == {"seed": 999, "reg_weight": 1e-4, "n_layers": 2}


def test_grid_key_override_fixes_it(tmp_path):
    root = _config_dir(tmp_path, "reg_weight: [0.1, 0.01]\nhyper_parameters: ['reg_weight']\n")
    cfg = Config("Toy", "toy", {"reg_weight": 0.5, "seed": [1, 2]}, config_dir=root)
    assert [p["reg_weight"] for p in grid_points(cfg)] == [0.5, 0.5]
    assert [p["seed"] for p in grid_points(cfg)] == [1, 2]


def test_hyper_parameters_concatenate_across_files(tmp_path):
    root = _config_dir(tmp_path, "b: [1, 2]\nhyper_parameters: ['b']\n",
                       dataset_yaml="a: [3, 4]\nhyper_parameters: ['a']\n")
    cfg = Config("Toy", "toy", config_dir=root)
    assert cfg.grid_keys == ["seed", "a", "b"]
    assert len(grid_points(cfg)) == 4


def test_unknown_key_names_the_closest(tmp_path):
    root = _config_dir(tmp_path, "reg_weight: [0.1]\nhyper_parameters: ['reg_weight']\n")
    with pytest.raises(ConfigError, match="learning_rate"):
        Config("Toy", "toy", {"learnig_rate": 0.1}, config_dir=root)
    with pytest.raises(ConfigError, match="reg_weight"):
        Config("Toy", "toy", {"reg_wieght": 0.1}, config_dir=root)


def test_missing_model_or_dataset_config_lists_known_ones():
    with pytest.raises(ConfigError, match="known datasets: .*ml100k"):
        Config("LightGCN", "nosuchdata")
    with pytest.raises(ConfigError, match="known models: .*LightGCN"):
        Config("NoSuchModel", "ml100k")


def test_command_line_values_parse_as_yaml():
    got = parse_overrides(["--learning_rate", "1e-3", "--epochs=5", "--topk", "[10,20]", "--flag", "False",
                           "--name", "abc"])
    assert got == {"learning_rate": 0.001, "epochs": 5, "topk": [10, 20], "flag": False, "name": "abc"}
    assert parse_value("-0.5") == -0.5
    with pytest.raises(ConfigError, match="needs a value"):
        parse_overrides(["--epochs"])
    with pytest.raises(ConfigError, match="unexpected argument"):
        parse_overrides(["epochs", "3"])


def test_data_path_is_resolved_from_src_whatever_the_cwd(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cfg = Config("LightGCN", "ml100k")
    assert cfg["data_path"] == str((SRC_DIR.parent / "data").resolve()) + "/"


def test_a_typed_data_path_is_read_from_the_current_directory(tmp_path, monkeypatch):
    """The yaml's relative path is MMRec's (from src/); a --data_path the user types is read from
    where it was typed, as a shell user expects (from the repository root or from src/ alike)."""
    (tmp_path / "repo" / "src").mkdir(parents=True)
    monkeypatch.chdir(tmp_path / "repo")
    assert Config("LightGCN", "ml100k", {"data_path": "../shared/"})["data_path"] == str(tmp_path / "shared") + "/"
    monkeypatch.chdir(tmp_path / "repo" / "src")
    assert Config("LightGCN", "ml100k", {"data_path": "../../shared"})["data_path"] == str(tmp_path / "shared") + "/"


def test_point_key_ignores_later_keys_at_their_neutral_value():
    """A key added later (SIGREC's cl_max_nodes) must not orphan earlier records at its neutral
    value, and must change the key at any other value."""
    from utils.results import point_key

    base = {"model": "SIGREC", "perturb_eps": 0.2, "seed": 999}
    assert point_key({**base, "cl_max_nodes": 0}) == point_key(base)
    assert point_key({**base, "cl_max_nodes": 256}) != point_key(base)
    assert point_key({**base, "device": "cuda"}) == point_key(base)  # volatile keys never count


def test_config_dir_finds_a_yaml_written_elsewhere(tmp_path):
    """prepare.py --config-dir DIR writes DIR/<name>.yaml; main.py --config_dir DIR reads it."""
    (tmp_path / "mine.yaml").write_text("inter_file_name: 'mine.inter'\ntopk: [5, 20]\n")
    cfg = Config("BPR", "mine", extra_config_dir=tmp_path)
    assert cfg["inter_file_name"] == "mine.inter" and cfg["topk"] == [5, 20]
    assert cfg.sources["topk"] == str(tmp_path / "mine.yaml")
    (tmp_path / "dataset").mkdir()
    (tmp_path / "dataset" / "other.yaml").write_text("inter_file_name: 'other.inter'\n")
    assert Config("BPR", "other", extra_config_dir=tmp_path)["inter_file_name"] == "other.inter"
    with pytest.raises(ConfigError, match=r"no config for dataset 'nope'.*\(--config_dir\).*known datasets: .*mine"):
        Config("BPR", "nope", extra_config_dir=tmp_path)


def test_config_dir_on_the_command_line(tmp_path, capsys):
    import main

    (tmp_path / "mine.yaml").write_text("inter_file_name: 'mine.inter'\n")
    out = tmp_path / "out"
    code = main.main(["-m", "BPR", "-d", "mine", "--config_dir", str(tmp_path), "--data_path", str(tmp_path),
                      "--output", str(out), "--device", "cpu"])
    err = capsys.readouterr().err
    assert code == 2 and "dataset folder" in err and "mine does not exist" in err  # the yaml was found
