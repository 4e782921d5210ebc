"""The streaming vocoder per family: upstream's solver, exact padding, bf16 within its tolerance, and
fidelity against one-shot vocoding (the original's 10-step flow with CFG, Turbo's 2-step meanflow)."""

from __future__ import annotations

import copy
from typing import Any

import numpy as np
import pytest
import torch
from model_fixtures import checkpoint_of

from bench import fidelity
from tts.families import S3GEN_VOCAB, Family, family
from tts.flow_estimator import FlowEstimator
from tts.schedule import ChunkSchedule
from tts.vocoder import MEL_PER_TOKEN, SAMPLES_PER_MEL, StreamingVocoder, VoicePrompt
from tts.voices import load_conds_file

pytestmark = pytest.mark.model


class Vocoder:
    """A family's upstream S3Gen in fp32 with its checkpoint's weights and built-in voice prompt."""

    def __init__(self, name: str) -> None:
        from chatterbox.models.s3gen import S3Gen

        from tts.checkpoint import load_weights

        self.family: Family = family(name)
        directory = checkpoint_of(name)
        self.s3gen = S3Gen(meanflow=self.family.flow.meanflow)
        load_weights(self.s3gen, directory / self.family.flow.weights, strict=False)
        self.s3gen.eval()
        gen = load_conds_file(directory / "conds.pt")["gen"]
        self.prompt = VoicePrompt.from_ref_dict(gen, 25, torch.device("cpu"))

    def streamer(self, **kwargs: Any) -> StreamingVocoder:
        flow = self.family.flow
        return StreamingVocoder(self.s3gen, self.prompt, flow=flow, flow_steps=kwargs.pop("flow_steps", flow.steps),
                                flow_cfg_rate=flow.cfg_rate, generator=torch.Generator().manual_seed(0), **kwargs)


@pytest.fixture(scope="module", params=["turbo", "original"])
def vocoder(request: pytest.FixtureRequest) -> Vocoder:
    return Vocoder(request.param)


def _tokens(n: int, seed: int = 0) -> list[int]:
    return torch.randint(0, S3GEN_VOCAB, (n,), generator=torch.Generator().manual_seed(seed)).tolist()


@torch.inference_mode()
def test_our_euler_solver_is_upstreams(vocoder: Vocoder) -> None:
    """Upstream's CFM solve_euler (cosine schedule, flow CFG) or, for meanflow, basic_euler (linear
    schedule, (t, r) times, no CFG), on the same inputs."""
    ours = vocoder.streamer(max_tokens=10, context_tokens=0, crossfade_ms=0)
    g = torch.Generator().manual_seed(1)
    z, mu, cond = (torch.randn(1, 80, 24, generator=g) for _ in range(3))
    mask = torch.ones(1, 1, 24)
    got = ours._solve_euler(z, mu, mask, cond)
    cfm = vocoder.s3gen.flow.decoder
    if vocoder.family.flow.meanflow:
        expected = cfm.basic_euler(z, t_span=ours.t_span, mu=mu, mask=mask, spks=ours.spks, cond=cond)
    else:
        expected = cfm.solve_euler(z, t_span=ours.t_span, mu=mu, mask=mask, spks=ours.spks, cond=cond)
    assert torch.allclose(got, expected, atol=1e-5)


@torch.inference_mode()
def test_bucket_padding_leaves_the_real_frames_exact(vocoder: Vocoder) -> None:
    # 45 frames run padded to 64: causal convs, per-frame norms and masked attention must make the
    # padding invisible to the real frames.
    upstream = vocoder.s3gen.flow.decoder.estimator
    g = torch.Generator().manual_seed(2)
    x, mu, cond = (torch.randn(2, 80, 45, generator=g) for _ in range(3))
    t, r = torch.tensor([0.2, 0.2]), torch.tensor([0.7, 0.7])
    spks = torch.randn(2, 80, generator=g)
    ours = FlowEstimator(upstream, compile=False, bucketed=True)
    padded = ours(x, torch.ones(2, 1, 45), mu, t, spks, cond, r)
    assert ours.lengths_seen == {64}
    extra = {"r": r} if vocoder.family.flow.meanflow else {}
    assert torch.allclose(padded, upstream(x, torch.ones(2, 1, 45), mu, t, spks, cond, **extra), atol=1e-5)


@torch.inference_mode()
def test_bf16_estimator_stays_within_its_tolerance_of_fp32(vocoder: Vocoder) -> None:
    """Real bf16 weights (the CPU profile's vocoder_dtype): the velocity within 5% (relative L2) of fp32's."""
    upstream = vocoder.s3gen.flow.decoder.estimator
    g = torch.Generator().manual_seed(3)
    x, mu, cond = (torch.randn(1, 80, 96, generator=g) for _ in range(3))
    inputs = (x, torch.ones(1, 1, 96), mu, torch.tensor([0.3]), torch.randn(1, 80, generator=g), cond,
              torch.tensor([0.8]))
    reference = FlowEstimator(upstream, compile=False)(*inputs)
    bf16 = FlowEstimator(copy.deepcopy(upstream), compile=False, dtype=torch.bfloat16)
    assert bf16.bucketed  # oneDNN's bf16 kernels are built per shape: few, warmed shapes
    got = bf16(*inputs)
    assert got.dtype == torch.float32
    assert ((got - reference).norm() / reference.norm()).item() < 0.05



@torch.inference_mode()
def test_the_flow_in_onnxruntime_is_the_torch_flow(vocoder: Vocoder) -> None:
    """tts.onnx_flow: the token encoder and the estimator exported at one length run any length
    (and the original's two CFG rows) within 1e-4 of torch's fp32, on one and two threads."""
    from tts import onnx_flow
    from tts.vocoder import TokenEncoder

    flow = vocoder.s3gen.flow
    encoder, torch_encoder = onnx_flow.token_encoder(flow), TokenEncoder(flow)
    estimator = FlowEstimator(flow.decoder.estimator, compile=False, runtime="onnxruntime")
    reference = FlowEstimator(flow.decoder.estimator, compile=False)
    assert not estimator.bucketed and estimator.dtype == torch.float32
    g = torch.Generator().manual_seed(5)
    threads = torch.get_num_threads()
    try:
        for n_threads in (1, 2):
            torch.set_num_threads(n_threads)
            for n in (13, 61):
                tokens = torch.randint(0, S3GEN_VOCAB, (1, n), generator=g)
                want = torch_encoder(tokens, torch.tensor([n]))
                got = encoder(tokens, torch.tensor([n]))
                assert got.shape == want.shape == (1, 2 * n, 80)
                assert ((got - want).norm() / want.norm()).item() < 1e-4
            for rows, frames in ((1, 40), (2, 150)):
                x, mu, cond = (torch.randn(rows, 80, frames, generator=g) for _ in range(3))
                inputs = (x, torch.ones(rows, 1, frames), mu, torch.full((rows,), 0.3),
                          torch.randn(rows, 80, generator=g), cond, torch.full((rows,), 0.8))
                want = reference(*inputs)
                got = estimator(*inputs)
                assert got.shape == want.shape
                assert ((got - want).norm() / want.norm()).item() < 1e-4
    finally:
        torch.set_num_threads(threads)


def test_the_flow_runtime_is_onnxruntime_only_on_an_avx512_cpu(monkeypatch: pytest.MonkeyPatch) -> None:
    from tts import loading
    from tts.errors import DeviceError

    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    monkeypatch.setattr(loading, "cpu_flags", lambda: frozenset({"avx2", "fma", "avx512f"}))
    assert loading.pick_flow_runtime("auto", cpu, compile=False) == "onnxruntime"
    assert loading.pick_flow_runtime("auto", cpu, compile=True) == "torch"  # compiled graphs are torch's
    assert loading.pick_flow_runtime("auto", cuda, compile=False) == "torch"
    assert loading.pick_flow_runtime("torch", cpu, compile=False) == "torch"
    monkeypatch.setattr(loading, "cpu_flags", lambda: frozenset({"avx2", "fma"}))
    assert loading.pick_flow_runtime("auto", cpu, compile=False) == "torch"
    assert loading.pick_flow_runtime("onnxruntime", cpu, compile=False) == "onnxruntime"
    with pytest.raises(DeviceError, match="CPU path"):
        loading.pick_flow_runtime("onnxruntime", cuda, compile=False)


def test_hift_runs_at_bucketed_lengths_once_its_cache_is_full(vocoder: Vocoder) -> None:
    # oneDNN builds HiFT's kernels per input length: chunks of any size take as many cached frames
    # as context as round the input up to a bucket (at least HIFT_CONTEXT_MELS).
    from tts.vocoder import HIFT_BUCKET_MELS, HIFT_CONTEXT_MELS, hift_length

    assert [hift_length(n) for n in (1, 8, 9, 24, 25)] == [16, 16, 32, 32, 48]
    lengths: list[int] = []
    hift = vocoder.s3gen.mel2wav
    inference = hift.inference

    def recording(speech_feat: torch.Tensor, cache_source: torch.Tensor) -> Any:
        lengths.append(speech_feat.shape[2])
        # The cached source covers the context frames (whole frames, fewer than the input's).
        assert cache_source.shape[2] % 480 == 0 and cache_source.shape[2] < speech_feat.shape[2] * 480
        return inference(speech_feat=speech_feat, cache_source=cache_source)

    hift.inference = recording
    try:
        flow = vocoder.family.flow
        streamed = fidelity.stream_ours(vocoder.s3gen, vocoder.prompt, _tokens(60, seed=2), flow=flow,
                                        schedule=ChunkSchedule(5, 7, 1.5, 13), flow_steps=1, context_tokens=8,
                                        crossfade_ms=20, seed=0, flow_cfg_rate=flow.cfg_rate)
    finally:
        del hift.inference
    assert len(lengths) >= 6 and np.isfinite(streamed.audio).all()
    assert lengths[0] == 2 * 5  # the first chunk has no cache
    # From the second call on every input is a bucket: right after the first chunk (10 cached
    # frames) with less context, from the third on with at least HIFT_CONTEXT_MELS.
    assert all(n % HIFT_BUCKET_MELS == 0 for n in lengths[1:]), lengths
    assert all(n >= HIFT_CONTEXT_MELS for n in lengths[2:]), lengths


def test_hift_context_keeps_inputs_on_buckets_even_behind_a_short_cache() -> None:
    from tts.vocoder import HIFT_BUCKET_MELS, HIFT_CONTEXT_MELS, hift_context, hift_length

    for new in range(1, 80):
        full = hift_context(new, cached=HIFT_CONTEXT_MELS + HIFT_BUCKET_MELS - 1)
        assert full >= HIFT_CONTEXT_MELS and full + new == hift_length(new)
        # After a 9-token first chunk (18 cached frames): a bucket with what the cache holds.
        short = hift_context(new, cached=18)
        assert short <= 18 and (short + new) % HIFT_BUCKET_MELS == 0
    assert hift_context(28, cached=3) == 3  # too short for any bucket: all of it, unrounded

def test_stream_voices_every_token_and_flushes_the_end(vocoder: Vocoder) -> None:
    tokens = _tokens(31)
    flow = vocoder.family.flow
    streamed = fidelity.stream_ours(vocoder.s3gen, vocoder.prompt, tokens, flow=flow,
                                    schedule=ChunkSchedule(5, 8, 2.0, 16), flow_steps=2, context_tokens=8,
                                    crossfade_ms=20, seed=0, flow_cfg_rate=flow.cfg_rate)
    # Every token is voiced, plus the family's tail silence (Turbo: 3 silence tokens, as upstream).
    assert len(streamed.audio) == (len(tokens) + flow.tail_silence) * MEL_PER_TOKEN * SAMPLES_PER_MEL
    assert len(streamed.seams) >= 2
    last_token = streamed.audio[-(1 + flow.tail_silence) * MEL_PER_TOKEN * SAMPLES_PER_MEL:]
    assert np.abs(last_token).max() > 0, "the last token must be voiced, not cut"


def test_streaming_is_closer_to_one_shot_than_the_seed_method(vocoder: Vocoder) -> None:
    flow = vocoder.family.flow
    result = fidelity.compare(vocoder.s3gen, vocoder.prompt, _tokens(40, seed=2), flow=flow, seed=5,
                              flow_steps=2, context_tokens=12, crossfade_ms=20, schedule=(6, 12, 2.0, 24),
                              seed_chunk=12, seed_context=12, flow_cfg_rate=flow.cfg_rate)
    ours, seed = result["ours"], result["seed_method"]
    assert ours["samples"] == result["reference_samples"]
    assert ours["log_mel_distance"] < seed["log_mel_distance"]
    assert ours["seam_error"] < seed["seam_error"]


def test_a_shorter_first_prompt_shortens_only_the_first_window(vocoder: Vocoder) -> None:
    from tts.vocoder import window_frames

    flow = vocoder.family.flow
    tokens = _tokens(31, seed=3)
    streams = {}
    for first_prompt in (None, 10):
        estimator = FlowEstimator(vocoder.s3gen.flow.decoder.estimator, compile=False, bucketed=False)
        calls: list[int] = []
        run = estimator._forward
        estimator._forward = lambda x, *rest, run=run, calls=calls: calls.append(x.shape[-1]) or run(x, *rest)
        streams[first_prompt] = (calls, fidelity.stream_ours(
            vocoder.s3gen, vocoder.prompt, tokens, flow=flow, schedule=ChunkSchedule(5, 8, 2.0, 16), flow_steps=1,
            context_tokens=8, crossfade_ms=20, seed=0, flow_cfg_rate=flow.cfg_rate, estimator=estimator,
            first_prompt_tokens=first_prompt))
    (whole_calls, whole), (short_calls, short) = streams[None], streams[10]
    prompt_frames = vocoder.prompt.mels.shape[1]
    # The estimator sees prompt + chunk frames (the encoder's lookahead frames are cut before it).
    assert whole_calls[0] == prompt_frames + 5 * MEL_PER_TOKEN
    assert short_calls[0] == (10 + 5) * MEL_PER_TOKEN  # the first window, behind 10 prompt tokens
    assert short_calls[1:] == whole_calls[1:]  # every later window behind the whole prompt again
    assert short_calls[0] in window_frames(vocoder.prompt, 8, 16, 10)  # warmed up with the others
    assert len(short.audio) == len(whole.audio) and short.seams == whole.seams
    # The first chunk differs; the second a little (HiFT renders it behind the first's last mel
    # frames); from the third on the audio is the same.
    first, second = whole.seams[:2]
    assert not np.allclose(short.audio[:first], whole.audio[:first])
    peak = np.abs(whole.audio).max()
    assert np.abs(short.audio[first:second] - whole.audio[first:second]).max() < 0.02 * peak
    np.testing.assert_allclose(short.audio[second:], whole.audio[second:], atol=1e-6)



def test_lean_chunks_run_behind_the_first_prompt_the_final_one_too(vocoder: Vocoder) -> None:
    from tts.vocoder import window_frames

    flow = vocoder.family.flow
    tokens = _tokens(31, seed=3)
    estimator = FlowEstimator(vocoder.s3gen.flow.decoder.estimator, compile=False, bucketed=False)
    calls: list[int] = []
    run = estimator._forward
    estimator._forward = lambda x, *rest: calls.append(x.shape[-1]) or run(x, *rest)  # type: ignore[method-assign]
    # No timings reach this schedule, so its queue reads empty: every chunk is lean, the final too.
    lean = fidelity.stream_ours(
        vocoder.s3gen, vocoder.prompt, tokens, flow=flow, schedule=ChunkSchedule(5, 8, 2.0, 16), flow_steps=1,
        context_tokens=8, crossfade_ms=20, seed=0, flow_cfg_rate=flow.cfg_rate, estimator=estimator,
        first_prompt_tokens=10, lean_below_s=1.0)
    prompt_frames = vocoder.prompt.mels.shape[1]
    # Windows: 5 new tokens (no context yet), then 8 behind 5 of context, then the final rest.
    assert calls[0] == (10 + 5) * MEL_PER_TOKEN
    assert calls[1] == (10 + 5 + 8) * MEL_PER_TOKEN
    lean_final = calls[-1]
    assert set(calls[:-1]) <= set(window_frames(vocoder.prompt, 8, 16, 10, lean=True))  # warmed up
    assert len(lean.audio) > 0 and np.isfinite(lean.audio).all()
    # Without lean chunks the final window sees the whole prompt again.
    calls.clear()
    fidelity.stream_ours(
        vocoder.s3gen, vocoder.prompt, tokens, flow=flow, schedule=ChunkSchedule(5, 8, 2.0, 16), flow_steps=1,
        context_tokens=8, crossfade_ms=20, seed=0, flow_cfg_rate=flow.cfg_rate, estimator=estimator,
        first_prompt_tokens=10, lean_below_s=0.0)
    assert calls[0] == (10 + 5) * MEL_PER_TOKEN and calls[-1] > prompt_frames
    # The same final window, behind 10 prompt tokens instead of the whole prompt.
    assert lean_final == calls[-1] - (prompt_frames - 10 * MEL_PER_TOKEN)

def _upstream_hift(seed: int) -> torch.nn.Module:
    """HiFT as upstream's S3Gen builds it (its 24 kHz, 8x5x3 configuration), seeded random weights."""
    from chatterbox.models.s3gen.f0_predictor import ConvRNNF0Predictor
    from chatterbox.models.s3gen.hifigan import HiFTGenerator

    torch.manual_seed(seed)
    return HiFTGenerator(sampling_rate=24000, upsample_rates=[8, 5, 3], upsample_kernel_sizes=[16, 11, 7],
                         source_resblock_kernel_sizes=[7, 7, 11],
                         source_resblock_dilation_sizes=[[1, 3, 5], [1, 3, 5], [1, 3, 5]],
                         f0_predictor=ConvRNNF0Predictor()).eval()


@torch.inference_mode()
def test_prepared_hift_is_upstreams_hift() -> None:
    """Weight norm folded, fewer-pass Snakes and time-major narrow convolutions: the same waveform
    and NSF source as upstream's HiFT (summation order aside), also with a cached source."""
    from tts.vocoder import _ChannelsLastConv, prepare_hift

    upstream, prepared = _upstream_hift(0), _upstream_hift(0)
    prepare_hift(prepared, torch.float32)
    assert sum(isinstance(m, _ChannelsLastConv) for m in prepared.modules()) > 40
    mel = torch.randn(1, 80, 40, generator=torch.Generator().manual_seed(4))
    torch.manual_seed(7)
    expected, source = upstream.inference(speech_feat=mel)
    torch.manual_seed(7)
    got, got_source = prepared.inference(speech_feat=mel)
    assert torch.equal(got_source, source)
    assert ((got - expected).abs().max() / expected.abs().max()).item() < 1e-4
    cache = source[:, :, : 8 * SAMPLES_PER_MEL]
    torch.manual_seed(8)
    expected, _ = upstream.inference(speech_feat=mel, cache_source=cache)
    torch.manual_seed(8)
    got, _ = prepared.inference(speech_feat=mel, cache_source=cache)
    assert ((got - expected).abs().max() / expected.abs().max()).item() < 1e-4
    # Each time-major convolution turns back into its upstream module (`bench parts` times both).
    for conv in (m for m in prepared.modules() if isinstance(m, _ChannelsLastConv)):
        x = torch.randn(1, conv.weight.shape[0 if conv.transposed else 1] * conv.groups, 50)
        assert torch.allclose(conv.channel_major()(x), conv(x), atol=1e-5)



@torch.inference_mode()
def test_prepared_bf16_hift_runs_its_narrow_convolutions_time_major_with_bf16_weights() -> None:
    """bf16: every convolution has bf16 weights (the narrow ones time-major, the wide ones behind
    `_Bf16Conv`), fp32 in and out, within bf16's error of upstream's fp32 HiFT and of the
    channel-major bf16 path before."""
    from tts.vocoder import _Bf16Conv, _ChannelsLastConv, prepare_hift

    upstream, prepared = _upstream_hift(0), _upstream_hift(0)
    prepare_hift(prepared, torch.bfloat16)
    time_major = [m for m in prepared.modules() if isinstance(m, _ChannelsLastConv)]
    assert len(time_major) > 40 and all(m.weight.dtype == torch.bfloat16 for m in time_major)
    assert any(isinstance(m, _Bf16Conv) for m in prepared.modules())
    assert not any(type(m) in (torch.nn.Conv1d, torch.nn.ConvTranspose1d) and m.weight.dtype == torch.float32
                   for m in prepared.modules() if not isinstance(m, _Bf16Conv))
    mel = torch.randn(1, 80, 40, generator=torch.Generator().manual_seed(4))
    torch.manual_seed(7)
    expected, source = upstream.inference(speech_feat=mel)
    torch.manual_seed(7)
    got, got_source = prepared.inference(speech_feat=mel)
    assert got.dtype == torch.float32
    assert ((got - expected).norm() / expected.norm()).item() < 0.03
    for conv in time_major:
        x = torch.randn(1, conv.weight.shape[0 if conv.transposed else 1] * conv.groups, 50)
        back = conv.channel_major()
        assert isinstance(back, _Bf16Conv)
        assert torch.allclose(back(x), conv(x), rtol=1e-2, atol=1e-2)

@torch.inference_mode()
def test_snake_kernel_is_upstreams_snake_in_both_layouts(monkeypatch) -> None:
    from chatterbox.models.s3gen.hifigan import Snake

    import tts.native as native
    from tts.vocoder import _Snake, snake_kernel

    upstream = Snake(64, alpha_logscale=False)
    upstream.alpha.data = torch.rand(64, generator=torch.Generator().manual_seed(1)) * 2 + 0.1
    assert snake_kernel() is not None  # gcc is part of the setup
    ours = _Snake(upstream, fused=True)
    x = torch.randn(1, 64, 3000, generator=torch.Generator().manual_seed(2)) * 4
    time_major = x.transpose(1, 2).contiguous().transpose(1, 2)  # strides (C*T, 1, C)
    strided = x[:, :, ::2]  # neither layout: the torch path
    for got_from in (x, time_major, strided):
        got = ours(got_from)
        want = upstream(got_from)
        assert got.stride() == got_from.stride() or got_from is strided
        assert ((got - want).abs().max() / want.abs().max()).item() < 1e-6
    # Without a compiler HiFT's Snakes run in torch; it is said once.
    monkeypatch.setattr(native, "_libraries", {})
    monkeypatch.setenv("CC", "false")
    assert snake_kernel() is None
    assert torch.allclose(ours(x), upstream(x), atol=1e-5)  # a fused Snake falls back to torch


@torch.inference_mode()
def test_bench_parts_times_hift_against_its_path_before() -> None:
    from types import SimpleNamespace

    from bench.parts import hift_candidates
    from tts.vocoder import prepare_hift

    served = _upstream_hift(0)
    prepare_hift(served, torch.float32)
    result = hift_candidates(SimpleNamespace(s3gen=SimpleNamespace(mel2wav=served)), frames=12, repeats=1)
    rows = result["rows"]
    assert list(rows) == ["served", "channel-major convolutions", "torch Snakes", "both (before)"]
    assert rows["served"]["rel_err"] == 0.0
    for row in rows.values():
        assert row["call_s"]["median"] > 0 and row["rel_err"] < 1e-4
