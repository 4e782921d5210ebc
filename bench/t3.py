"""`chatterd bench t3`: one T3 decoding step per family, upstream's loop vs ours, against its weight-read floor.

Per family (each on its own checkpoint and text) and dtype, in one process, interleaved per repeat so
machine noise hits every variant alike:
  upstream  the family's own upstream loop: `T3.inference` (original, multilingual: HF Llama with
            eager attention, host-side processors, CFG batch 2) or `T3.inference_turbo` (Turbo:
            HF GPT-2, batch 1), in fp32 (how upstream runs on a CPU), and in the dtype where it runs
  eager     our T3Decoder without compilation
  compiled  our T3Decoder under torch.compile (one bucket graph; optional, minutes on a CPU)
  floor     one pass reading every weight the step reads (all backbone linears + the speech head,
            batch = the decoding rows: 2 with CFG, 1 without) in that dtype: the memory-bandwidth
            floor of a step.
A step's time is (time for 1+K tokens - time for 1 token) / K, which removes the prefill.
"""

from __future__ import annotations

import copy
import gc
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from bench.stats import Summary, timed
from tts.config import QUANTIZED_WEIGHTS

TEXTS = {"en": "The front door is open, and the kitchen lights are still on.",
         "de": "Die Haustür ist offen, und in der Küche brennt noch Licht."}
# The language each family's text is in (the multilingual family speaks German here).
LANGUAGES = {"multilingual": "de"}
# Issue 11's targets for Turbo's step (ratios in one run on one machine).
TURBO_FLOOR_TARGETS = {"int8": 1.5, "bfloat16": 1.3}
TURBO_VS_UPSTREAM_TARGET = 3.0


@dataclass
class _Case:
    """One family: its checkpoint, fp32 T3, voice conditionals and text."""

    family: Any  # tts.families.Family
    checkpoint: Path
    conds: dict[str, Any]
    language: str
    text: str
    raw_ids: list[int]
    max_tokens: int  # the most tokens any run decodes (sizes the KV cache)

    def load_t3(self) -> Any:
        from chatterbox.models.t3 import T3

        from tts.checkpoint import load_weights

        t3 = T3(self.family.hparams())
        load_weights(t3, self.checkpoint / self.family.t3_weights)
        return t3.eval()

    def cond_emb(self, t3: Any) -> torch.Tensor:
        from tts.voices import build_voice

        voice = build_voice("default", copy.deepcopy(self.conds), t3, exaggeration=self.family.sampling.exaggeration,
                            prompt_tokens=None, device=torch.device("cpu"))
        return voice.cond_emb

    def decoder(self, t3: Any, dtype: torch.dtype, quant: str | None = None, compile: bool = False) -> Any:
        from tts.t3 import T3Decoder, prefix_length

        max_len = prefix_length(self.family, t3.hp, len(self.raw_ids) + 2) + self.max_tokens + 1
        return T3Decoder(t3, self.family, dtype=dtype, max_len=max_len, quant=quant, compile=compile)

    def params(self, **overrides: Any) -> Any:
        from tts.t3 import SamplingParams

        return SamplingParams.of(self.family.sampling, **overrides)


def _case(name: str, checkpoint: Path, max_tokens: int) -> _Case:
    from tts.families import family
    from tts.voices import load_conds_file

    fam = family(name)
    language = LANGUAGES.get(name, fam.default_language)
    text = TEXTS[language]
    raw = fam.load_tokenizer(checkpoint).encode(text, language)
    return _Case(fam, checkpoint, load_conds_file(checkpoint / "conds.pt"), language, text, raw, max_tokens)


Loop = Callable[[int], tuple[float, int]]  # n tokens asked -> (seconds, tokens produced)


def upstream_loop(case: _Case, t3: Any, text_ids: torch.Tensor, dtype: torch.dtype) -> Loop:
    """n -> (seconds, tokens) of the family's upstream loop asked for n tokens, as its generate() calls it."""
    from chatterbox.models.t3.modules.cond_enc import T3Cond

    s = case.family.sampling

    def run(n: int) -> tuple[float, int]:
        fields = {k: v for k, v in copy.deepcopy(case.conds["t3"]).items() if k != "cond_prompt_speech_emb"}
        fields["emotion_adv"] = s.exaggeration * torch.ones(1, 1, 1)
        cond = T3Cond(**fields).to(dtype=dtype)
        # Upstream's multilingual loop registers 3 attention hooks per call and never removes them
        # (each copies attention maps to the host every step): drop the ones a call leaves behind,
        # so every call costs what a fresh process's first call costs.
        hooks = {m: set(m._forward_hooks) for m in t3.tfmr.modules()}
        out: list[torch.Tensor] = []
        try:
            if case.family.cfg:
                seconds = timed(lambda: out.append(t3.inference(
                    t3_cond=cond, text_tokens=text_ids.expand(2, -1), max_new_tokens=n, temperature=s.temperature,
                    cfg_weight=s.cfg_weight, repetition_penalty=s.repetition_penalty, min_p=s.min_p, top_p=s.top_p)))
            else:
                # inference_turbo samples one token from the prefill, then max_gen_len more.
                seconds = timed(lambda: out.append(t3.inference_turbo(
                    t3_cond=cond, text_tokens=text_ids, temperature=s.temperature, top_k=s.top_k, top_p=s.top_p,
                    repetition_penalty=s.repetition_penalty, max_gen_len=n - 1)))
        finally:
            for module, before in hooks.items():
                for key in set(module._forward_hooks) - before:
                    del module._forward_hooks[key]
        return seconds, int(out[0].shape[-1])

    return run


def step_time(run: Loop, steps: int) -> float:
    """(time for 1+K tokens - time for 1) / K, K counted from the tokens each call returned."""
    t_one, n_one = run(1)
    t_many, n_many = run(1 + steps)
    if n_many <= n_one:
        raise RuntimeError(f"the loop stopped after {n_many} tokens (asked for {1 + steps})")
    return (t_many - t_one) / (n_many - n_one)


def ours_step(decoder: Any, prefix: torch.Tensor, params: Any) -> Callable[[int], float]:
    """K -> seconds per step of one call decoding 1+K tokens, timed from the prefill's token (a block
    of its own) to the last block: unlike `step_time`'s two calls, no prefill time enters it."""
    def run(steps: int) -> float:
        gen = torch.Generator().manual_seed(0)
        marks: list[tuple[float, int]] = []  # (time each block arrived, its tokens)
        for block in decoder.generate(prefix, 1 + steps, params, generator=gen, check_every=steps, first_block=1):
            marks.append((time.perf_counter(), len(block)))
        decoded = sum(n for _, n in marks[1:])
        if decoded < steps:
            raise RuntimeError(f"the loop stopped after {1 + decoded} tokens (asked for {1 + steps})")
        return (marks[-1][0] - marks[0][0]) / decoded

    return run


def _floor(decoder: Any, dtype: torch.dtype) -> float:
    """Read every weight a step reads once, batch = decoding rows, in the format the step reads it in:
    the backbone's linears and the speech head (or, quantised, its ONNX segments: their products
    plus a few norms, and the head's)."""
    rows, dim = decoder.rows, decoder.t3.speech_head.in_features
    head = decoder.t3.speech_head
    quantized = decoder.quantized
    with torch.inference_mode():
        if quantized is None:
            linears = [m for m in decoder.backbone.layers.modules() if isinstance(m, torch.nn.Linear)]
            inputs = {m.in_features: torch.randn(rows, m.in_features, dtype=dtype) for m in linears}
            t0 = time.perf_counter()
            for m in linears:
                m(inputs[m.in_features])
        else:
            x = torch.randn(rows, dim)
            attended = torch.randn(rows, decoder.q_size)
            t0 = time.perf_counter()
            quantized.entry(x)
            for i in range(decoder.n_layers):
                quantized.after_attention(i, x, attended)
            quantized.logits(x)
            return time.perf_counter() - t0
        head(torch.randn(rows, dim, dtype=head.weight.dtype))
        return time.perf_counter() - t0


def weight_bytes(decoder: Any) -> int:
    if decoder.quantized is not None:
        return int(decoder.quantized.weight_bytes)  # the segments, the speech head's included
    head = decoder.t3.speech_head.weight
    total = int(head.numel() * head.element_size())
    for m in decoder.backbone.layers.modules():
        if isinstance(m, torch.nn.Linear):
            total += int(m.weight.numel() * m.weight.element_size())
    return total


def _numeric_cost(case: _Case, decoder: Any, prefix: torch.Tensor, reference: dict[str, Any]) -> dict[str, float]:
    """This dtype's logits against fp32's on the same weights, teacher-forced on fp32's greedy tokens."""
    tokens = reference["tokens"]
    logits = decoder.score(prefix.to(decoder.dtype), tokens, cfg_weight=case.family.sampling.cfg_weight).float()
    ref = reference["logits"]
    return {
        "max_abs_logit_error": float((logits - ref).abs().max()),
        "logit_scale": float(ref.abs().max()),
        "greedy_agreement": float((logits.argmax(-1) == ref.argmax(-1)).float().mean()),
        # How far the next-token distribution moves (nats, mean over steps): what sampling sees.
        "mean_kl": float(torch.nn.functional.kl_div(logits.log_softmax(-1), ref.log_softmax(-1), log_target=True,
                                                    reduction="none").sum(-1).mean()),
        "steps": len(tokens),
    }


def _fp32_reference(case: _Case, t3: Any, cond_emb: torch.Tensor, steps: int) -> dict[str, Any]:
    decoder = case.decoder(t3, torch.float32)
    prefix = decoder.prefix_embeds(cond_emb, decoder.text_ids(case.raw_ids))
    greedy = case.params(greedy=True, repetition_penalty=1.0)
    tokens = [t for block in decoder.generate(prefix, steps, greedy) for t in block]
    logits = decoder.score(prefix, tokens, cfg_weight=case.family.sampling.cfg_weight).float()
    return {"tokens": tokens, "logits": logits}


def _err(exc: Exception) -> str:
    return f"{type(exc).__name__}: {exc}"[:200]


def run_family(case: _Case, dtypes: list[str], steps: int, repeats: int, compile: bool, upstream: bool,
               vs_fp32_steps: int) -> dict[str, Any]:
    from tts.t3 import cast_for_decoding

    fam = case.family
    ref_t3 = case.load_t3()  # fp32, upstream's layers intact: the reference, upstream's fp32 loop, int8/int4's source
    cond_emb = case.cond_emb(ref_t3)
    reference = _fp32_reference(case, ref_t3, cond_emb, vs_fp32_steps)
    entry: dict[str, Any] = {
        "language": case.language, "text": case.text, "checkpoint": str(case.checkpoint),
        "upstream_loop": "T3.inference (CFG)" if fam.cfg else "T3.inference_turbo", "dtypes": {},
    }
    upstream_fp32: list[float] = []
    upstream_fp32_error: str | None = None
    for name in dtypes:
        quant = name if name in QUANTIZED_WEIGHTS else None
        dtype = torch.float32 if quant else getattr(torch, name)
        if quant or dtype == torch.float32:
            t3 = ref_t3  # the decoder copies (and quantises) its own backbone weights
        else:
            t3 = case.load_t3()
            cast_for_decoding(t3, dtype)
        eager = case.decoder(t3, dtype, quant=quant)
        text_ids = eager.text_ids(case.raw_ids)
        prefix = eager.prefix_embeds(cond_emb, text_ids)
        params = case.params()
        entry.update(rows=eager.rows, layers=eager.n_layers)
        compiled, compile_s = None, None
        if compile and not quant:
            compiled = case.decoder(t3, dtype, compile=True)
            t0 = time.perf_counter()
            compiled.warm_up(prefix.shape[1], steps + 1, params)
            ours_step(compiled, prefix, params)(2)
            compile_s = time.perf_counter() - t0
        samples: dict[str, list[float]] = {"upstream": [], "eager": [], "eager_torch_attention": [], "compiled": [],
                                           "floor": []}
        upstream_error = None
        # Upstream has no int8/int4 path; fp32 is how it runs on a CPU, and also tried in this dtype.
        up = upstream_loop(case, t3, text_ids, dtype) if upstream and not quant else None
        ours = {"eager": ours_step(eager, prefix, params)}
        if eager.cpu_attention is not None:
            # The step as it was before tts.attention's C kernel (and, quantised, fp16 K/V): torch's
            # attention over a cache in the serving dtype, beside it.
            ours["eager_torch_attention"] = ours_step(eager.torch_attention_twin(), prefix, params)
        if compiled is not None:
            ours["compiled"] = ours_step(compiled, prefix, params)
        # One untimed call of each first: the first call of a loop pays one-off set-up.
        for loop in ours.values():
            loop(2)
        if up is not None:
            try:
                up(2)
            except Exception as exc:  # upstream's loop may not support this dtype
                upstream_error = _err(exc)
        _floor(eager, dtype)
        for _ in range(repeats):
            if up is not None and upstream_error is None:
                try:
                    samples["upstream"].append(step_time(up, steps))
                except Exception as exc:
                    upstream_error = _err(exc)
            for variant, loop in ours.items():
                samples[variant].append(loop(steps))
            samples["floor"].append(_floor(eager, dtype))
        if dtype == torch.float32 and not quant:
            upstream_fp32, upstream_fp32_error = samples["upstream"], upstream_error
        summary = {k: Summary.of(v) for k, v in samples.items() if v}
        floor = summary["floor"].median
        d: dict[str, Any] = {k: s.to_json() for k, s in summary.items()}
        d["weight_gb"] = weight_bytes(eager) / 1e9
        d["floor_gb_per_s"] = d["weight_gb"] / floor
        d["ratios"] = {f"{k}/floor": s.median / floor for k, s in summary.items() if k != "floor"}
        if "eager_torch_attention" in summary:
            d["ratios"]["eager_torch_attention/eager"] = (summary["eager_torch_attention"].median
                                                          / summary["eager"].median)
        if "upstream" in summary:
            for k in ("eager", "compiled"):
                if k in summary:
                    d["ratios"][f"upstream/{k}"] = summary["upstream"].median / summary[k].median
        if upstream_error:
            d["upstream_error"] = upstream_error
        d["vs_fp32"] = _numeric_cost(case, eager, prefix, reference)
        if compile_s is not None:
            d["compile_s"] = compile_s
        if compile and quant:
            d["compiled_error"] = f"not for {quant}: its layers run in ONNX Runtime, which torch.compile cannot trace"
        entry["dtypes"][name] = d
        del t3, eager, compiled
        gc.collect()
    if upstream and not upstream_fp32 and upstream_fp32_error is None:
        # fp32 was not among the dtypes: upstream's fp32 loop on its own (not interleaved with ours).
        up = upstream_loop(case, ref_t3, text_ids, torch.float32)  # text_ids: the same for every dtype
        try:
            up(2)
            upstream_fp32 = [step_time(up, steps) for _ in range(repeats)]
        except Exception as exc:
            upstream_fp32_error = _err(exc)
    if upstream_fp32:
        up_s = Summary.of(upstream_fp32)
        entry["upstream_fp32"] = up_s.to_json()
        for d in entry["dtypes"].values():
            for k in ("eager", "compiled"):
                if k in d:
                    d["ratios"][f"upstream_fp32/{k}"] = up_s.median / d[k]["median"]
    if upstream_fp32_error:
        entry["upstream_fp32_error"] = upstream_fp32_error
    del ref_t3
    gc.collect()
    return entry


def _best(d: dict[str, Any]) -> tuple[str, float]:
    """Our fastest variant of one dtype: (name, median seconds)."""
    return min(((k, float(d[k]["median"])) for k in ("eager", "compiled") if k in d), key=lambda kv: kv[1])


def targets(families: dict[str, Any]) -> list[dict[str, Any]]:
    """Issue 11's targets for Turbo's step, where this run measured what they need."""
    from tts.families import family
    from tts.loading import pick_dtype

    turbo = families.get("turbo")
    if turbo is None:
        return []
    out: list[dict[str, Any]] = []
    for dtype, limit in TURBO_FLOOR_TARGETS.items():
        d = turbo["dtypes"].get(dtype)
        if d is not None:
            variant, seconds = _best(d)
            value = seconds / d["floor"]["median"]
            out.append({"what": f"turbo {dtype} step ({variant}) / its weight-read floor", "value": value,
                        "limit": f"<= {limit}", "met": value <= limit})
    served, quant = pick_dtype("auto", torch.device("cpu"), family("turbo"))
    default = quant or str(served).removeprefix("torch.")
    d = turbo["dtypes"].get(default)
    if d is not None and "upstream_fp32" in turbo:
        variant, seconds = _best(d)
        value = turbo["upstream_fp32"]["median"] / seconds
        out.append({"what": f"upstream Turbo's fp32 step / our turbo {default} step ({variant}; the CPU default)",
                    "value": value, "limit": f">= {TURBO_VS_UPSTREAM_TARGET}",
                    "met": value >= TURBO_VS_UPSTREAM_TARGET})
    return out


def run(checkpoints: dict[str, Path], dtypes: list[str], steps: int, repeats: int, compile: bool,
        upstream: bool = True, vs_fp32_steps: int = 32) -> dict[str, Any]:
    results: dict[str, Any] = {"steps": steps, "repeats": repeats, "threads": torch.get_num_threads(),
                               "cpu_count": os.cpu_count(), "families": {}}
    for name, checkpoint in checkpoints.items():
        case = _case(name, checkpoint, max(steps, vs_fp32_steps) + 1)
        results["families"][name] = run_family(case, dtypes, steps, repeats, compile, upstream,
                                               vs_fp32_steps)
    results["targets"] = targets(results["families"])
    return results


def report(results: dict[str, Any]) -> str:
    lines = [f"T3 step, {results['steps']} steps x {results['repeats']} repeats, "
             f"{results['threads']} threads (median [min-max] ms per step)"]
    for fam, f in results["families"].items():
        lines.append(f"{fam} ({f.get('layers', '?')} layers, {f.get('rows', '?')} decoding rows; upstream "
                     f"{f['upstream_loop']}; {f['language']} text)")
        if "upstream_fp32" in f:
            lines.append(f"  upstream fp32 {Summary(**f['upstream_fp32']).fmt()}")
        if "upstream_fp32_error" in f:
            lines.append(f"  upstream fp32 n/a: {f['upstream_fp32_error']}")
        for name, e in f["dtypes"].items():
            lines.append(f"  {name}: weights {e['weight_gb']:.2f} GB, floor read at {e['floor_gb_per_s']:.1f} GB/s")
            for k in ("upstream", "eager", "eager_torch_attention", "compiled", "floor"):
                if k in e:
                    lines.append(f"    {k:9s} {Summary(**e[k]).fmt()}")
            if "upstream_error" in e:
                lines.append(f"    upstream  n/a: {e['upstream_error']}")
            lines.append("    ratios   " + ", ".join(f"{k} {v:.2f}x" for k, v in e["ratios"].items()))
            n = e["vs_fp32"]
            lines.append(f"    vs fp32  max |logit error| {n['max_abs_logit_error']:.4f} (logits up to "
                         f"{n['logit_scale']:.1f}), greedy agreement {n['greedy_agreement']:.1%} over {n['steps']} "
                         "teacher-forced steps")
            if "compile_s" in e:
                lines.append(f"    compile + warm-up {e['compile_s']:.0f} s")
    for t in results.get("targets", []):
        lines.append(f"target: {t['what']} = {t['value']:.2f} ({t['limit']}): {'met' if t['met'] else 'NOT met'}")
    return "\n".join(lines)
