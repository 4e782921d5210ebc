"""The streaming vocoder: upstream's solver, exact lengths, and fidelity against one-shot vocoding."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from bench import fidelity
from tts.engine import ChunkSchedule
from tts.flow_estimator import FlowEstimator
from tts.vocoder import MEL_PER_TOKEN, SAMPLES_PER_MEL, StreamingVocoder

pytestmark = pytest.mark.model


def _tokens(n: int, seed: int = 0) -> list[int]:
    return torch.randint(0, 6561, (n,), generator=torch.Generator().manual_seed(seed)).tolist()


@torch.inference_mode()
def test_our_euler_solver_is_upstreams(engine):
    prompt = engine.voice_bank.get(None).prompt
    vocoder = StreamingVocoder(engine.s3gen, prompt, max_tokens=10, flow_steps=3, context_tokens=0,
                               crossfade_ms=0, generator=torch.Generator().manual_seed(0))
    g = torch.Generator().manual_seed(1)
    z, mu, cond = (torch.randn(1, 80, 24, generator=g) for _ in range(3))
    mask = torch.ones(1, 1, 24)
    ours = vocoder._solve_euler(z, mu, mask, cond)
    upstream = engine.s3gen.flow.decoder.solve_euler(z, t_span=vocoder.t_span, mu=mu, mask=mask,
                                                      spks=vocoder.spks, cond=cond)
    assert torch.allclose(ours, upstream, atol=1e-5)


@torch.inference_mode()
def test_bucket_padding_leaves_the_real_frames_exact(engine):
    # 45 frames run padded to 64: causal convs, per-frame norms and masked attention must make the
    # padding invisible to the real frames.
    upstream = engine.s3gen.flow.decoder.estimator
    g = torch.Generator().manual_seed(2)
    x, mu, cond = (torch.randn(2, 80, 45, generator=g) for _ in range(3))
    inputs = (x, torch.ones(2, 1, 45), mu, torch.tensor([0.2, 0.2]), torch.randn(2, 80, generator=g), cond)
    ours = FlowEstimator(upstream, compile=False, bucketed=True)
    padded = ours(*inputs)
    assert ours.lengths_seen == {64}
    assert torch.allclose(padded, upstream(*inputs), atol=1e-5)


def test_stream_voices_every_token_and_flushes_the_end(engine):
    prompt = engine.voice_bank.get(None).prompt
    tokens = _tokens(31)
    streamed = fidelity.stream_ours(engine.s3gen, prompt, tokens, schedule=ChunkSchedule(5, 8, 2.0, 16),
                                    flow_steps=2, context_tokens=8, crossfade_ms=20, seed=0)
    assert len(streamed.audio) == len(tokens) * MEL_PER_TOKEN * SAMPLES_PER_MEL
    assert len(streamed.seams) >= 2
    tail = streamed.audio[-MEL_PER_TOKEN * SAMPLES_PER_MEL:]
    assert np.abs(tail).max() > 0, "the last token must be voiced, not cut"


def test_streaming_is_closer_to_one_shot_than_the_seed_method(engine):
    prompt = engine.voice_bank.get(None).prompt
    result = fidelity.compare(engine.s3gen, prompt, _tokens(40, seed=2), seed=5, flow_steps=2, context_tokens=12,
                              crossfade_ms=20, schedule=(6, 12, 2.0, 24), seed_chunk=12, seed_context=12)
    ours, seed = result["ours"], result["seed_method"]
    assert ours["samples"] == result["reference_samples"]
    assert ours["log_mel_distance"] < seed["log_mel_distance"]
    assert ours["seam_error"] < seed["seam_error"]
