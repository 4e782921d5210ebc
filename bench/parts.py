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
- **candidates** (one thread, the largest chunk's window, issue 12): HiFT as served against its
  narrow convolutions channel-major (upstream's layout; `tts.vocoder._ChannelsLastConv`), its
  Snakes in torch (without `tts/snake.c`) and both; the flow estimator as served against int8
  dynamic-quantized linears, real bf16 weights, and ONNX Runtime (fp32, exported from the same
  module; only where `onnxruntime` is installed), each with its relative error to
  the served output; T3's linears (one decoded token through every backbone projection) in fp32,
  ONNX Runtime's blocked int8 and int4 (served on a CPU), fbgemm's dynamic int8, torch's
  weight-only int8 and int4 kernels.
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

from bench.stats import Summary, repeat, timed

READ_BYTES = 512 * 2**20  # bandwidth probe: larger than any cache
MATMUL_N = 1024  # throughput probe: an fp32 (N x N) @ (N x N)
TEXT = "The front door is open, and the light in the hall is still on."


def _median_s(fn: Any, repeats: int) -> Summary:
    fn()  # warm (allocations, oneDNN primitives for this shape)
    return repeat(lambda: timed(fn), repeats)


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


def t3_step_s(engine: Any, voice: Any, prefix: torch.Tensor, tokens: int) -> float:
    """Seconds per decoded token of the engine's T3 over a `tokens` request after `prefix` (the
    voice's cached conditioning K/V), after the first block: the prefill is not a step's cost."""
    blocks = engine.decoder.generate(prefix, tokens, engine.params, generator=torch.Generator().manual_seed(0),
                                     first_block=8, cached=engine.prefix_kv(voice))
    next(blocks)
    t0 = time.perf_counter()
    rest = sum(len(b) for b in blocks)
    return (time.perf_counter() - t0) / rest if rest else float("nan")


def _rel_err(got: torch.Tensor, want: torch.Tensor) -> float:
    return float((got.float() - want.float()).norm() / want.float().norm())


def estimator_candidates(engine: Any, reference: Any, frames: int, repeats: int) -> dict[str, Any]:
    """The flow estimator on one (1, 80, frames) window: served vs each candidate, time and error.

    `reference`: the estimator module with the checkpoint's fp32 weights (the served one may have
    been cast to bf16 in place); every error is relative to its output.
    """
    import copy

    from torch.ao.quantization import per_channel_dynamic_qconfig, quantize_dynamic

    from tts.flow_estimator import FlowEstimator

    x, mu, cond = (torch.randn(1, 80, frames, generator=torch.Generator().manual_seed(i)) for i in range(3))
    args = (x, torch.ones(1, 1, frames), mu, torch.tensor([0.5]), torch.randn(1, 80), cond, torch.tensor([1.0]))
    served = engine.flow_estimator
    fp32 = FlowEstimator(reference, compile=False, bucketed=False)
    want = fp32(*args)
    rows: dict[str, Any] = {}

    def measure(name: str, fn: Any) -> None:
        try:
            got = torch.as_tensor(fn())
            rows[name] = {"call_s": _median_s(fn, repeats).to_json(), "rel_err": _rel_err(got, want)}
        except Exception as exc:  # a candidate that cannot run here is a result too
            rows[name] = {"error": f"{type(exc).__name__}: {exc}"[:300]}

    served_torch = served.runtime == "torch"
    measure(f"served ({served.runtime}, {str(served.dtype).removeprefix('torch.')})", lambda: served(*args))
    if not (served_torch and served.dtype == torch.float32):
        measure("torch fp32", lambda: fp32(*args))
    if not (served_torch and served.dtype == torch.bfloat16):
        bf16 = FlowEstimator(copy.deepcopy(reference), compile=False, dtype=torch.bfloat16, bucketed=False)
        measure("torch bf16 weights", lambda: bf16(*args))
    int8 = FlowEstimator(quantize_dynamic(copy.deepcopy(reference), {torch.nn.Linear: per_channel_dynamic_qconfig}),
                         compile=False)
    measure("torch int8 dynamic linears", lambda: int8(*args))
    if served_torch:
        try:
            import onnxruntime  # type: ignore[import-not-found,unused-ignore]
        except ImportError:
            rows["onnxruntime fp32"] = {"error": "onnxruntime is not installed (pip install onnxruntime)"}
        else:
            rows["onnxruntime fp32"] = _onnxruntime_estimator(fp32, args, want, repeats, onnxruntime)
    return {"frames": frames, "rows": rows}


def hift_candidates(engine: Any, frames: int, repeats: int, reference: Any = None) -> dict[str, Any]:
    """HiFT on one (1, 80, frames) mel chunk: served vs its narrow convolutions channel-major (as
    upstream runs them, the path before `tts.vocoder._ChannelsLastConv`), vs its Snakes in torch
    (without `tts/snake.c`), and vs both, each with its time and error. `reference`: upstream's
    HiFT with the checkpoint's fp32 weights; where the served one is not fp32 it is prepared in
    fp32 as a row of its own and the errors are relative to it (else to the served output)."""
    import copy

    from tts.vocoder import _ChannelsLastConv, _Snake, prepare_hift

    served = engine.s3gen.mel2wav

    def variant(hift: Any, convs_channel_major: bool, torch_snakes: bool) -> Any:
        hift = copy.deepcopy(hift)

        def swap(parent: torch.nn.Module) -> None:
            for name, child in parent.named_children():
                if isinstance(child, _ChannelsLastConv) and convs_channel_major:
                    setattr(parent, name, child.channel_major())
                elif isinstance(child, _Snake) and torch_snakes:
                    child.fused = False
                else:
                    swap(child)

        swap(hift)
        return hift

    mel = torch.randn(1, 80, frames, generator=torch.Generator().manual_seed(7)) - 5
    no_cache = torch.zeros(1, 1, 0)

    def run(hift: Any) -> torch.Tensor:
        torch.manual_seed(0)  # the NSF source's phases and noise
        wav: torch.Tensor = hift.inference(speech_feat=mel, cache_source=no_cache)[0]
        return wav

    fp32 = None
    if reference is not None and _hift_dtype(served) != torch.float32:
        prepare_hift(reference, torch.float32)
        fp32 = reference
    want = run(fp32 if fp32 is not None else served)
    candidates = [("served", served), ("channel-major convolutions", variant(served, True, False)),
                  ("torch Snakes", variant(served, False, True)), ("both (before)", variant(served, True, True))]
    if fp32 is not None:
        candidates.append(("fp32 weights", fp32))
    rows: dict[str, Any] = {}
    for name, hift in candidates:
        got = run(hift)
        rows[name] = {"call_s": _median_s(lambda h=hift: run(h), repeats).to_json(), "rel_err": _rel_err(got, want)}
    return {"frames": frames, "dtype": str(_hift_dtype(served)).removeprefix("torch."), "rows": rows}


def _hift_dtype(hift: Any) -> torch.dtype:
    """The dtype of a prepared HiFT's convolution weights (bf16 where `prepare_hift` made them so)."""
    return torch.bfloat16 if any(p.dtype == torch.bfloat16 for p in hift.buffers()) or any(
        p.dtype == torch.bfloat16 for p in hift.parameters()) else torch.float32


def _onnxruntime_estimator(fp32: Any, args: tuple[torch.Tensor, ...], want: torch.Tensor, repeats: int,
                           ort: Any) -> dict[str, Any]:
    """The fp32 estimator exported to ONNX Runtime as `tts.flow_runtime: onnxruntime` serves it."""
    from tts.flow_estimator import FlowEstimator

    served = fp32 if fp32.runtime == "onnxruntime" else FlowEstimator(fp32.estimator, compile=False,
                                                                       bucketed=False, runtime="onnxruntime")
    got = served(*args)
    return {"call_s": _median_s(lambda: served(*args), repeats).to_json(), "rel_err": _rel_err(got, want),
            "export_s": served.onnx.export_s, "onnxruntime": ort.__version__}


def t3_linear_candidates(decoder: Any, repeats: int) -> dict[str, Any]:
    """One decoded token through every backbone projection (T3's weight reads), per weight format."""
    shapes = [(m.in_features, m.out_features) for m in decoder.backbone.layers.modules()
              if hasattr(m, "in_features") and hasattr(m, "out_features")]
    gen = torch.Generator().manual_seed(0)
    weights = [torch.randn(n, k, generator=gen) * k**-0.5 for k, n in shapes]
    inputs = {k: torch.randn(1, k, generator=gen) for k, _ in shapes}
    rows: dict[str, Any] = {"projections": len(shapes)}

    def measure(name: str, build: Any) -> None:
        try:
            calls = build()
            rows[name] = {"call_s": _median_s(lambda: [c() for c in calls], repeats).to_json()}
        except Exception as exc:  # e.g. a kernel this torch build lacks
            rows[name] = {"error": f"{type(exc).__name__}: {exc}"[:300]}

    def fp32() -> list[Any]:
        return [lambda w=w: inputs[w.shape[1]] @ w.t() for w in weights]

    def fbgemm_int8() -> list[Any]:
        from torch.ao.quantization import per_channel_dynamic_qconfig, quantize_dynamic

        mods = []
        for w in weights:
            lin = torch.nn.Linear(w.shape[1], w.shape[0], bias=False)
            lin.weight.data.copy_(w)
            mods.append(quantize_dynamic(torch.nn.Sequential(lin), {torch.nn.Linear: per_channel_dynamic_qconfig}))
        return [lambda m=m, k=m[0].in_features: m(inputs[k]) for m in mods]

    def weight_only_int8() -> list[Any]:
        packed = []
        for w in weights:
            scale = w.abs().amax(1) / 127
            packed.append(((w / scale[:, None]).round().to(torch.int8), scale, w.shape[1]))
        return [lambda q=q, s=s, k=k: torch.ops.aten._weight_int8pack_mm(inputs[k], q, s) for q, s, k in packed]

    def weight_only_int4(group: int = 32) -> list[Any]:
        packed = []
        for w in weights:
            n, k = w.shape
            g = w.reshape(n, k // group, group)
            low, high = g.amin(-1, keepdim=True), g.amax(-1, keepdim=True)
            scale = (high - low).clamp(min=1e-6) / 15
            q = ((g - low) / scale).round().clamp(0, 15).to(torch.int32).reshape(n, k)
            zeros = low + 8 * scale
            scales_zeros = torch.stack([scale.squeeze(-1), zeros.squeeze(-1)], -1).transpose(0, 1).contiguous()
            packed.append((torch.ops.aten._convert_weight_to_int4pack_for_cpu(q, 8), scales_zeros, k))
        return [lambda p=p, sz=sz, k=k: torch.ops.aten._weight_int4pack_mm_for_cpu(inputs[k], p, group, sz)
                for p, sz, k in packed]

    def onnx_blocks(quant: str) -> list[Any]:
        from tts.quantized import BITS, Graph, Segment

        segments = []
        for w in weights:
            lin = torch.nn.Linear(w.shape[1], w.shape[0], bias=False)
            lin.weight.data.copy_(w)
            g = Graph(BITS[quant])
            g.output(g.linear(g.input("x", lin.in_features), lin), "y", lin.out_features)
            segments.append((Segment(g), lin.in_features))
        return [lambda s=s, k=k: s.run(x=inputs[k]) for s, k in segments]

    measure("fp32", fp32)
    measure("int8 blocks of 32, one product per call (ONNX Runtime; served fused per layer)",
            lambda: onnx_blocks("int8"))
    measure("int4 blocks of 32, one product per call (ONNX Runtime; served fused per layer)",
            lambda: onnx_blocks("int4"))
    measure("int8 dynamic (fbgemm)", fbgemm_int8)
    measure("int8 weight-only (_weight_int8pack_mm)", weight_only_int8)
    measure("int4 weight-only, groups of 32 (_weight_int4pack_mm_for_cpu)", weight_only_int4)
    return rows


def run(family: str, checkpoint: Path, tokens: int, repeats: int, threads: list[int]) -> dict[str, Any]:
    from tts.config import TTSConfig
    from tts.engine import StreamingTTS
    from tts.families import S3GEN_VOCAB
    from tts.loading import load_s3gen
    from tts.vocoder import LOOKAHEAD, MEL_PER_TOKEN, SAMPLE_RATE

    engine = StreamingTTS.load(TTSConfig(model=family, checkpoint=str(checkpoint)))
    reference = load_s3gen(engine.family, engine.checkpoint_dir).eval()  # fp32, for the candidates' errors
    decoder, s3gen = engine.decoder, engine.s3gen
    voice = engine.voice_bank.get(None)
    settings = engine.settings()
    prompt_tokens = voice.prompt.tokens.shape[1]
    context = engine.resolved.context_tokens
    cfg = engine.config
    chunks = sorted({engine.resolved.first_chunk_tokens, engine.resolved.chunk_tokens, 50, cfg.max_chunk_tokens})
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
        return t3_step_s(engine, voice, prefix, tokens)

    def window(new: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """What a streamed chunk of `new` tokens runs: token ids, the flow's frames, HiFT's mels."""
        n = prompt_tokens + context + new + LOOKAHEAD
        ids = torch.randint(0, S3GEN_VOCAB, (1, n), generator=torch.Generator().manual_seed(n))
        return ids, torch.randn(1, 80, MEL_PER_TOKEN * n), torch.randn(1, 80, MEL_PER_TOKEN * new) - 5

    from tts.flow_estimator import FlowEstimator
    from tts.vocoder import TokenEncoder

    torch_encoder = TokenEncoder(s3gen.flow)
    torch_estimator = (engine.flow_estimator if engine.flow_estimator.runtime == "torch"
                       else FlowEstimator(s3gen.flow.decoder.estimator, compile=False, bucketed=False))

    def parts_for(new: int) -> dict[str, Any]:
        ids, frames, mels = window(new)
        lengths = torch.tensor([ids.shape[1]])
        t_frames = frames.shape[-1]
        mask, spks = torch.ones(1, 1, t_frames), torch.randn(1, 80)
        t, r = torch.tensor([0.5]), torch.tensor([1.0])
        no_cache = torch.zeros(1, 1, 0)
        calls = {
            "encoder": lambda: engine.flow_encoder(ids, lengths),  # as served (torch or ONNX Runtime)
            "estimator": lambda: engine.flow_estimator(frames, mask, frames, t, spks, frames, r),
            "hift": lambda: s3gen.mel2wav.inference(speech_feat=mels, cache_source=no_cache),
        }
        # FLOPs are counted on torch's modules (an ONNX Runtime call is invisible to the counter).
        counted = {**calls, "encoder": lambda: torch_encoder(ids, lengths),
                   "estimator": lambda: torch_estimator(frames, mask, frames, t, spks, frames, r)}
        per = {"encoder": 1, "estimator": engine.flow_steps, "hift": 1}
        return {"calls": calls, "counted": counted, "per_chunk": per, "audio_s": new * token_s}

    with torch.inference_mode():
        flop_counts = {}
        for new in chunks:
            p = parts_for(new)
            flop_counts[new] = {name: flops_of(fn) for name, fn in p["counted"].items()}

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
    torch.set_num_threads(1)
    try:
        with torch.inference_mode():
            window_frames = MEL_PER_TOKEN * (prompt_tokens + context + max(chunks) + LOOKAHEAD)
            results["candidates"] = {"threads": 1,
                                     "estimator": estimator_candidates(engine, reference.flow.decoder.estimator,
                                                                       window_frames, repeats),
                                     "hift": hift_candidates(engine, MEL_PER_TOKEN * max(chunks), repeats,
                                                             reference.mel2wav),
                                     "t3_linears": t3_linear_candidates(decoder, repeats)}
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
    c = results.get("candidates")
    if c:
        lines.append(f"  candidates, {c['threads']} thread: flow estimator on {c['estimator']['frames']} frames")
        for name, row in c["estimator"]["rows"].items():
            lines.append(f"    {name:28s} " + (f"{Summary(**row['call_s']).fmt()}  rel. error {row['rel_err']:.2e}"
                                               if "call_s" in row else row["error"]))
        if "hift" in c:
            lines.append(f"  HiFT on {c['hift']['frames']} mel frames")
            for name, row in c["hift"]["rows"].items():
                lines.append(f"    {name:28s} {Summary(**row['call_s']).fmt()}  rel. error {row['rel_err']:.2e}")
        lines.append(f"  T3 linears for one token ({c['t3_linears']['projections']} projections)")
        for name, row in c["t3_linears"].items():
            if isinstance(row, dict):
                lines.append(f"    {name:62s} " + (Summary(**row["call_s"]).fmt() if "call_s" in row else row["error"]))
    i = results["inline_all_threads"]
    lines.append(f"  inline, {i['threads']} threads: steady RTF >= {i['bound_rtf']:.2f} (floor {i['floor_rtf']:.2f})")
    return "\n".join(lines)
