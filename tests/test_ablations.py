"""benchmarks/ablations.py: seed-averaged rows, refusals as rows, records per run (no training)."""
from __future__ import annotations

import json
import subprocess
from types import SimpleNamespace

import pytest

from conftest import load_benchmark


@pytest.fixture()
def ablations():
    return load_benchmark("ablations")


def _record(seed: int, r20: float) -> dict:
    metrics = {"recall@10": r20 / 2, "recall@20": r20, "ndcg@10": r20 / 3, "ndcg@20": r20 / 2.5}
    return {"status": "ok", "parameters": {"seed": seed}, "epochs_run": 10 + seed, "best_epoch": 5 + seed,
            "valid": dict(metrics), "test": dict(metrics), "history": [{"epoch": 0}]}


def test_seeds_give_mean_and_std_and_a_refusal_is_a_row(ablations, tmp_path, monkeypatch) -> None:
    calls = []

    def fake_run(cmd, **kwargs):
        calls.append(cmd)
        folder = tmp_path / "out" / ablations.folder_name(
            "image only" if "--modalities" in cmd else "SIGREC")
        if "--modalities" in cmd:  # the harness refuses the data with one line
            return SimpleNamespace(returncode=3, stderr="warming up\nerror: SIGREC needs item features, but no image")
        folder.mkdir(parents=True, exist_ok=True)
        lines = [_record(s, 0.30 + 0.01 * s) for s in (1, 2, 3)] + [{"status": "failed", "parameters": {"seed": 4}}]
        (folder / "results.jsonl").write_text("\n".join(json.dumps(x) for x in lines) + "\n")
        return SimpleNamespace(returncode=0, stderr="")

    monkeypatch.setattr(subprocess, "run", fake_run)
    out = tmp_path / "out"
    row = ablations.run_variant("sports", [], "SIGREC", [], out, "cpu", seeds=[1, 2, 3])
    assert [r["parameters"]["seed"] for r in row["runs"]] == [1, 2, 3]
    assert calls[0][-2:] == ["--seed", "[1,2,3]"]
    refused = ablations.run_variant("sports", [], "image only (`--modalities image`)", ["--modalities", "image"],
                                    out, "cpu", seeds=[1, 2, 3])
    assert refused["refused"].startswith("SIGREC needs item features")
    text = ablations.table([row, refused])
    assert "mean ± std over 3 seeds" in text
    assert "| 0.3200 ± 0.0100 |" in text          # valid R@20 over seeds 1-3: 0.31, 0.32, 0.33
    assert "n/a: SIGREC needs item features" in text


def test_a_crash_that_is_not_a_refusal_stops_the_table(ablations, tmp_path, monkeypatch) -> None:
    monkeypatch.setattr(subprocess, "run", lambda cmd, **kw: SimpleNamespace(returncode=1, stderr="Traceback ...\nKeyError: 'x'"))
    with pytest.raises(SystemExit, match="failed"):
        ablations.run_variant("ml100k", [], "SIGREC", [], tmp_path, "cpu")


def test_one_seed_keeps_the_plain_table(ablations) -> None:
    text = ablations.table([{**_record(999, 0.35), "variant": "SIGREC", "runs": [_record(999, 0.35)]}])
    assert "±" not in text and "| 0.3500 |" in text


def test_only_records_of_the_asked_point_count(ablations, tmp_path, monkeypatch) -> None:
    """A folder that also holds another point's run (an earlier --point) reports the asked one."""
    folder = tmp_path / ablations.folder_name("SIGREC")
    folder.mkdir(parents=True)
    mine, other = _record(999, 0.30), _record(999, 0.40)
    mine["parameters"].update(cl_weight=0.01, anchor_weight=0.0)
    other["parameters"].update(cl_weight=0.1, anchor_weight=0.0)
    (folder / "results.jsonl").write_text(json.dumps(mine) + "\n" + json.dumps(other) + "\n")
    monkeypatch.setattr(subprocess, "run", lambda cmd, **kw: SimpleNamespace(returncode=0, stderr=""))
    row = ablations.run_variant("ml100k", ["--cl_weight", "0.01", "--quiet"], "SIGREC", ["--anchor_weight", "0"],
                                tmp_path, "cpu")
    assert row["valid"]["recall@20"] == 0.30
    with pytest.raises(SystemExit, match="no finished run"):
        ablations.run_variant("ml100k", ["--cl_weight", "0.03"], "SIGREC", [], tmp_path, "cpu")


def test_a_refusal_needs_the_refusal_status(ablations, tmp_path, monkeypatch) -> None:
    """Exit 2 (bad input: a typo in --point) stops the table; only exit 3 (the model refuses the data) is a row."""
    monkeypatch.setattr(subprocess, "run", lambda cmd, **kw: SimpleNamespace(
        returncode=2, stderr="error: unknown config key 'cl_wieght'"))
    with pytest.raises(SystemExit, match="cl_wieght"):
        ablations.run_variant("ml100k", ["--cl_wieght", "0.01"], "SIGREC", [], tmp_path, "cpu")


def test_a_variant_named_in_two_sets_has_the_same_flags(ablations) -> None:
    # the sets share a variant's folder by its name, so a name must always mean the same run
    seen: dict[str, list[str]] = {}
    for variants in [ablations.VARIANTS, *ablations.SETS.values(), ablations.SPEED_VARIANT]:
        for name, flags in variants.items():
            assert seen.setdefault(name, flags) == flags, name
    assert ablations.scaled_anchors(0.1, weight=0.1)[
        "anchors' gradient x0.1 at anchor_weight 0.1 (`--anchor_weight 0.1 --anchor_detach False --anchor_grad_scale 0.1`)"
    ] == ["--anchor_weight", "0.1", "--anchor_detach", "False", "--anchor_grad_scale", "0.1"]
    assert list(ablations.scaled_anchors(1)) == ["gradient into the anchors (`--anchor_detach False`)"]


def test_the_sports_study_set_is_a_subset_of_study_with_the_lead(ablations) -> None:
    sports, study = ablations.SETS["sports-study"], ablations.SETS["study"]
    assert sports.items() <= study.items() and "SIGREC" in sports and len(sports) == 8
    assert ["--anchor_detach", "False", "--anchor_grad_scale", "0.1"] in sports.values()


def test_without_seeds_the_row_is_the_selection_seeds_run(ablations, tmp_path, monkeypatch) -> None:
    """A folder that also holds a --seeds table's runs (written after it) still reports seed 999."""
    folder = tmp_path / ablations.folder_name("SIGREC")
    folder.mkdir(parents=True)
    runs = [_record(999, 0.36)] + [_record(s, 0.30) for s in (101, 102, 103)]
    (folder / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in runs))
    monkeypatch.setattr(subprocess, "run", lambda cmd, **kw: SimpleNamespace(returncode=0, stderr=""))
    row = ablations.run_variant("ml100k", [], "SIGREC", [], tmp_path, "cpu")
    assert row["parameters"]["seed"] == 999 and row["valid"]["recall@20"] == 0.36
    assert ablations.run_variant("ml100k", ["--seed", "102"], "SIGREC", [], tmp_path, "cpu")["parameters"]["seed"] == 102
    (folder / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in runs[1:]))
    with pytest.raises(SystemExit, match="no finished run at seed 999"):  # never another seed's run
        ablations.run_variant("ml100k", [], "SIGREC", [], tmp_path, "cpu")
