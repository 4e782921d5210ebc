"""Per-device defaults (tts.profiles): what a config's null knobs become on a CPU and on CUDA."""

from __future__ import annotations

import torch

from tts.config import TTSConfig
from tts.families import FAMILIES
from tts.profiles import resolve

CPU, CUDA = torch.device("cpu"), torch.device("cuda")


def test_a_cpu_gets_the_realtime_profile_with_the_fewest_flow_steps_the_decoder_is_made_for() -> None:
    turbo = resolve(TTSConfig(model="turbo"), FAMILIES["turbo"], CPU)
    assert (turbo.profile, turbo.pipeline, turbo.prompt_tokens, turbo.first_prompt_tokens, turbo.context_tokens,
            turbo.first_chunk_tokens, turbo.chunk_tokens, turbo.lean_below_s) == (
        "realtime", True, 50, 25, 25, 9, 8, 1.0)
    assert turbo.flow_steps == FAMILIES["turbo"].flow.fewest_steps == 1  # one-step meanflow
    # A family without a fewer-step decoder keeps its own steps (the original's 10 cosine steps).
    assert resolve(TTSConfig(model="original"), FAMILIES["original"], CPU).flow_steps == 10


def test_a_gpu_gets_the_fidelity_profile_with_upstreams_steps() -> None:
    turbo = resolve(TTSConfig(model="turbo"), FAMILIES["turbo"], CUDA)
    assert (turbo.profile, turbo.prompt_tokens, turbo.first_prompt_tokens, turbo.context_tokens, turbo.flow_steps,
            turbo.chunk_tokens, turbo.lean_below_s) == ("fidelity", None, None, 50, 2, 25, 0.0)


def test_every_knob_set_in_the_config_wins() -> None:
    config = TTSConfig(model="turbo", flow_steps=2, prompt_tokens=25, first_prompt_tokens=10, context_tokens=0,
                       first_chunk_tokens=8, chunk_tokens=30, lean_below_s=0.0, pipeline=False)
    got = resolve(config, FAMILIES["turbo"], CPU)
    assert (got.flow_steps, got.prompt_tokens, got.first_prompt_tokens, got.context_tokens, got.first_chunk_tokens,
            got.chunk_tokens, got.lean_below_s, got.pipeline) == (2, 25, 10, 0, 8, 30, 0.0, False)
