"""The benchmarks' quick versions, so they cannot rot (the full runs are `chatterd bench ...`).

Each runs the family axis on Turbo and one CFG family (the original) with tiny sizes.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
from model_fixtures import checkpoint_of

from bench.cli import main

pytestmark = [
    pytest.mark.model,
    # Upstream's perceiver (the original's conditioning) enters torch.backends.cuda.sdp_kernel, whose
    # deprecation warning is attributed to contextlib by some typing_extensions versions.
    pytest.mark.filterwarnings("ignore:.*sdp_kernel.*:FutureWarning"),
]

FAMILIES = ("turbo", "original")


def _checkpoint_args() -> list[str]:
    return [arg for f in FAMILIES for arg in ("--checkpoint", f"{f}={checkpoint_of(f)}")]


def _finite(summary: dict[str, Any], *keys: str) -> None:
    for key in keys:
        assert math.isfinite(summary[key]["median"]), key


def test_stream_bench_smoke(tmp_path: Path) -> None:
    argv = [*_checkpoint_args(), "--out", str(tmp_path), "stream", "--smoke", "--families", ",".join(FAMILIES)]
    assert main(argv) == 0
    (result,) = tmp_path.glob("stream-*.json")
    assert result.with_suffix(".png").stat().st_size > 10_000
    data = json.loads(result.read_text())
    assert set(data["machine"]["cpu_flags"]) >= {"avx2", "avx512_bf16", "amx_bf16", "amx_int8", "avx512_vnni"}
    assert data["machine"]["torch_threads"] >= 1
    runs = {"turbo": data["ours"]["turbo"]["default"], "original": data["ours"]["original"]["fast"],
            "upstream_turbo": data["upstream_turbo"]}
    for name, run in runs.items():
        case = run if name == "upstream_turbo" else run["cases"]["headline"]
        summary = case["summary"]
        _finite(summary, "first_audio_s", "rtf", "stall_s", "total_s")
        assert 0 < summary["first_audio_s"]["median"] <= summary["total_s"]["median"]
        _finite(case["split"], "prefill_s", "t3_s", "flow_s", "hift_s", "t3_step_s")
        assert run["peak_rss_mb"] > 0
    turbo_tail = 3  # Turbo appends three silence tokens after the last speech token, as upstream does
    for summary, tail in ((runs["turbo"]["cases"]["headline"]["summary"], turbo_tail),
                          (runs["original"]["cases"]["headline"]["summary"], 0),
                          (runs["upstream_turbo"]["summary"], turbo_tail)):
        assert summary["audio_s"]["median"] == pytest.approx((12 + tail) * 0.04)
    assert runs["turbo"]["settings"]["model"] == "turbo" and runs["original"]["settings"]["model"] == "original"
    for name in ("turbo", "original"):
        fidelity = runs[name]["fidelity"]
        assert fidelity["meanflow"] == (name == "turbo")
        assert math.isfinite(fidelity["ours"]["log_mel_distance"]) and fidelity["ours"]["log_mel_distance"] >= 0
    for key in ("upstream_turbo_first_audio/turbo_first_audio", "upstream_turbo_t3_step/turbo_t3_step"):
        assert math.isfinite(data["ratios"][key]) and data["ratios"][key] > 0
    assert {t["what"] for t in data["targets"]} >= {"turbo T3 step <= 1/3 of upstream Turbo's"}


def test_t3_bench_smoke(tmp_path: Path) -> None:
    argv = [*_checkpoint_args(), "--out", str(tmp_path), "t3", "--families", ",".join(FAMILIES), "--dtypes",
            "int8,int4", "--steps", "2", "--repeats", "1", "--vs-fp32-steps", "2", "--no-upstream"]
    assert main(argv) == 0
    (result,) = tmp_path.glob("t3-*.json")
    data = json.loads(result.read_text())
    assert "cpu_flags" in data["machine"]
    assert set(data["families"]) == set(FAMILIES)
    for name, rows in (("turbo", 1), ("original", 2)):
        family = data["families"][name]
        assert family["rows"] == rows
        for dtype in ("int8", "int4"):
            entry = family["dtypes"][dtype]
            assert math.isfinite(entry["eager"]["median"]) and entry["floor"]["median"] > 0
            assert math.isfinite(entry["ratios"]["eager/floor"]) and entry["weight_gb"] > 0
            # The same steps with torch's attention instead of the C kernel, beside them.
            assert math.isfinite(entry["ratios"]["eager_torch_attention/eager"])
            assert 0 <= entry["vs_fp32"]["greedy_agreement"] <= 1
            assert math.isfinite(entry["vs_fp32"]["max_abs_logit_error"]) and entry["vs_fp32"]["mean_kl"] >= 0
        # int4 reads about half of int8's bytes (packed nibbles and the same block scales).
        assert family["dtypes"]["int4"]["weight_gb"] < 0.7 * family["dtypes"]["int8"]["weight_gb"]
    assert any(t["what"].startswith("turbo int8") for t in data["targets"])


def test_threads_bench_smoke(tmp_path: Path) -> None:
    argv = ["--checkpoint", f"turbo={checkpoint_of('turbo')}", "--out", str(tmp_path), "threads", "--tokens", "10",
            "--repeats", "1"]
    assert main(argv) == 0
    (result,) = tmp_path.glob("threads-*.json")
    data = json.loads(result.read_text())
    assert set(data["arrangements"]) == {"one team", "second thread", "loading thread, second team alive"}
    for row in data["arrangements"].values():
        _finite(row, "first_chunk_s", "t3_step_s")
        assert row["first_chunk_s"]["n"] == 1
    _finite(data, "t3_step_one_core_s")
