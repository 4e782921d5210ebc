"""Session-scoped model fixtures: one random-weight checkpoint and one engine for the whole run.

The checkpoint is full size (the real architecture, ~3 GB) and is made once per machine, under
`var/test-checkpoint` in the repo (or $CHATTERD_TEST_CHECKPOINT), by the real CLI.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parent.parent


def fast_tts_settings(checkpoint: Path) -> dict[str, Any]:
    """Engine settings that keep CPU tests short: int8 T3, 2 flow steps, short prompt and chunks.

    Costs and audio shape follow the same code paths as the defaults; only sizes are smaller.
    """
    return {
        "checkpoint": str(checkpoint),
        "dtype": "int8",
        "flow_steps": 2,
        "prompt_tokens": 25,
        "context_tokens": 10,
        "first_chunk_tokens": 6,
        "chunk_tokens": 12,
        "max_chunk_tokens": 24,
        "max_tokens_per_char": 1.0,
        "seed": 7,
    }


@pytest.fixture(scope="session")
def checkpoint_dir() -> Path:
    path = Path(os.environ.get("CHATTERD_TEST_CHECKPOINT", REPO / "var" / "test-checkpoint"))
    if not (path / "RANDOM_WEIGHTS.txt").exists():
        subprocess.run([sys.executable, "-m", "daemon", "make-checkpoint", "--random", str(path)], check=True)
    return path


@pytest.fixture(scope="session")
def engine(checkpoint_dir: Path) -> Any:
    from tts.config import TTSConfig
    from tts.engine import StreamingTTS

    eng = StreamingTTS.load(TTSConfig(**fast_tts_settings(checkpoint_dir)))
    eng.warm_up()
    return eng


def load_t3(checkpoint: Path) -> Any:
    """A fresh upstream T3 module with the checkpoint's weights, in fp32."""
    from chatterbox.models.t3 import T3

    from tts.engine import _load_state

    t3 = T3()
    _load_state(t3, checkpoint / "t3_cfg.safetensors", strict=True)
    return t3.eval()


@pytest.fixture(scope="session")
def t3_fp32(checkpoint_dir: Path) -> Any:
    """Upstream's T3 module with the checkpoint's weights, in fp32 (the parity reference)."""
    return load_t3(checkpoint_dir)
