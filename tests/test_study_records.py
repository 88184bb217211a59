"""benchmarks/study_records.py: validation selects (never test), the bracket's rows, the top table."""
from __future__ import annotations

import json

import pytest
import yaml

from conftest import load_benchmark

BASE = {"perturb_eps": 0.2, "cl_weight": 0.01, "anchor_weight": 0.01, "align_weight": 0.01, "temperature": 0.2}


@pytest.fixture()
def records():
    return load_benchmark("study_records")


def _study(tmp_path, points: list[tuple[dict, float, float, float]]):
    """A study folder: one ok SIGREC record per (changes to BASE, valid R@20, valid N@20, test R@20),
    temperature only in the run's config (it is no grid key), plus a failed and a BPR record."""
    lines = []
    for i, (changes, r20, n20, test) in enumerate(points):
        values = {**BASE, **changes}
        key = f"k{i}"
        run = tmp_path / "runs" / "SIGREC-ml100k" / key
        run.mkdir(parents=True)
        (run / "config.yaml").write_text(yaml.safe_dump(values))
        grid = {"seed": 999, **{k: v for k, v in values.items() if k != "temperature"}}
        lines.append({"status": "ok", "model": "SIGREC", "key": key, "parameters": grid, "epochs_run": 10,
                      "best_epoch": 5, "valid": {"recall@20": r20, "ndcg@20": n20},
                      "test": {"recall@20": test, "ndcg@20": test / 2}})
    lines.append({"status": "failed", "model": "SIGREC", "key": "dead", "parameters": {"seed": 999}})
    lines.append({"status": "ok", "model": "BPR", "key": "b", "parameters": {"seed": 999, "reg_weight": 0.1},
                  "valid": {"recall@20": 0.9, "ndcg@20": 0.9}, "test": {"recall@20": 0.9, "ndcg@20": 0.9}})
    (tmp_path / "results.jsonl").write_text("\n".join(json.dumps(x) for x in lines) + "\n")
    return tmp_path


def test_best_is_chosen_on_validation_with_ndcg_breaking_ties(records, tmp_path, capsys) -> None:
    out = _study(tmp_path, [({}, 0.30, 0.20, 0.40),                        # best on test: never chosen
                            ({"temperature": 0.5}, 0.35, 0.21, 0.30),
                            ({"align_weight": 0.003}, 0.35, 0.25, 0.10)])  # tie on R@20, better N@20
    records.main(["best", str(out)])
    point = dict(pair.split("=") for pair in capsys.readouterr().out.strip().split(","))
    assert point["align_weight"] == "0.003" and point["temperature"] == "0.2" and "seed" not in point
    records.main(["best", str(out), "BPR"])
    assert capsys.readouterr().out.strip() == "reg_weight=0.1"


def test_bracket_keeps_base_and_one_key_moves_and_top_sorts(records, tmp_path) -> None:
    out = _study(tmp_path, [({}, 0.30, 0.2, 0.3), ({"temperature": 0.5}, 0.33, 0.2, 0.3),
                            ({"cl_weight": 0.0}, 0.31, 0.2, 0.3),
                            ({"cl_weight": 0.03, "temperature": 1.0}, 0.40, 0.2, 0.3)])  # two moved: not a row
    rows = records.bracket(out, BASE).splitlines()[2:]
    assert [r.split(" | ")[:2] for r in rows] == [["| BASE", ""], ["| cl_weight", "0.0"], ["| temperature", "0.5"]]
    assert (out / "bracket.md").read_text().startswith("BASE: perturb_eps 0.2")
    assert (out / "bracket.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    ranked = records.top(out, 2).splitlines()[2:]
    assert len(ranked) == 2 and "| 0.4000 |" in ranked[0] and "| 0.3300 |" in ranked[1]
    assert "best of 4 finished" in (out / "top.md").read_text()


def test_a_folder_without_records_is_one_line(records, tmp_path) -> None:
    with pytest.raises(SystemExit, match="no records in"):
        records.main(["best", str(tmp_path)])


def test_early_reports_how_well_an_epoch_ranks_the_final_points(records, tmp_path) -> None:
    out = _study(tmp_path, [({}, 0.30, 0.2, 0.3), ({"cl_weight": 0.0}, 0.32, 0.2, 0.3),
                            ({"cl_weight": 0.03}, 0.34, 0.2, 0.3)])
    lines = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    for r in lines[:3]:  # early on the order is reversed; from epoch 50 it is the final one
        final = r["valid"]["recall@20"]
        r["history"] = [{"valid_score": (0.5 - final) if e < 50 else final} for e in range(120)]
    (out / "results.jsonl").write_text("\n".join(json.dumps(x) for x in lines) + "\n")
    rows = {row.split(" | ")[0].strip("| "): row.split(" | ")[1:] for row in records.early(out).splitlines()[2:]}
    assert rows["20"][0] == "-1.00" and rows["20"][1].startswith("3 of 3")
    assert rows["60"][0] == "1.00" and rows["60"][1].startswith("1 of 3")
    assert (out / "early.md").is_file()


def test_around_gives_the_best_value_and_its_neighbours(records, tmp_path) -> None:
    out = _study(tmp_path, [({}, 0.30, 0.2, 0.9), ({"align_weight": 0.003, "perturb_eps": 0.8}, 0.36, 0.2, 0.1)])
    lists = {"align_weight": [0.0, 0.001, 0.003, 0.01], "perturb_eps": [0.1, 0.2, 0.4, 0.8], "temperature": [0.2, 0.5]}
    assert records.around(out, lists) == ["align_weight=[0.001, 0.003, 0.01]", "perturb_eps=[0.4, 0.8]",
                                          "temperature=[0.2, 0.5]"]


def test_curves_plot_each_models_validation_best_run(records, tmp_path, monkeypatch) -> None:
    out = _study(tmp_path, [({}, 0.30, 0.2, 0.9), ({"align_weight": 0.003}, 0.36, 0.2, 0.1)])
    lines = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    for r in lines:
        if r["status"] == "ok":
            r["history"] = [{"epoch": e, "loss": 10.0 - e, "valid_score": r["valid"]["recall@20"]} for e in range(5)]
    (out / "results.jsonl").write_text("\n".join(json.dumps(x) for x in lines) + "\n")
    plotted = {}
    monkeypatch.setattr(records, "plot_curves", lambda histories, path, title: plotted.update(histories) or path)
    assert records.curves(out, ["SIGREC", "BPR"]) == out / "curves.png"
    sigrec = next(label for label in plotted if label.startswith("SIGREC"))
    assert "align_weight 0.003" in sigrec and "BPR (reg_weight 0.1)" in plotted  # validation's best, not test's
    with pytest.raises(SystemExit, match="no finished LightGCN run"):
        records.curves(out, ["LightGCN"])
