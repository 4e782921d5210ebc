"""`chatterd bench t3`: one T3 decoding step, upstream's loop vs ours, against the weight-read floor.

Per dtype, in one process, interleaved so machine noise hits every variant alike:
  upstream  chatterbox's own `T3.inference` loop (HF Llama, eager attention, host-side sampling)
  eager     our T3Decoder without compilation
  compiled  our T3Decoder under torch.compile (one bucket graph; optional, minutes on a CPU)
  floor     one pass reading every weight the step reads (GEMV over all linear weights in that
            dtype, batch 2 as the CFG rows): the memory-bandwidth floor of a step.
A step's time is (time for 1+K tokens - time for 1 token) / K, which removes the prefill.
"""

from __future__ import annotations

import copy
import gc
import os
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from bench.stats import Summary, timed

TEXT = "The front door is open, and the kitchen lights are still on."


def _load_t3(checkpoint: Path) -> Any:
    from chatterbox.models.t3 import T3

    from tts.engine import _load_state

    t3 = T3()
    _load_state(t3, checkpoint / "t3_cfg.safetensors", strict=True)
    return t3.eval()


def _text_ids(checkpoint: Path) -> torch.Tensor:
    from chatterbox.models.tokenizers import EnTokenizer

    ids = EnTokenizer(str(checkpoint / "tokenizer.json")).text_to_tokens(TEXT).long()
    return F.pad(F.pad(ids, (1, 0), value=255), (0, 1), value=0)  # (1, T) with start/stop


def _upstream_step(t3: Any, conds: dict[str, Any], ids: torch.Tensor, steps: int,
                   dtype: torch.dtype) -> float:
    from chatterbox.models.t3.modules.cond_enc import T3Cond

    def run(n: int) -> float:
        fields = {k: v for k, v in copy.deepcopy(conds["t3"]).items() if k != "cond_prompt_speech_emb"}
        cond = T3Cond(**fields).to(dtype=dtype)
        return timed(lambda: t3.inference(t3_cond=cond, text_tokens=ids.expand(2, -1), max_new_tokens=n,
                                          temperature=0.8, cfg_weight=0.5, repetition_penalty=1.2,
                                          min_p=0.05, top_p=1.0))

    return (run(1 + steps) - run(1)) / steps


def _ours_step(decoder: Any, prefix: torch.Tensor, steps: int) -> float:
    from tts.t3 import SamplingParams

    params = SamplingParams()

    def run(n: int) -> float:
        gen = torch.Generator().manual_seed(0)
        return timed(lambda: [b for b in decoder.generate(prefix, n, params, generator=gen, check_every=n)])

    return (run(1 + steps) - run(1)) / steps


def _step_linears(decoder: Any) -> list[Any]:
    from torch.ao.nn.quantized.dynamic import Linear as DynamicQuantLinear

    linears = [m for m in decoder.blocks.modules() if isinstance(m, (torch.nn.Linear, DynamicQuantLinear))]
    return [*linears, decoder.t3.speech_head]


def _floor(decoder: Any, dtype: torch.dtype, int8: bool) -> float:
    """Read every weight a step reads once: all backbone linears and the speech head, batch 2."""
    linears = _step_linears(decoder)
    x_dtype = torch.float32 if int8 else dtype
    inputs = {m.in_features: torch.randn(2, m.in_features, dtype=x_dtype) for m in linears}
    with torch.inference_mode():
        t0 = time.perf_counter()
        for m in linears:
            m(inputs[m.in_features])
        return time.perf_counter() - t0


def _numeric_cost(decoder: Any, prefix: torch.Tensor, reference: dict[str, Any]) -> dict[str, float]:
    """This dtype's logits against fp32's on the same weights, teacher-forced on fp32's greedy tokens."""
    tokens = reference["tokens"]
    logits = decoder.score(prefix.to(decoder.dtype), tokens, cfg_weight=0.5).float()  # (N, V)
    ref = reference["logits"]
    return {
        "max_abs_logit_error": float((logits - ref).abs().max()),
        "logit_scale": float(ref.abs().max()),
        "greedy_agreement": float((logits.argmax(-1) == ref.argmax(-1)).float().mean()),
        "steps": len(tokens),
    }


def _fp32_reference(checkpoint: Path, conds: dict[str, Any], ids: torch.Tensor, steps: int) -> dict[str, Any]:
    from tts.t3 import SamplingParams, T3Decoder
    from tts.voices import build_voice

    t3 = _load_t3(checkpoint)
    voice = build_voice("default", copy.deepcopy(conds), t3, exaggeration=0.5, prompt_tokens=None,
                        device=torch.device("cpu"))
    decoder = T3Decoder(t3, dtype=torch.float32, max_len=256)
    prefix = decoder.prefix_embeds(voice.cond_emb, ids)
    greedy = SamplingParams(greedy=True, repetition_penalty=1.0)
    tokens = [t for block in decoder.generate(prefix, steps, greedy) for t in block]
    return {"tokens": tokens, "logits": decoder.score(prefix, tokens, cfg_weight=0.5).float()}


def weight_bytes(decoder: Any) -> int:
    total = 0
    for m in _step_linears(decoder):
        if isinstance(m, torch.nn.Linear):
            total += m.weight.numel() * m.weight.element_size()
        elif type(m).__name__ == "Linear" and hasattr(m, "_packed_params"):  # dynamic-quantized: int8 weights
            total += m.in_features * m.out_features
    return total


def run(checkpoint: Path, dtypes: list[str], steps: int, repeats: int, compile: bool,
        upstream: bool = True) -> dict[str, Any]:
    from tts.t3 import T3Decoder, cast_for_decoding
    from tts.voices import build_voice, load_conds_file

    conds = load_conds_file(checkpoint / "conds.pt")
    ids = _text_ids(checkpoint)
    reference = _fp32_reference(checkpoint, conds, ids, max(steps, 32))
    results: dict[str, Any] = {"steps": steps, "repeats": repeats, "threads": torch.get_num_threads(),
                               "cpu_count": os.cpu_count(), "text": TEXT, "dtypes": {}}
    for name in dtypes:
        int8 = name == "int8"
        dtype = torch.float32 if int8 else getattr(torch, name)
        t3 = _load_t3(checkpoint)
        voice = build_voice("default", copy.deepcopy(conds), t3, exaggeration=0.5, prompt_tokens=None,
                            device=torch.device("cpu"))
        if not int8 and dtype != torch.float32:
            cast_for_decoding(t3, dtype)
        eager = T3Decoder(t3, dtype=dtype, max_len=256, int8=int8)
        prefix = eager.prefix_embeds(voice.cond_emb, ids)
        compiled = None
        compile_s = None
        if compile:
            compiled = T3Decoder(t3, dtype=dtype, max_len=256, int8=int8, compile=True)
            t0 = time.perf_counter()
            compiled.warm_up(prefix.shape[1], steps + 1, compiled_params())
            _ours_step(compiled, prefix, 2)
            compile_s = time.perf_counter() - t0
        samples: dict[str, list[float]] = {"upstream": [], "eager": [], "compiled": [], "floor": []}
        upstream_error = None
        for _ in range(repeats):
            if upstream and upstream_error is None and not int8:
                try:
                    samples["upstream"].append(_upstream_step(t3, conds, ids, steps, dtype))
                except Exception as exc:  # upstream's loop may not support this dtype
                    upstream_error = f"{type(exc).__name__}: {exc}"[:200]
            samples["eager"].append(_ours_step(eager, prefix, steps))
            if compiled is not None:
                samples["compiled"].append(_ours_step(compiled, prefix, steps))
            samples["floor"].append(_floor(eager, dtype, int8))
        summary = {k: Summary.of(v) for k, v in samples.items() if v}
        floor = summary["floor"].median
        entry: dict[str, Any] = {k: s.to_json() for k, s in summary.items()}
        entry["weight_gb"] = weight_bytes(eager) / 1e9
        entry["floor_gb_per_s"] = entry["weight_gb"] / floor
        entry["ratios"] = {f"{k}/floor": s.median / floor for k, s in summary.items() if k != "floor"}
        if "upstream" in summary:
            for k in ("eager", "compiled"):
                if k in summary:
                    entry["ratios"][f"upstream/{k}"] = summary["upstream"].median / summary[k].median
        if upstream_error:
            entry["upstream_error"] = upstream_error
        entry["vs_fp32"] = _numeric_cost(eager, prefix, reference)
        if compile_s is not None:
            entry["compile_s"] = compile_s
        results["dtypes"][name] = entry
        del t3, eager, compiled
        gc.collect()
    return results


def compiled_params() -> Any:
    from tts.t3 import SamplingParams

    return SamplingParams()


def report(results: dict[str, Any]) -> str:
    lines = [f"T3 step, {results['steps']} steps x {results['repeats']} repeats, "
             f"{results['threads']} threads (median [min-max] ms per step)"]
    for name, e in results["dtypes"].items():
        lines.append(f"  {name}: weights {e['weight_gb']:.2f} GB, "
                     f"floor read at {e['floor_gb_per_s']:.1f} GB/s")
        for k in ("upstream", "eager", "compiled", "floor"):
            if k in e:
                s = Summary(**e[k])
                lines.append(f"    {k:9s} {s.fmt()}")
        if "upstream_error" in e:
            lines.append(f"    upstream  n/a: {e['upstream_error']}")
        lines.append("    ratios   " + ", ".join(f"{k} {v:.2f}x" for k, v in e["ratios"].items()))
        n = e["vs_fp32"]
        lines.append(f"    vs fp32  max |logit error| {n['max_abs_logit_error']:.4f} (logits up to "
                     f"{n['logit_scale']:.1f}), greedy agreement {n['greedy_agreement']:.1%} over {n['steps']} "
                     "teacher-forced steps")
        if "compile_s" in e:
            lines.append(f"    compile + warm-up {e['compile_s']:.0f} s")
    return "\n".join(lines)
