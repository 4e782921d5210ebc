"""torch.compile of the T3 step and the flow estimator: warm-up builds every graph, requests never recompile."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from model_fixtures import fast_tts_settings

from tts.config import TTSConfig
from tts.engine import StreamingTTS

pytestmark = [pytest.mark.model, pytest.mark.compile]


def test_after_warm_up_requests_do_not_compile(checkpoint_dir: Path, tmp_path: Path) -> None:
    import torch._dynamo

    settings = fast_tts_settings(checkpoint_dir) | {
        "dtype": "bfloat16", "compile": True, "cache_dir": str(tmp_path),
        # A small cache (128 slots: one KV bucket) keeps the CPU compile to one graph.
        "max_speech_tokens": 40, "max_text_tokens": 40,
    }
    engine = StreamingTTS.load(TTSConfig(**settings))
    assert engine.decoder.compiled and engine.flow_estimator.compiled
    # Snapshot the compile counters once every graph is warmed, before warm_up's end-to-end request:
    # that request must compile nothing either (it uses what requests use).
    after_graphs: list[dict[str, int]] = []
    warm_estimator = engine.flow_estimator.warm_up

    def warm_and_snapshot(*args: Any, **kwargs: Any) -> int:
        n = warm_estimator(*args, **kwargs)
        after_graphs.append(dict(torch._dynamo.utils.counters["frames"]))
        return n

    engine.flow_estimator.warm_up = warm_and_snapshot  # type: ignore[method-assign]
    engine.warm_up()
    frames_before = dict(torch._dynamo.utils.counters["frames"])
    assert after_graphs == [frames_before], "warm-up's request compiled a graph the bucket warm-up missed"
    g = torch.Generator().manual_seed(0)
    with torch.inference_mode():  # inference tensors, as the vocoder's
        x, mu, cond = (torch.randn(2, 80, 70, generator=g) for _ in range(3))
        inputs = (x, torch.ones(2, 1, 70), mu, torch.full((2,), 0.4), torch.randn(2, 80, generator=g), cond)
    with torch._dynamo.config.patch(error_on_recompile=True):
        short = np.concatenate(list(engine.stream("Hi.", seed=1)))
        long = np.concatenate(list(engine.stream("The door is open, lights are on.", seed=2)))
        with torch.inference_mode():  # as the vocoder calls it
            compiled_velocity = engine.flow_estimator(*inputs)
    assert dict(torch._dynamo.utils.counters["frames"]) == frames_before, "a request compiled a new frame"
    assert engine.flow_estimator.lengths_seen <= engine.flow_estimator.warmed
    assert len(short) > 0 and len(long) > len(short)

    # The compiled flow estimator computes what upstream's eager one does.
    with torch.inference_mode():
        upstream_velocity = engine.s3gen.flow.decoder.estimator(*inputs)
    assert torch.allclose(compiled_velocity, upstream_velocity, atol=1e-4)

    # The compiled step decodes what the eager step decodes (same weights, same seed).
    eager = StreamingTTS.load(TTSConfig(**dataclasses.replace(TTSConfig(**settings), compile=False).__dict__))
    eager_long = np.concatenate(list(eager.stream("The door is open, lights are on.", seed=2)))
    assert len(eager_long) == len(long)
