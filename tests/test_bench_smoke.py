"""The benchmarks' quick versions, so they cannot rot (the full runs are `chatterd bench ...`)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench.cli import main

pytestmark = pytest.mark.model


def test_stream_bench_smoke(checkpoint_dir: Path, tmp_path: Path) -> None:
    assert main(["--checkpoint", str(checkpoint_dir), "--out", str(tmp_path), "stream", "--smoke"]) == 0
    (result,) = tmp_path.glob("stream-*.json")
    assert result.with_suffix(".png").stat().st_size > 10_000
    data = json.loads(result.read_text())
    for config in ("fidelity_first", "fast"):
        summary = data["ours"][config]["cases"]["headline"]["summary"]
        assert 0 < summary["first_audio_s"]["median"] <= summary["total_s"]["median"]
        assert summary["audio_s"]["median"] == pytest.approx(12 * 0.04)
    assert data["fidelity"]["defaults"]["ours"]["log_mel_distance"] >= 0


def test_t3_bench_smoke(checkpoint_dir: Path, tmp_path: Path) -> None:
    argv = ["--checkpoint", str(checkpoint_dir), "--out", str(tmp_path), "t3", "--dtypes", "int8", "--steps", "2",
            "--repeats", "1", "--no-upstream"]
    assert main(argv) == 0
    (result,) = tmp_path.glob("t3-*.json")
    entry = json.loads(result.read_text())["dtypes"]["int8"]
    assert entry["eager"]["median"] > 0 and entry["floor"]["median"] > 0
    assert 0 <= entry["vs_fp32"]["greedy_agreement"] <= 1
