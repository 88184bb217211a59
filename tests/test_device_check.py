"""The prepared device check runs on a machine without CUDA, at reduced size, and reports."""
import json
import subprocess
import sys

from conftest import ROOT


def test_device_check_reduced_mode(tmp_path):
    out = tmp_path / "device"
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "device_check.py"), "--device", "cpu",
                           "--models", "BPR", "--out", str(out)], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    report = json.loads((out / "device_check.json").read_text())
    assert report["mode"].startswith("reduced")
    assert [r["status"] for r in report["runs"]] == ["ok"]
    assert report["determinism"][0]["status"] == "ok" and report["resume"][0]["status"] == "ok"
    assert report["syncs"][0]["syncs"] == 0          # BPR's step reads nothing back
    assert "Every check passed" in (out / "device_check.md").read_text()
