"""Streaming fidelity: a streamed waveform against one-shot vocoding of the same tokens.

Two streamers over the same S3Gen modules (any family's: the original's 10-step flow with CFG,
Turbo's 2-step meanflow) and the same token sequence:
  ours  tts.vocoder.StreamingVocoder with the engine's chunk schedule (fixed noise, lookahead held
        back, left context, HiFT cache, crossfades)
  seed  the seed's method (chatterbox-streaming's `_process_token_buffer`, re-stated here in ten
        lines on the same modules): S3Gen's one-shot `inference` (the family's default flow steps) on
        `context + chunk` tokens with fresh noise per call, the context's share of samples cut off, a
        20 ms linear fade-in
Both are compared with one-shot vocoding of all tokens (`vocode_all`, ours' noise; with the family's
tail silence, as its streamed last chunk has) by log-mel distance, by the error energy around the
seams, and by a reference-free seam jump.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
import torch

from tts.families import FlowSpec
from tts.flow_estimator import FlowEstimator
from tts.schedule import ChunkSchedule
from tts.vocoder import SAMPLE_RATE, StreamingVocoder, VoicePrompt, vocode_all

F32 = npt.NDArray[np.float32]


@dataclass(frozen=True)
class Streamed:
    audio: F32
    seams: list[int]  # sample index where each chunk after the first starts
    first_chunk_s: float = 0.0  # the first vocoder call's wall time (what first audio waits for)


def stream_ours(s3gen: Any, prompt: VoicePrompt, tokens: list[int], *, flow: FlowSpec, schedule: ChunkSchedule,
                flow_steps: int, context_tokens: int, crossfade_ms: float, seed: int, flow_cfg_rate: float,
                estimator: FlowEstimator | None = None, first_prompt_tokens: int | None = None,
                lean_below_s: float = 0.0) -> Streamed:
    generator = torch.Generator().manual_seed(seed)
    vocoder = StreamingVocoder(s3gen, prompt, max_tokens=len(tokens), flow=flow, flow_steps=flow_steps,
                               context_tokens=context_tokens, crossfade_ms=crossfade_ms, generator=generator,
                               flow_cfg_rate=flow_cfg_rate, estimator=estimator,
                               first_prompt_tokens=first_prompt_tokens)
    chunks: list[F32] = []
    available = 0
    first_chunk_s = 0.0
    while True:
        target = schedule.next()
        while available < len(tokens) and not vocoder.ready(available, target):
            available += 1
        if not vocoder.ready(available, target):
            break
        t0 = time.perf_counter()
        lean = schedule.buffered_s < lean_below_s  # as the engine decides (without timings: always)
        chunks.append(vocoder.process(tokens[:available], chunk=target, lean=lean))
        if len(chunks) == 1:
            first_chunk_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    chunks.append(vocoder.process(tokens, final=True, lean=schedule.buffered_s < lean_below_s))
    if len(chunks) == 1:  # the whole sequence was one window
        first_chunk_s = time.perf_counter() - t0
    return dataclasses.replace(_joined(chunks), first_chunk_s=first_chunk_s)


def one_shot(s3gen: Any, prompt: VoicePrompt, tokens: list[int], *, flow: FlowSpec, flow_steps: int, seed: int,
             flow_cfg_rate: float) -> F32:
    generator = torch.Generator().manual_seed(seed)
    return vocode_all(s3gen, prompt, tokens, flow=flow, flow_steps=flow_steps, generator=generator,
                      flow_cfg_rate=flow_cfg_rate)


@torch.inference_mode()
def stream_seed_method(s3gen: Any, ref_dict: dict[str, Any], tokens: list[int], *, chunk_size: int,
                       context_window: int, fade_s: float = 0.02) -> Streamed:
    """chatterbox-streaming's vocoding of a token stream (its `_process_token_buffer`), step for step."""
    chunks: list[F32] = []
    done: list[int] = []
    for start in range(0, len(tokens), chunk_size):
        new = tokens[start : start + chunk_size]
        context = done[-context_window:]
        clean = torch.tensor(context + new)
        wav, _ = s3gen.inference(speech_tokens=clean, ref_dict=ref_dict)
        wav = wav.squeeze(0).cpu().numpy()
        audio = wav[int(len(context) * len(wav) / len(clean)) :].copy()
        fade = min(int(fade_s * SAMPLE_RATE), len(audio))
        audio[:fade] *= np.linspace(0.0, 1.0, fade, dtype=audio.dtype)
        chunks.append(audio.astype(np.float32))
        done.extend(new)
    return _joined(chunks)


def _joined(chunks: list[F32]) -> Streamed:
    seams = list(np.cumsum([len(c) for c in chunks])[:-1].tolist())
    return Streamed(np.concatenate(chunks).astype(np.float32), [s for s in seams if s > 0])


def log_mel_distance(a: F32, b: F32) -> float:
    """Mean absolute difference of log-mel spectrograms (80 bands, 24 kHz, hop 256), same length."""
    import torchaudio

    n = min(len(a), len(b))
    mel = torchaudio.transforms.MelSpectrogram(SAMPLE_RATE, n_fft=1024, hop_length=256, n_mels=80)
    ma = torch.log(mel(torch.from_numpy(a[:n].copy())) + 1e-5)
    mb = torch.log(mel(torch.from_numpy(b[:n].copy())) + 1e-5)
    return float((ma - mb).abs().mean())


def seam_error(x: F32, reference: F32, seams: list[int], half_window: int = 240) -> float:
    """Energy of (x - reference) within +-10 ms of the seams, relative to the reference's energy."""
    if not seams:
        return 0.0
    n = min(len(x), len(reference))
    diff = x[:n] - reference[:n]
    windows = [diff[max(0, s - half_window) : min(n, s + half_window)] for s in seams if s < n]
    power = float(np.mean(reference[:n] ** 2)) + 1e-12
    return float(np.mean([np.mean(w**2) for w in windows]) / power)


def seam_jump(x: F32, seams: list[int]) -> float:
    """Reference-free: mean |x[s] - x[s-1]| at the seams over the mean sample-to-sample step elsewhere."""
    if not seams:
        return 0.0
    steps = np.abs(np.diff(x))
    at_seams = [steps[s - 1] for s in seams if 0 < s < len(x)]
    return float(np.mean(at_seams) / (np.mean(steps) + 1e-12))


def ref_dict_of(prompt: VoicePrompt) -> dict[str, Any]:
    """The upstream S3Gen `ref_dict` for exactly this prompt (so both methods see the same voice)."""
    return {"prompt_token": prompt.tokens, "prompt_token_len": torch.tensor([prompt.tokens.shape[1]]),
            "prompt_feat": prompt.mels, "prompt_feat_len": None, "embedding": prompt.xvector}


def compare(s3gen: Any, prompt: VoicePrompt, tokens: list[int], *, flow: FlowSpec, seed: int,
            flow_steps: int, context_tokens: int, crossfade_ms: float, schedule: tuple[int, int, float, int],
            seed_chunk: int, seed_context: int, flow_cfg_rate: float,
            first_prompt_tokens: int | None = None, lean_below_s: float = 0.0) -> dict[str, Any]:
    """Ours and the seed's method against one-shot vocoding of `tokens`; lower is better everywhere.

    `flow`: the family's flow decoder; `flow_steps`, `flow_cfg_rate` as the engine resolved them.
    """
    reference = one_shot(s3gen, prompt, tokens, flow=flow, flow_steps=flow_steps, seed=seed,
                         flow_cfg_rate=flow_cfg_rate)
    ours = stream_ours(s3gen, prompt, tokens, flow=flow, schedule=ChunkSchedule(*schedule), flow_steps=flow_steps,
                       context_tokens=context_tokens, crossfade_ms=crossfade_ms, seed=seed,
                       flow_cfg_rate=flow_cfg_rate, first_prompt_tokens=first_prompt_tokens,
                       lean_below_s=lean_below_s)
    torch.manual_seed(seed)
    seed_method = stream_seed_method(s3gen, ref_dict_of(prompt), tokens, chunk_size=seed_chunk,
                                     context_window=seed_context)
    result: dict[str, Any] = {"tokens": len(tokens), "flow_steps": flow_steps, "flow_cfg_rate": flow_cfg_rate,
                              "meanflow": flow.meanflow}
    for name, streamed in (("ours", ours), ("seed_method", seed_method)):
        result[name] = {
            "samples": len(streamed.audio),
            "seams": len(streamed.seams),
            "log_mel_distance": log_mel_distance(streamed.audio, reference),
            "seam_error": seam_error(streamed.audio, reference, streamed.seams),
            "seam_jump": seam_jump(streamed.audio, streamed.seams),
        }
    result["reference_samples"] = len(reference)
    return result
