"""`chatterd bench knobs`: each vocoder knob alone, its cost and what it changes in the audio.

The same T3 tokens are vocoded by one family's streamer (`--family`, default the original, whose
vocoder these knobs were made for) with its defaults and with one knob changed at a time (then all
fast knobs together). Cost: vocoder seconds per second of audio.
Fidelity cost: log-mel distance to one-shot vocoding at the defaults (the best this model does),
next to the defaults' own streamed distance. The `compile` variant runs the defaults through the
compiled, bucketed flow estimator (its compile time reported apart). On random weights this
measures how far a knob moves the output, not how it sounds.
"""

from __future__ import annotations

import copy
import dataclasses
import time
from pathlib import Path
from typing import Any

import torch

from bench import fidelity
from bench.stats import Summary
from tts.families import S3GEN_VOCAB
from tts.schedule import ChunkSchedule
from tts.vocoder import SAMPLE_RATE, VoicePrompt

VARIANTS: dict[str, dict[str, Any]] = {
    "defaults": {},
    "flow_steps=4": {"flow_steps": 4},
    "flow_cfg_rate=0": {"flow_cfg_rate": 0.0},
    "prompt_tokens=25": {"prompt_tokens": 25},
    # The first chunk's prompt (first audio waits for that chunk): the whole prompt, and shorter.
    "first_prompt_tokens=whole": {"first_prompt_tokens": 100_000},
    "first_prompt_tokens=12": {"first_prompt_tokens": 12},
    "context_tokens=25": {"context_tokens": 25},
    # Lean chunks (behind the first prompt while the queue is thin): off, and on for every chunk
    # (this bench's schedule has no timings, so its queue always reads empty: the upper bound).
    "lean_below_s=0": {"lean_below_s": 0.0},
    "lean_below_s=1": {"lean_below_s": 1.0},
    "all fast knobs": {"flow_steps": 4, "flow_cfg_rate": 0.0, "prompt_tokens": 25, "context_tokens": 25,
                       "first_chunk_tokens": 8},
    # The flow estimator compiled (bucketed windows); its one-off compile time is reported apart.
    "compile": {"compile": True, "dtype": "float32"},  # (T3's dtype is not used here; int8 forbids compile)
    # Fewer flow frames per chunk, and chunks that amortise them (Turbo's CPU candidates, issue 12).
    "prompt_tokens=100": {"prompt_tokens": 100},
    "context_tokens=12": {"context_tokens": 12},
    "context_tokens=0": {"context_tokens": 0},
    "max_chunk_tokens=150": {"max_chunk_tokens": 150},
    "flow_steps=1": {"flow_steps": 1},
    # bf16 estimator weights, wherever measured (the engine's auto picks them only with native bf16).
    "vocoder_dtype=bfloat16": {"vocoder_dtype": "bfloat16"},
}


def run(family: str, checkpoint: Path, tokens: int, repeats: int, only: list[str] | None = None) -> dict[str, Any]:
    from tts.config import TTSConfig
    from tts.engine import StreamingTTS
    from tts.flow_estimator import FlowEstimator
    from tts.profiles import resolve
    from tts.vocoder import window_frames
    from tts.voices import load_conds_file

    # An fp32 flow estimator throughout: the reference (vocode_all) cannot take the engine's bf16 one.
    defaults = TTSConfig(model=family, checkpoint=str(checkpoint), dtype="int8", vocoder_dtype="float32")
    engine = StreamingTTS.load(defaults)
    flow = engine.family.flow
    voice = engine.voice_bank.get(None)
    ref_dict = load_conds_file(engine.checkpoint_dir / "conds.pt")["gen"]  # the default voice's S3Gen prompt
    ids = torch.randint(0, S3GEN_VOCAB, (tokens,), generator=torch.Generator().manual_seed(0)).tolist()
    reference = fidelity.one_shot(engine.s3gen, voice.prompt, ids, flow=flow, flow_steps=flow.steps, seed=0,
                                  flow_cfg_rate=engine.flow_cfg_rate)
    results: dict[str, Any] = {"family": family, "tokens": tokens, "repeats": repeats, "defaults": engine.settings(),
                               "variants": {}}
    for name, change in VARIANTS.items():
        if only and name not in only:
            continue
        cfg = dataclasses.replace(defaults, **change)
        knobs = resolve(cfg, engine.family, engine.device)  # null = the family's or the device profile's
        steps, rate, context = knobs.flow_steps, knobs.flow_cfg_rate, knobs.context_tokens
        if flow.meanflow and rate > 0:
            continue  # a meanflow decoder has no flow CFG
        prompt = VoicePrompt.from_ref_dict(ref_dict, knobs.prompt_tokens, engine.device)
        estimator, compile_s = None, None
        if cfg.vocoder_dtype == "bfloat16":  # a copy: the engine's fp32 estimator serves the others
            estimator = FlowEstimator(copy.deepcopy(engine.s3gen.flow.decoder.estimator), compile=False,
                                      dtype=torch.bfloat16)
            estimator.warm_up(window_frames(prompt, context, cfg.max_chunk_tokens, knobs.first_prompt_tokens,
                                            lean=knobs.lean_below_s > 0),
                              rows=1, device=engine.device)
        if cfg.compile:
            estimator = FlowEstimator(engine.s3gen.flow.decoder.estimator, compile=True)
            t0 = time.perf_counter()
            estimator.warm_up(window_frames(prompt, context, cfg.max_chunk_tokens, knobs.first_prompt_tokens,
                                            lean=knobs.lean_below_s > 0),
                              rows=2 if rate > 0 else 1, device=engine.device)
            compile_s = time.perf_counter() - t0
        seconds, first_chunk, streamed = [], [], None
        for _ in range(repeats):
            t0 = time.perf_counter()
            streamed = fidelity.stream_ours(
                engine.s3gen, prompt, ids, flow=flow, flow_steps=steps, context_tokens=context,
                crossfade_ms=cfg.crossfade_ms, seed=0, flow_cfg_rate=rate, estimator=estimator,
                first_prompt_tokens=knobs.first_prompt_tokens, lean_below_s=knobs.lean_below_s,
                schedule=ChunkSchedule(knobs.first_chunk_tokens, knobs.chunk_tokens, cfg.chunk_growth,
                                       cfg.max_chunk_tokens))
            seconds.append(time.perf_counter() - t0)
            first_chunk.append(streamed.first_chunk_s)
        assert streamed is not None
        audio_s = len(streamed.audio) / SAMPLE_RATE
        first = streamed.seams[0] if streamed.seams else len(streamed.audio)
        results["variants"][name] = {
            "change": change,
            "vocoder_rtf": Summary.of([s / audio_s for s in seconds]).to_json(),
            "first_chunk_s": Summary.of(first_chunk).to_json(),
            "log_mel_distance_to_default_one_shot": fidelity.log_mel_distance(streamed.audio, reference),
            # The first chunk alone (first audio): its samples against the same samples one-shot.
            "first_chunk_log_mel_distance": fidelity.log_mel_distance(streamed.audio[:first], reference[:first]),
        }
        if compile_s is not None:
            results["variants"][name]["compile_and_warm_up_s"] = compile_s
    return results


def report(results: dict[str, Any]) -> str:
    lines = [f"vocoder knobs ({results['family']}), {results['tokens']} tokens, {results['repeats']} repeats: "
             "vocoder RTF (median [min-max]) and log-mel distance to one-shot at the defaults"]
    for name, v in results["variants"].items():
        rtf = Summary(**v["vocoder_rtf"])
        first = Summary(**v["first_chunk_s"])
        lines.append(f"  {name:26s} RTF {rtf.fmt('', 1)}  distance {v['log_mel_distance_to_default_one_shot']:.3f}"
                     f"  first chunk {first.fmt()}, distance {v['first_chunk_log_mel_distance']:.3f}"
                     + (f"  (compile + warm-up {v['compile_and_warm_up_s']:.0f} s)"
                        if "compile_and_warm_up_s" in v else ""))
    return "\n".join(lines)
