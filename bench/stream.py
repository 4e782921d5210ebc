"""`chatterd bench stream`: first audio, RTF, time split and streaming fidelity per family, in one run.

On one machine, each family on its own checkpoint, with one token count:
  ours      StreamingTTS per family: Turbo with the engine's defaults for the device; the original
            with those, with the fidelity-first knobs and with the fast knobs (also with T3 inline
            beside the pipelined default); multilingual with its defaults on a German text
  baseline  the seed's method: chatterbox-streaming 0.1.2 `generate_stream` (its own venv,
            bench/baseline_runner.py) on the original checkpoint, at its defaults (chunk 25,
            context 50) and at the seed's recommendation (75, 150)
  upstream  upstream's own Turbo as `ChatterboxTurboTTS.generate` runs it (`T3.inference_turbo`,
            then one-shot meanflow S3Gen with 2 steps over the tokens + 3 silence tokens): its
            steps restated over the modules `ChatterboxTurboTTS.from_local` loads, without the
            watermarker, with the token count fixed by `max_gen_len`; audio only at the end
Per run: first audio (call start -> first chunk), steady-state RTF (time between the first and the
last chunk over the audio after the first chunk), overall RTF, playback stalls (gaps a listener
would hear if playback started at the first chunk), the prefill / T3 / flow / HiFT split, T3's
time per step, peak RSS. Then fidelity per family (bench/fidelity.py), ratios, targets, a plot.
"""

from __future__ import annotations

import dataclasses
import gc
import inspect
import json
import resource
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from bench.stats import Summary

TEXT = ("The front door is open, the kitchen lights are still on, and the washing machine has finished. "
        "Please close the door before you leave the house.")
GERMAN_TEXT = ("Die Haustür ist offen, in der Küche brennt noch Licht, und die Waschmaschine ist fertig. "
               "Bitte schließ die Tür, bevor du das Haus verlässt.")
LENGTHS = {  # text -> speech tokens decoded (the random model needs the count fixed)
    "short": ("The front door is open.", 40),
    "medium": ("The front door is open and the kitchen lights are still on.", 100),
    "long": (TEXT, 200),
}
SAMPLE_RATE = 24000

# Knob settings that trade fidelity for speed on a CPU (each measured in bench/README.md).
FAST_KNOBS: dict[str, Any] = {"dtype": "int8", "flow_steps": 4, "flow_cfg_rate": 0.0, "prompt_tokens": 25,
                              "context_tokens": 25, "first_chunk_tokens": 8}
# The fidelity-first knobs written out (the GPU profile's: the whole voice prompt, 50 tokens of
# context, a 10-token first chunk), so that they hold on a CPU too; flow steps and CFG are the family's.
FIDELITY_FIRST: dict[str, Any] = {"prompt_tokens": 100_000, "context_tokens": 50, "first_chunk_tokens": 10}


@dataclasses.dataclass(frozen=True)
class Config:
    """One configuration of our engine to measure."""

    family: str
    label: str  # key under results["ours"][family]
    overrides: dict[str, Any]
    language: str = "en"
    lengths: bool = False  # also the three text lengths (English only)
    fidelity: bool = True  # streamed vs one-shot of the same tokens with this vocoder configuration


def configs(families: list[str], dtype: str, smoke: bool) -> list[Config]:
    table = {
        "turbo": [Config("turbo", "default", {}, lengths=True)],
        "original": [Config("original", "default", {}),
                     Config("original", "fidelity_first", FIDELITY_FIRST | {"dtype": dtype}, lengths=True),
                     Config("original", "fast", FAST_KNOBS, lengths=True),
                     # tts.pipeline null is the profile's (on): the inline variant, measured beside it, is why.
                     Config("original", "fast_inline", FAST_KNOBS | {"pipeline": False}, fidelity=False)],
        "multilingual": [Config("multilingual", "default", {}, language="de")],
    }
    if smoke:  # one configuration per family: the cheapest that runs the family's own vocoder path
        table["original"] = [table["original"][2]]
    return [c for f in families for c in table.get(f, [])]


def timeline_metrics(chunks: list[tuple[float, int]], sample_rate: int = SAMPLE_RATE) -> dict[str, float]:
    """chunks: (seconds since the call, samples) in order of production."""
    first_t = chunks[0][0]
    audio_s = sum(n for _, n in chunks) / sample_rate
    after_first_s = audio_s - chunks[0][1] / sample_rate
    stall = 0.0
    play_end = first_t
    for t, n in chunks:
        if t > play_end:
            stall += t - play_end
        play_end = max(play_end, t) + n / sample_rate
    steady = (chunks[-1][0] - first_t) / after_first_s if after_first_s > 0 else float("nan")
    return {"first_audio_s": first_t, "audio_s": audio_s, "total_s": chunks[-1][0],
            "rtf": chunks[-1][0] / audio_s, "steady_rtf": steady, "stall_s": stall}


def _summarise(runs: list[dict[str, float]]) -> dict[str, Any]:
    keys = runs[0].keys()
    return {k: Summary.of([r[k] for r in runs]).to_json() for k in keys}


def _reset_peak_rss() -> tuple[bool, float]:
    """Collect garbage and reset this process's peak RSS (Linux: clear_refs 5), so that the next reading
    covers one run alone; returns (whether it could, the RSS it starts from in MB)."""
    gc.collect()
    try:
        Path("/proc/self/clear_refs").write_text("5")
        reset = True
    except OSError:
        reset = False
    return reset, _status_mb("VmRSS:") or 0.0


def _status_mb(field: str) -> float | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def _peak_rss_mb() -> float:
    return _status_mb("VmHWM:") or resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_baseline(venv: Path, checkpoint: Path, text: str, chunk_size: int, context: int, chunks: int,
                 repeats: int) -> dict[str, Any]:
    runner = Path(__file__).with_name("baseline_runner.py")
    cmd = [str(venv / "bin" / "python"), str(runner), "--checkpoint", str(checkpoint), "--text", text,
           "--chunk-size", str(chunk_size), "--context-window", str(context), "--chunks", str(chunks),
           "--repeats", str(repeats)]
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "baseline.json"
        done = subprocess.run([*cmd, "--out", str(out)], capture_output=True, text=True,
                              env={"TQDM_DISABLE": "1", "PATH": "/usr/bin:/bin"})
        if done.returncode != 0:
            raise RuntimeError(f"baseline runner failed ({done.returncode}): {done.stderr[-2000:]}")
        raw = json.loads(out.read_text())
    runs = [timeline_metrics([tuple(c) for c in r["chunks"]]) for r in raw["runs"]]
    return {"settings": {"chunk_size": chunk_size, "context_window": context, "chunks": chunks},
            "summary": _summarise(runs), "runs": runs, "timelines": [r["chunks"] for r in raw["runs"]],
            "peak_rss_mb": raw["peak_rss_mb"]}


def _t3_step(t3_s: float, prefill_s: float, tokens: int) -> float:
    """T3's time per decoding step: the time after the prefill (which samples the first token) per later token."""
    return (t3_s - prefill_s) / (tokens - 1) if tokens > 1 else float("nan")


def _decode(engine: Any, text: str, language: str, tokens: int, seed: int) -> list[int]:
    """Speech tokens the engine's own decoder produces for `text` (ids the vocoder cannot take dropped)."""
    from tts.families import S3GEN_VOCAB

    voice = engine.voice_bank.get(None)
    with torch.inference_mode():
        prefix = engine.decoder.prefix_embeds(voice.cond_emb, engine.encode(engine.clean(text, language), language))
    generator = torch.Generator(device=engine.device).manual_seed(seed)
    blocks = engine.decoder.generate(prefix, tokens, engine.params, generator=generator, cached=engine.prefix_kv(voice))
    return [t for block in blocks for t in block if t < S3GEN_VOCAB]


def _fidelity(engine: Any, text: str, language: str, tokens: int, seed: int) -> dict[str, Any]:
    """The engine's vocoder configuration: streamed (ours, the seed's method) vs one-shot of the same tokens."""
    from bench import fidelity

    cfg, resolved = engine.config, engine.resolved  # resolved: the device profile's where the config left null
    ids = _decode(engine, text, language, tokens, seed)
    # The engine casts upstream's flow estimator in place to its vocoder dtype (bf16 on a CPU with
    # native bf16), which vocode_all's and S3Gen.inference's fp32 path cannot run: measure streaming
    # on the fp32 estimator (this engine serves nothing after this).
    engine.s3gen.flow.decoder.estimator.float()
    return fidelity.compare(
        engine.s3gen, engine.voice_bank.get(None).prompt, ids, flow=engine.family.flow, seed=seed,
        flow_steps=resolved.flow_steps, flow_cfg_rate=resolved.flow_cfg_rate, context_tokens=resolved.context_tokens,
        crossfade_ms=cfg.crossfade_ms, first_prompt_tokens=resolved.first_prompt_tokens,
        lean_below_s=resolved.lean_below_s,
        schedule=(resolved.first_chunk_tokens, resolved.chunk_tokens, cfg.chunk_growth, cfg.max_chunk_tokens),
        seed_chunk=25, seed_context=50)


def run_ours(config: Config, checkpoint: Path, cases: dict[str, tuple[str, int]], repeats: int) -> dict[str, Any]:
    from tts.config import TTSConfig
    from tts.engine import StreamingTTS, SynthesisStats

    cfg = TTSConfig(model=config.family, checkpoint=str(checkpoint), **config.overrides)
    isolated, rss_at_start = _reset_peak_rss()
    t0 = time.perf_counter()
    engine = StreamingTTS.load(cfg)
    load_s = time.perf_counter() - t0
    warm_s = engine.warm_up()
    result: dict[str, Any] = {"settings": engine.settings(), "overrides": config.overrides, "language": config.language,
                              "load_s": load_s, "warm_up_s": warm_s, "cases": {}}
    for name, (text, tokens) in cases.items():
        runs, timelines, splits = [], [], []
        for repeat in range(repeats):
            stats = SynthesisStats()
            for _ in engine.stream(text, language=config.language, max_tokens=tokens, stats=stats, seed=repeat):
                pass
            runs.append(timeline_metrics(stats.chunk_times))
            timelines.append(stats.chunk_times)
            splits.append({"prefill_s": stats.prefill_s, "t3_s": stats.t3_s, "flow_s": stats.flow_s,
                           "hift_s": stats.hift_s, "tokens": float(stats.tokens),
                           "t3_step_s": _t3_step(stats.t3_s, stats.prefill_s, stats.tokens)})
        result["cases"][name] = {"tokens": tokens, "text": text, "summary": _summarise(runs),
                                 "split": _summarise(splits), "runs": runs, "timelines": timelines}
    result["peak_rss_mb"] = _peak_rss_mb()
    result["peak_rss_isolated"] = isolated  # False: the process's peak so far, not this engine's alone
    result["rss_at_start_mb"] = rss_at_start  # what the process held before loading it
    if config.fidelity:
        text, tokens = cases["headline"]
        result["fidelity"] = _fidelity(engine, text, config.language, tokens, seed=0)
    del engine
    gc.collect()
    return result


def run_upstream_turbo(checkpoint: Path, text: str, tokens: int, repeats: int) -> dict[str, Any]:
    """Upstream Turbo as `ChatterboxTurboTTS.generate` runs it, with the token count fixed (see the module doc)."""
    from chatterbox.models.s3gen.const import S3GEN_SIL
    from chatterbox.tts_turbo import ChatterboxTurboTTS, punc_norm

    from tts.families import S3GEN_VOCAB

    isolated, rss_at_start = _reset_peak_rss()
    t0 = time.perf_counter()
    # The device our engine picks by default (tts.device auto), so both run on the same one.
    model = ChatterboxTurboTTS.from_local(checkpoint, "cuda" if torch.cuda.is_available() else "cpu")
    load_s = time.perf_counter() - t0
    # generate()'s own sampling defaults (CFG, min_p and exaggeration do not apply to Turbo).
    defaults = {k: p.default for k, p in inspect.signature(model.generate).parameters.items()
                if k in ("temperature", "top_k", "top_p", "repetition_penalty")}

    def t3(ids: torch.Tensor, n: int) -> torch.Tensor:
        out: torch.Tensor = model.t3.inference_turbo(t3_cond=model.conds.t3, text_tokens=ids, max_gen_len=n - 1,
                                                     **defaults)
        return out

    runs, timelines, splits = [], [], []
    for repeat in range(repeats):
        torch.manual_seed(repeat)
        start = time.perf_counter()
        # generate(), step by step: normalise and tokenise the text, T3, drop OOV ids, 3 silence tokens.
        ids = model.tokenizer(punc_norm(text), return_tensors="pt", padding=True, truncation=True).input_ids
        t_t3 = time.perf_counter()
        speech = t3(ids.to(model.device), tokens)
        t_flow = time.perf_counter()
        produced = int(speech.shape[-1])
        speech = speech[speech < S3GEN_VOCAB].to(model.device)
        speech = torch.cat([speech, torch.tensor([S3GEN_SIL] * 3, dtype=torch.long, device=model.device)])
        # S3Gen.inference, split in its two halves to time them: the flow (2 meanflow steps), then HiFT.
        mels = model.s3gen.flow_inference(speech, ref_dict=model.conds.gen, n_cfm_timesteps=2, finalize=True)
        mels = mels.to(dtype=model.s3gen.dtype)
        t_hift = time.perf_counter()
        with torch.inference_mode():  # as S3Gen.inference runs
            wavs, _ = model.s3gen.hift_inference(mels, None)
            wavs[:, : len(model.s3gen.trim_fade)] *= model.s3gen.trim_fade
        wav = wavs.squeeze(0).detach().cpu().numpy()
        end = time.perf_counter()
        chunks = [(end - start, int(len(wav)))]
        runs.append(timeline_metrics(chunks))
        timelines.append(chunks)
        # Its prefill (and first sample) alone, measured apart: what the step time is net of.
        t1 = time.perf_counter()
        t3(ids.to(model.device), 1)
        prefill_s = time.perf_counter() - t1
        t3_s = t_flow - t_t3
        splits.append({"prefill_s": prefill_s, "t3_s": t3_s, "flow_s": t_hift - t_flow, "hift_s": end - t_hift,
                       "tokens": float(produced), "t3_step_s": _t3_step(t3_s, prefill_s, produced)})
    result = {"method": "ChatterboxTurboTTS.from_local + generate()'s steps restated (no watermark)",
              "sampling": defaults, "n_cfm_timesteps": 2, "tokens": tokens, "load_s": load_s,
              "summary": _summarise(runs), "split": _summarise(splits), "runs": runs, "timelines": timelines,
              "peak_rss_mb": _peak_rss_mb(), "peak_rss_isolated": isolated, "rss_at_start_mb": rss_at_start}
    return result


def plot(results: dict[str, Any], path: Path) -> None:
    """Audio produced vs wall time for each method (its median-first-audio repeat), with playback lines."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(10, 5.5))
    series: list[tuple[str, list[tuple[float, int]]]] = []

    def median_run(timelines: list[list[tuple[float, int]]]) -> list[tuple[float, int]]:
        ordered = sorted(timelines, key=lambda chunks: chunks[0][0])
        return ordered[len(ordered) // 2]

    for name, b in results.get("baseline", {}).items():
        series.append((f"seed method {name}", median_run(b["timelines"])))
    if "upstream_turbo" in results:
        series.append(("upstream Turbo generate()", median_run(results["upstream_turbo"]["timelines"])))
    for fam, runs in results["ours"].items():
        for name, o in runs.items():
            series.append((f"chatterd {fam} {name}", median_run(o["cases"]["headline"]["timelines"])))
    for label, chunks in series:
        times = [0.0]
        produced = [0.0]
        total = 0.0
        for t, n in chunks:
            times += [t, t]
            produced += [total, total + n / SAMPLE_RATE]
            total += n / SAMPLE_RATE
        line = ax.plot(times, produced, label=f"{label}: produced")[0]
        first = chunks[0][0]
        ax.plot([first, first + total], [0, total], linestyle=":", color=line.get_color(),
                label=f"{label}: played from first chunk")
    ax.set_xlabel("wall time since the request (s)")
    ax.set_ylabel("audio (s)")
    ax.set_title("Chunk production vs playback (same token count and machine; each family on its checkpoint)")
    ax.legend(fontsize=6)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def _median(summary: dict[str, Any], key: str) -> float:
    return float(summary[key]["median"])


def ratios_and_targets(results: dict[str, Any]) -> tuple[dict[str, float], list[dict[str, Any]]]:
    """Turbo against the seed's method and upstream Turbo, and issue 11's targets for them."""
    turbo = results["ours"].get("turbo", {}).get("default")
    if turbo is None:
        return {}, []
    head = turbo["cases"]["headline"]
    ratios: dict[str, float] = {}
    targets: list[dict[str, Any]] = []
    base = results.get("baseline", {}).get("defaults_25_50")
    if base is not None:
        ratios["seed_first_audio/turbo_first_audio"] = _median(base["summary"], "first_audio_s") / _median(
            head["summary"], "first_audio_s")
    up = results.get("upstream_turbo")
    if up is not None:
        ratios["upstream_turbo_first_audio/turbo_first_audio"] = _median(up["summary"], "first_audio_s") / _median(
            head["summary"], "first_audio_s")
        ratios["upstream_turbo_rtf/turbo_rtf"] = _median(up["summary"], "rtf") / _median(head["summary"], "rtf")
        ratios["upstream_turbo_t3_step/turbo_t3_step"] = _median(up["split"], "t3_step_s") / _median(
            head["split"], "t3_step_s")
    for key, limit, what in (
            ("seed_first_audio/turbo_first_audio", 30.0, "turbo first audio <= 1/30 of the seed method's"),
            ("upstream_turbo_first_audio/turbo_first_audio", 20.0, "turbo first audio <= 1/20 of upstream Turbo's"),
            ("upstream_turbo_t3_step/turbo_t3_step", 3.0, "turbo T3 step <= 1/3 of upstream Turbo's")):
        if key in ratios:
            targets.append({"what": what, "value": ratios[key], "limit": f">= {limit:g}x",
                            "met": ratios[key] >= limit})
    return ratios, targets


def run(checkpoints: dict[str, Path], *, baseline_venv: Path | None, repeats: int, headline_tokens: int,
        lengths: bool, dtype: str, smoke: bool = False, upstream_turbo: bool = True,
        baseline_checkpoint: Path | None = None) -> dict[str, Any]:
    """The seed's method runs when both `baseline_venv` and `baseline_checkpoint` (the original's) are given."""
    results: dict[str, Any] = {"texts": {"en": TEXT, "de": GERMAN_TEXT}, "headline_tokens": headline_tokens,
                               "repeats": repeats, "checkpoints": {k: str(v) for k, v in checkpoints.items()}}
    if baseline_venv is not None and baseline_checkpoint is not None:
        results["baseline"] = {
            "defaults_25_50": run_baseline(baseline_venv, baseline_checkpoint, TEXT, 25, 50,
                                           max(1, headline_tokens // 25), repeats),
            "recommended_75_150": run_baseline(baseline_venv, baseline_checkpoint, TEXT, 75, 150,
                                               max(1, headline_tokens // 75), repeats),
        }
    if upstream_turbo and "turbo" in checkpoints:
        results["upstream_turbo"] = run_upstream_turbo(checkpoints["turbo"], TEXT, headline_tokens, repeats)
    results["ours"] = {}
    for config in configs(list(checkpoints), dtype, smoke):
        text = GERMAN_TEXT if config.language == "de" else TEXT
        cases = {"headline": (text, headline_tokens)}
        if lengths and config.lengths:
            cases.update(LENGTHS)
        results["ours"].setdefault(config.family, {})[config.label] = run_ours(
            config, checkpoints[config.family], cases, repeats)
    if "baseline" in results:
        base = results["baseline"]["defaults_25_50"]["summary"]
        results["ratios_vs_baseline_defaults"] = {
            f"{fam} {name}": {k: _median(base, k) / _median(o["cases"]["headline"]["summary"], k)
                              for k in ("first_audio_s", "steady_rtf", "rtf")}
            for fam, runs in results["ours"].items() for name, o in runs.items()
        }
    results["ratios"], results["targets"] = ratios_and_targets(results)
    return results


def _rss(run: dict[str, Any]) -> str:
    if not run["peak_rss_isolated"]:
        return f"peak RSS {run['peak_rss_mb']:.0f} MB (the process's peak so far)"
    return f"peak RSS {run['peak_rss_mb']:.0f} MB (from {run['rss_at_start_mb']:.0f} MB before loading)"


def report(results: dict[str, Any]) -> str:
    def line(label: str, summary: dict[str, Any]) -> str:
        s = {k: Summary(**v) for k, v in summary.items()}
        steady = s["steady_rtf"].fmt("", 1) if s["steady_rtf"].median == s["steady_rtf"].median else "n/a"
        return (f"  {label:40s} first audio {s['first_audio_s'].fmt('s', 1)}  steady RTF "
                f"{steady}  RTF {s['rtf'].fmt('', 1)}  stalls {s['stall_s'].fmt('s', 1)}")

    def split(c: dict[str, Any]) -> str:
        m = {k: Summary(**v).median for k, v in c["split"].items()}
        return (f"    prefill {m['prefill_s']:.2f}s  T3 {m['t3_s']:.1f}s ({m['t3_step_s'] * 1000:.0f} ms/step)  "
                f"flow {m['flow_s']:.1f}s  HiFT {m['hift_s']:.1f}s")

    out = [f"stream bench: {results['headline_tokens']} tokens, {results['repeats']} repeats (median [min-max])"]
    for name, b in results.get("baseline", {}).items():
        out.append(line(f"seed method {name}", b["summary"]) + f"  RSS {b['peak_rss_mb']:.0f} MB")
    if "upstream_turbo" in results:
        up = results["upstream_turbo"]
        out.append(line("upstream Turbo generate()", up["summary"]))
        out.append(f"    load {up['load_s']:.1f} s, " + _rss(up))
        out.append(split(up))
    for fam, runs in results["ours"].items():
        for name, o in runs.items():
            for case, c in o["cases"].items():
                out.append(line(f"chatterd {fam} {name} {case} ({c['tokens']} tok)", c["summary"]))
                out.append(split(c))
            out.append(f"    load {o['load_s']:.1f} s, warm-up {o['warm_up_s']:.1f} s, " + _rss(o))
            if "fidelity" in o:
                f = o["fidelity"]
                ours, seed = f["ours"], f["seed_method"]
                out.append(f"    fidelity vs one-shot ({f['tokens']} tokens, {f['flow_steps']} flow steps): "
                           f"log-mel distance ours {ours['log_mel_distance']:.3f} / seed's method "
                           f"{seed['log_mel_distance']:.3f}; "
                           f"seam error {ours['seam_error']:.3f} / {seed['seam_error']:.3f}; "
                           f"seam jump {ours['seam_jump']:.2f} / {seed['seam_jump']:.2f}")
    for name, r in results.get("ratios_vs_baseline_defaults", {}).items():
        out.append(f"  baseline(25/50) / chatterd {name}: " + ", ".join(f"{k} {v:.1f}x" for k, v in r.items()))
    for name, v in results.get("ratios", {}).items():
        out.append(f"  {name}: {v:.1f}x")
    for t in results.get("targets", []):
        out.append(f"target: {t['what']}: {t['value']:.1f}x ({t['limit']}): {'met' if t['met'] else 'NOT met'}")
    return "\n".join(out)
