"""The GPU check's dry run (bench/gpu_check.py --dry-run): every stage on the CPU at tiny sizes, so that
the one-shot check is known to work before the day a GPU is lent (README "GPU check").

It reuses the session's random Turbo checkpoint (tests/model_fixtures.py) and, for benches without
a --families axis, the original family's. Budgets bound each stage, so this never hangs.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import require_tool
from model_fixtures import checkpoint_of

pytestmark = [pytest.mark.model, pytest.mark.e2e]

REPO = Path(__file__).resolve().parent.parent


def test_dry_run_runs_every_stage(tmp_path: Path) -> None:
    if not Path("/usr/sbin/mosquitto").exists():
        require_tool("mosquitto")  # skips outside CI, fails in CI
    checkpoints = checkpoint_of("turbo").parent
    checkpoint_of("original")
    out = tmp_path / "gpu-check"
    env = {**os.environ, "PYTHONPATH": str(REPO), "CHATTERD_TEST_DEVICE": "cpu"}
    done = subprocess.run([sys.executable, "-m", "bench.gpu_check", "--dry-run", "--out", str(out),
                           "--checkpoints", str(checkpoints), "--total-s", "800"],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    summary = json.loads((out / "summary.json").read_text())
    report = (out / "summary.txt").read_text()
    assert [s["stage"] for s in summary["stages"]] == ["env", "checkpoints", "parity", "e2e", "t3", "stream"], report
    assert all(s["status"] == "ok" for s in summary["stages"]), report + done.stdout[-3000:]
    assert done.returncode == 0
    e2e = json.loads((out / "e2e-turbo.json").read_text())
    assert e2e["ended"] == 3 and not e2e["errors"]
    assert all(ms > 0 for ms in e2e["first_audio_ms"].values())
    assert e2e["wav_s"] == pytest.approx(e2e["audio_s"], abs=0.15)  # what the daemon wrote is what it reported
    assert (out / "parity.xml").exists() and list(out.glob("t3-*/*.json")) and list(out.glob("stream-*/*.json"))
