"""benchmarks/gpu.sh --dry-run: every step of the GPU script at toy size on CPU, one report."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
STEPS = ("train_step", "mr_table", "extract", "predict")


@pytest.mark.slow
def test_gpu_script_dry_run(tmp_path: Path) -> None:
    bash = shutil.which("bash")
    if bash is None:
        pytest.skip("bash is not installed: benchmarks/gpu.sh is a bash script")
    if shutil.which("timeout") is None:
        pytest.skip("coreutils' timeout is not installed: gpu.sh bounds every step with it")
    out = tmp_path / "gpu"
    env = {**os.environ, "OUT": str(out), "PYTHON": sys.executable, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    env.pop("GPU_WORK", None)
    proc = subprocess.run([bash, str(REPO / "benchmarks" / "gpu.sh"), "--dry-run"], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=570)
    tail = (proc.stdout + proc.stderr)[-6000:]
    assert proc.returncode == 0, tail
    report = json.loads((out / "gpu.json").read_text())
    md = (out / "gpu.md").read_text()
    assert set(report["steps"]) == set(STEPS), tail
    for name in STEPS:
        step = report["steps"][name]
        assert step["status"] == "ok", f"{name}: {step['status']} ({step.get('reason')})\n{tail}"
        assert step["result"] is not None, name
        assert (out / f"{name}.json").is_file(), name
    assert report["run"]["dry_run"] is True
    assert "stand-in data: IEMOCAP-4 store with RAVDESS/FER2013 stand-in audio/video" in md
    assert "torch" in md and "device:" in md and "date:" in md
    assert md.count("\n## ") == len(STEPS)
    assert "FAILED" not in md
    # every registered method, compiled and not, got step and fold figures
    from imer.fusion.base import METHODS

    runs = {(r["method"], r["compile"]) for r in report["steps"]["train_step"]["result"]["results"] if r.get("fold")}
    assert runs == {(m, c) for m in METHODS.names() for c in (False, True)}
    assert not (out / "work").exists(), "the dry run's scratch folder (tiny models) is removed"
