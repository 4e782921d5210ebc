"""`chatterd bench parts`: where one family's time goes on this machine, part by part, and its floor.

With the settings a user gets on this device (`tts.profiles`, `tts.loading`'s dtype picks), in one
process, at each thread count asked for (1: one side of the pipelined split on two cores; all:
inline), `repeats` times each, interleaved:

- **T3 step** (the served dtype): a decoded token's cost at a position halfway through a
  `--tokens` request, next to what bounds it: the bytes a step must read (its weights, and the K/V
  of every position so far: Turbo's 375 conditioning positions make this a quarter of the step)
  over the read bandwidth measured here at that thread count (summing a 512 MB buffer).
- **vocoder**, per chunk of n new tokens (the schedule's sizes): the flow encoder, the flow
  estimator (x the flow steps) and HiFT on the window a streamed chunk runs (voice prompt +
  context + n + lookahead tokens), each as seconds per second of the chunk's audio, next to its
  compute floor: its FLOPs (torch's FlopCounterMode, convolutions and matrix products) over the
  fp32 matrix-multiply throughput measured here at that thread count.
- **pipelined bound**: on a CPU the engine decodes T3 on `t3_threads` cores while the vocoder uses
  the rest, so the steady RTF cannot be below the slower side's (at the largest chunk); inline,
  the two sides add up.

Figures are seconds per second of audio (RTF shares): under 1.0 keeps up with playback.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import torch

from bench.stats import Summary

READ_BYTES = 512 * 2**20  # bandwidth probe: larger than any cache
MATMUL_N = 1024  # throughput probe: an fp32 (N x N) @ (N x N)
TEXT = "The front door is open, and the light in the hall is still on."


def _median_s(fn: Any, repeats: int) -> Summary:
    fn()  # warm (allocations, oneDNN primitives for this shape)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return Summary.of(times)


def read_bandwidth(repeats: int) -> float:
    """Bytes per second this thread count reads from memory (a sum over a buffer no cache holds)."""
    buf = torch.ones(READ_BYTES // 4)
    return READ_BYTES / _median_s(lambda: buf.sum(), repeats).median


def matmul_flops(repeats: int) -> float:
    """fp32 FLOP/s of a large matrix product at this thread count (the compute ceiling here)."""
    a, b = torch.randn(MATMUL_N, MATMUL_N), torch.randn(MATMUL_N, MATMUL_N)
    return 2 * MATMUL_N**3 / _median_s(lambda: a @ b, repeats).median


def flops_of(fn: Any) -> int:
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter:
        fn()
    return int(counter.get_total_flops())


def run(family: str, checkpoint: Path, tokens: int, repeats: int, threads: list[int]) -> dict[str, Any]:
    from tts.config import TTSConfig
    from tts.engine import StreamingTTS
    from tts.families import S3GEN_VOCAB
    from tts.vocoder import LOOKAHEAD, MEL_PER_TOKEN, SAMPLE_RATE

    engine = StreamingTTS.load(TTSConfig(model=family, checkpoint=str(checkpoint)))
    decoder, s3gen, flow = engine.decoder, engine.s3gen, engine.s3gen.flow
    voice = engine.voice_bank.get(None)
    settings = engine.settings()
    prompt_tokens = voice.prompt.tokens.shape[1]
    context = engine.resolved.context_tokens
    cfg = engine.config
    chunks = sorted({engine.resolved.first_chunk_tokens, cfg.chunk_tokens, 50, cfg.max_chunk_tokens})
    token_s = 1 / 25  # one speech token = 40 ms of audio

    with torch.inference_mode():
        prefix = decoder.prefix_embeds(voice.cond_emb, engine.encode(engine.clean(TEXT, "en"), "en"))
    prefix_len = prefix.shape[1]
    mid = prefix_len + tokens // 2  # the cache positions filled halfway through the request
    bb = decoder.backbone
    kv_bytes = 2 * decoder.n_layers * decoder.rows * bb.n_kv_heads * bb.head_dim * mid * decoder.k_cache.element_size()
    from bench.t3 import weight_bytes

    weights = weight_bytes(decoder)

    def t3_step() -> float:
        """Seconds per decoded token over a `tokens` request (after the first block)."""
        gen = torch.Generator().manual_seed(0)
        blocks = decoder.generate(prefix, tokens, engine.params, generator=gen, first_block=8,
                                  cached=engine.prefix_kv(voice))
        next(blocks)  # the prefill and first block: not a step's cost
        t0 = time.perf_counter()
        rest = sum(len(b) for b in blocks)
        return (time.perf_counter() - t0) / max(1, rest) if rest else float("nan")

    def window(new: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """What a streamed chunk of `new` tokens runs: token ids, the flow's frames, HiFT's mels."""
        n = prompt_tokens + context + new + LOOKAHEAD
        ids = torch.randint(0, S3GEN_VOCAB, (1, n), generator=torch.Generator().manual_seed(n))
        return ids, torch.randn(1, 80, MEL_PER_TOKEN * n), torch.randn(1, 80, MEL_PER_TOKEN * new) - 5

    def parts_for(new: int) -> dict[str, Any]:
        ids, frames, mels = window(new)
        lengths = torch.tensor([ids.shape[1]])
        t_frames = frames.shape[-1]
        mask, spks = torch.ones(1, 1, t_frames), torch.randn(1, 80)
        t, r = torch.tensor([0.5]), torch.tensor([1.0])
        no_cache = torch.zeros(1, 1, 0)
        calls = {
            "encoder": lambda: flow.encoder_proj(flow.encoder(flow.input_embedding(ids), lengths)[0]),
            "estimator": lambda: engine.flow_estimator(frames, mask, frames, t, spks, frames, r),
            "hift": lambda: s3gen.mel2wav.inference(speech_feat=mels, cache_source=no_cache),
        }
        per = {"encoder": 1, "estimator": engine.flow_steps, "hift": 1}
        return {"calls": calls, "per_chunk": per, "audio_s": new * token_s}

    with torch.inference_mode():
        flop_counts = {}
        for new in chunks:
            p = parts_for(new)
            flop_counts[new] = {name: flops_of(fn) for name, fn in p["calls"].items()}

    results: dict[str, Any] = {
        "family": family, "tokens": tokens, "repeats": repeats, "settings": settings,
        "prefix_positions": prefix_len, "t3_weight_bytes": weights, "t3_kv_bytes_per_step": kv_bytes,
        "chunks": chunks, "flops": {str(k): v for k, v in flop_counts.items()}, "threads": {},
    }
    before = torch.get_num_threads()
    try:
        for n_threads in threads:
            torch.set_num_threads(n_threads)
            with torch.inference_mode():
                bandwidth = read_bandwidth(repeats)
                peak = matmul_flops(repeats)
                step = Summary.of([t3_step() for _ in range(repeats)])
                row: dict[str, Any] = {
                    "read_bytes_per_s": bandwidth, "matmul_flop_per_s": peak,
                    "t3_step_s": step.to_json(),
                    "t3_step_floor_s": (weights + kv_bytes) / bandwidth,
                    "t3_rtf": step.median / token_s,
                    "t3_rtf_floor": (weights + kv_bytes) / bandwidth / token_s,
                    "vocoder": {},
                }
                for new in chunks:
                    p = parts_for(new)
                    per_part: dict[str, Any] = {}
                    for name, fn in p["calls"].items():
                        s = _median_s(fn, repeats)
                        count = p["per_chunk"][name]
                        per_part[name] = {
                            "call_s": s.to_json(), "calls_per_chunk": count,
                            "rtf": s.median * count / p["audio_s"],
                            "rtf_floor": flop_counts[new][name] * count / peak / p["audio_s"],
                        }
                    per_part["total_rtf"] = sum(v["rtf"] for v in per_part.values())
                    per_part["total_rtf_floor"] = sum(v["rtf_floor"] for k, v in per_part.items()
                                                      if k != "total_rtf")
                    row["vocoder"][str(new)] = per_part
            results["threads"][str(n_threads)] = row
    finally:
        torch.set_num_threads(before)
    big = str(max(chunks))
    rows = results["threads"]
    if "1" in rows:
        # Pipelined on two cores: each side on one; the steady RTF is the slower side's.
        side = rows["1"]
        results["pipelined_two_cores"] = {
            "t3_rtf": side["t3_rtf"], "vocoder_rtf": side["vocoder"][big]["total_rtf"],
            "bound_rtf": max(side["t3_rtf"], side["vocoder"][big]["total_rtf"]),
            "floor_rtf": max(side["t3_rtf_floor"], side["vocoder"][big]["total_rtf_floor"]),
        }
    all_threads = str(max(threads))
    inline = rows[all_threads]
    results["inline_all_threads"] = {
        "threads": int(all_threads),
        "bound_rtf": inline["t3_rtf"] + inline["vocoder"][big]["total_rtf"],
        "floor_rtf": inline["t3_rtf_floor"] + inline["vocoder"][big]["total_rtf_floor"],
    }
    results["sample_rate"] = SAMPLE_RATE
    return results


def report(results: dict[str, Any]) -> str:
    lines = [f"where {results['family']}'s time goes ({results['settings']}), "
             f"{results['repeats']} repeats, RTF shares (seconds per second of audio), measured / floor"]
    for n_threads, row in results["threads"].items():
        step = Summary(**row["t3_step_s"])
        lines.append(f"  {n_threads} thread(s): read {row['read_bytes_per_s'] / 1e9:.1f} GB/s, "
                     f"fp32 matmul {row['matmul_flop_per_s'] / 1e9:.0f} GFLOP/s")
        lines.append(f"    T3 step {step.fmt()}  = RTF {row['t3_rtf']:.2f} / floor {row['t3_rtf_floor']:.2f} "
                     f"({results['t3_weight_bytes'] / 1e6:.0f} MB weights + "
                     f"{results['t3_kv_bytes_per_step'] / 1e6:.0f} MB K/V per step)")
        for new, parts in row["vocoder"].items():
            shares = ", ".join(f"{name} {v['rtf']:.2f}/{v['rtf_floor']:.2f}" for name, v in parts.items()
                               if isinstance(v, dict))
            lines.append(f"    vocoder, {new}-token chunks: {shares}; total {parts['total_rtf']:.2f} "
                         f"/ floor {parts['total_rtf_floor']:.2f}")
    if "pipelined_two_cores" in results:
        p = results["pipelined_two_cores"]
        lines.append(f"  pipelined, one core each: T3 {p['t3_rtf']:.2f}, vocoder {p['vocoder_rtf']:.2f} -> steady RTF "
                     f">= {p['bound_rtf']:.2f} (floor {p['floor_rtf']:.2f})")
    i = results["inline_all_threads"]
    lines.append(f"  inline, {i['threads']} threads: steady RTF >= {i['bound_rtf']:.2f} (floor {i['floor_rtf']:.2f})")
    return "\n".join(lines)
