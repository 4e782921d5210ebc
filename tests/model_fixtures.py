"""Session-scoped model fixtures: one random-weight checkpoint per family, one engine each.

Each checkpoint is full size (the real architecture, 3-4 GB) and is made once per machine, under
`var/test-checkpoints/<family>` in the repo (or $CHATTERD_TEST_CHECKPOINTS/<family>), by the real
CLI. `checkpoint_dir` and `engine` are the default family's (Turbo); `checkpoint_of(family)` and
`engine_of(family)` give the others, loaded on first use.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parent.parent


DEFAULT_FAMILY = "turbo"
_CHECKPOINTS = Path(os.environ.get("CHATTERD_TEST_CHECKPOINTS", REPO / "var" / "test-checkpoints"))

# -- device under test (bench/gpu_check.py): CHATTERD_TEST_DEVICE=cuda runs the model tests there; ---
# int8 is CPU-only, so the engine's T3 is fp32 on a GPU. Unset: the CPU, as always.
TEST_DEVICE = os.environ.get("CHATTERD_TEST_DEVICE", "cpu")
TEST_DTYPE = "int8" if TEST_DEVICE == "cpu" else "float32"
# -- end of the device hunk ------------------------------------------------------------------------


def fast_tts_settings(checkpoint: Path, family: str = DEFAULT_FAMILY) -> dict[str, Any]:
    """Engine settings that keep CPU tests short: int8 T3, 2 flow steps, short prompt and chunks.

    Costs and audio shape follow the same code paths as the defaults; only sizes are smaller.
    """
    return {
        "model": family,
        "checkpoint": str(checkpoint),
        "device": TEST_DEVICE,
        "dtype": TEST_DTYPE,
        "flow_steps": 2,
        "prompt_tokens": 25,
        "context_tokens": 10,
        "first_chunk_tokens": 6,
        "chunk_tokens": 12,
        "max_chunk_tokens": 24,
        "max_tokens_per_char": 1.0,
        "seed": 7,
        # The flow in torch: ONNX Runtime's sessions add ~1.5 GB per engine, and a test process holds
        # one engine per family beside the daemons it starts (tests/test_vocoder.py checks the
        # ONNX Runtime flow against torch's).
        "flow_runtime": "torch",
    }


def checkpoint_of(family: str) -> Path:
    """The family's random checkpoint, made by the real CLI the first time on this machine."""
    path = _CHECKPOINTS / family
    if not (path / "RANDOM_WEIGHTS.txt").exists():
        subprocess.run([sys.executable, "-m", "daemon", "make-checkpoint", "--random", str(path), "--model", family],
                       check=True)
    return path


_ENGINES: dict[str, Any] = {}


def engine_of(family: str) -> Any:
    """A warmed engine of `family` with the fast test settings, one per session."""
    if family not in _ENGINES:
        from tts.config import TTSConfig
        from tts.engine import StreamingTTS

        eng = StreamingTTS.load(TTSConfig(**fast_tts_settings(checkpoint_of(family), family)))
        eng.warm_up()
        _ENGINES[family] = eng
    return _ENGINES[family]


@pytest.fixture(scope="session")
def checkpoint_dir() -> Path:
    return checkpoint_of(DEFAULT_FAMILY)


@pytest.fixture(scope="session")
def engine(checkpoint_dir: Path) -> Any:
    return engine_of(DEFAULT_FAMILY)


def load_t3(checkpoint: Path, family: str) -> Any:
    """A fresh upstream T3 module of `family` with the checkpoint's weights, in fp32."""
    from chatterbox.models.t3 import T3

    from tts.checkpoint import load_weights
    from tts.families import family as family_of

    fam = family_of(family)
    t3 = T3(fam.hparams())
    load_weights(t3, checkpoint / fam.t3_weights)
    return t3.to(TEST_DEVICE).eval()
