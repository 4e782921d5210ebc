"""torch.compile of the T3 step and the flow estimator: warm-up builds every graph, requests never
recompile, and the compiled T3 step computes what the eager one does."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from model_fixtures import TEST_DEVICE, fast_tts_settings

from tts.config import TTSConfig
from tts.engine import StreamingTTS

pytestmark = [pytest.mark.model, pytest.mark.compile]


def test_after_warm_up_requests_do_not_compile(checkpoint_dir: Path, tmp_path: Path) -> None:
    import torch._dynamo

    settings = fast_tts_settings(checkpoint_dir) | {
        "dtype": "bfloat16", "compile": True, "cache_dir": str(tmp_path),
        # fp32 vocoder weights: the compiled estimator is compared with upstream's fp32 one below.
        "vocoder_dtype": "float32",
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
    rows = 2 if engine.flow_cfg_rate > 0 else 1  # the decoding rows the solver runs (Turbo: one, no CFG)
    with torch.inference_mode():  # inference tensors, as the vocoder's
        x, mu, cond = (torch.randn(rows, 80, 70, generator=g) for _ in range(3))
        inputs = (x, torch.ones(rows, 1, 70), mu, torch.full((rows,), 0.4), torch.randn(rows, 80, generator=g), cond,
                  torch.full((rows,), 0.9))
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
        upstream = engine.s3gen.flow.decoder.estimator
        upstream_velocity = upstream(*inputs[:6], r=inputs[6]) if upstream.meanflow else upstream(*inputs[:6])
    assert torch.allclose(compiled_velocity, upstream_velocity, atol=1e-4)


# Compiled against eager T3 decoding, fp32, on one upstream module (the default family, Turbo; the
# engine fixture's quantised T3 cannot compile). Turbo's prefix is ~385 positions: with a 512-slot
# cache and STEPS tokens every step falls in one KV bucket, so this compiles one graph per function.
STEPS = 40
MAX_LEN = 512
# Stated tolerance: Inductor reorders and fuses fp32 reductions (norms, attention, the GEMVs), which
# moves logits that span about +-30 on this checkpoint by ~1e-5; 1e-3 is upstream parity's bound.
LOGITS_ATOL = 1e-3


def test_compiled_t3_step_matches_eager_logits_and_greedy_tokens() -> None:
    import torch
    from test_t3_parity import Case

    from tts.t3 import T3Decoder

    case = Case("turbo")
    eager = T3Decoder(case.t3, case.family, dtype=torch.float32, max_len=MAX_LEN)
    compiled = T3Decoder(case.t3, case.family, dtype=torch.float32, max_len=MAX_LEN, compile=True)
    assert compiled.compiled and not eager.compiled
    with torch.inference_mode():
        text = eager.text_ids(case.raw_ids)
        prefix = eager.prefix_embeds(case.voice.cond_emb, text)
    assert len(eager.buckets_for(prefix.shape[1], STEPS)) == 1, "more buckets: more graphs to compile"

    # Greedy tokens through each decoder's own step (`_step`: torch.compile'd `_decode_step` or not).
    params = case.params()
    tokens = [t for block in eager.generate(prefix, STEPS, params) for t in block]
    assert len(tokens) == STEPS  # a random T3 does not emit its stop token this early
    assert [t for block in compiled.generate(prefix, STEPS, params) for t in block] == tokens

    # Logits: the step's forward and head (what `_decode_step` runs before sampling), compiled as the
    # decoder compiles its step, teacher-forced on the tokens above in each decoder's own cache.
    def step_logits(decoder: T3Decoder) -> Any:
        def logits(token: torch.Tensor, pos: torch.Tensor, speech_pos: torch.Tensor, kv_len: int) -> torch.Tensor:
            hidden = decoder._forward(decoder.step_embeds(token, speech_pos), pos, kv_len, prefill=False)
            return decoder._logits(hidden[:, -1])  # (rows, V)

        return logits

    eager_logits = step_logits(eager)
    mode = "reduce-overhead" if compiled.device.type == "cuda" else "default"  # as T3Decoder compiles
    compiled_logits = torch.compile(step_logits(compiled), mode=mode, fullgraph=True, dynamic=False)
    worst = 0.0
    with torch.inference_mode():
        eager.prefill(prefix)
        compiled.prefill(prefix)
        prefix_len = prefix.shape[1]
        for i, token in enumerate(tokens[:-1], start=1):
            pos = prefix_len + i - 1
            args = (torch.tensor([token], device=TEST_DEVICE), torch.tensor(pos, device=TEST_DEVICE),
                    torch.tensor(i, device=TEST_DEVICE), eager.kv_bucket(pos + 1))
            want, got = eager_logits(*args), compiled_logits(*args)
            assert int(got[0].argmax()) == int(want[0].argmax()), f"step {i}: compiled argmax differs"
            worst = max(worst, (got - want).abs().max().item())
    print(f"\ncompiled vs eager T3 step, fp32, {STEPS - 1} steps: max |logit difference| {worst:.2e}")
    assert worst < LOGITS_ATOL
