"""`chatterd bench stream`: first audio, RTF and streaming fidelity, ours against the seed's method.

In one run, on one machine, with one checkpoint, text and token count:
  baseline  chatterbox-streaming 0.1.2 `generate_stream` (its own venv, bench/baseline_runner.py),
            at its defaults (chunk 25, context 50) and at the seed's recommendation (75, 150)
  ours      StreamingTTS with fidelity-first defaults, and with the fast knob settings (also with
            T3 pipelined on its own thread, which is off by default on a CPU)
Per run: first audio (call start -> first chunk), steady-state RTF (time between the first and the
last chunk over the audio after the first chunk), overall RTF, playback stalls (gaps a listener
would hear if playback started at the first chunk), T3/flow/HiFT split, peak RSS. Ours also at
three text lengths. Then fidelity (bench/fidelity.py) and a timeline plot.
"""

from __future__ import annotations

import dataclasses
import json
import resource
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.stats import Summary

TEXT = ("The front door is open, the kitchen lights are still on, and the washing machine has finished. "
        "Please close the door before you leave the house.")
LENGTHS = {  # text -> speech tokens decoded (the random model needs the count fixed)
    "short": ("The front door is open.", 40),
    "medium": ("The front door is open and the kitchen lights are still on.", 100),
    "long": (TEXT, 200),
}
SAMPLE_RATE = 24000

# Knob settings that trade fidelity for speed on a CPU (each measured in bench/README.md).
FAST_KNOBS: dict[str, Any] = {"dtype": "int8", "flow_steps": 4, "flow_cfg_rate": 0.0, "prompt_tokens": 25,
                              "context_tokens": 25, "first_chunk_tokens": 8}


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


def run_ours(checkpoint: Path, overrides: dict[str, Any], cases: dict[str, tuple[str, int]],
             repeats: int) -> dict[str, Any]:
    from tts.config import TTSConfig
    from tts.engine import StreamingTTS, SynthesisStats

    config = TTSConfig(checkpoint=str(checkpoint), **overrides)
    t0 = time.perf_counter()
    engine = StreamingTTS.load(config)
    load_s = time.perf_counter() - t0
    warm_s = engine.warm_up()
    result: dict[str, Any] = {"settings": {k: v for k, v in dataclasses.asdict(config).items()
                                           if k not in ("voices", "checkpoint")},
                              "load_s": load_s, "warm_up_s": warm_s, "cases": {}}
    for name, (text, tokens) in cases.items():
        runs, timelines, splits = [], [], []
        for repeat in range(repeats):
            stats = SynthesisStats()
            for _ in engine.stream(text, max_tokens=tokens, stats=stats, seed=repeat):
                pass
            runs.append(timeline_metrics(stats.chunk_times))
            timelines.append(stats.chunk_times)
            splits.append({"t3_s": stats.t3_s, "flow_s": stats.flow_s, "hift_s": stats.hift_s})
        result["cases"][name] = {"tokens": tokens, "summary": _summarise(runs), "split": _summarise(splits),
                                 "runs": runs, "timelines": timelines}
    result["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return result


def run_fidelity(checkpoint: Path, tokens: int, seed: int) -> dict[str, Any]:
    """Fidelity at the engine's defaults and at the fast knobs, on tokens our T3 decoded."""
    from bench import fidelity
    from tts.config import TTSConfig
    from tts.engine import StreamingTTS

    defaults = TTSConfig(checkpoint=str(checkpoint), dtype="int8")
    engine = StreamingTTS.load(defaults)
    prompt = engine.voice_bank.get(None).prompt
    stats_tokens: list[int] = []
    prefix_text = LENGTHS["medium"][0]
    import torch

    with torch.inference_mode():
        from tts.t3 import SamplingParams

        ids = engine.tokenizer.text_to_tokens(prefix_text)  # type: ignore[attr-defined]
        ids = torch.nn.functional.pad(torch.nn.functional.pad(ids, (1, 0), value=255), (0, 1), value=0)
        prefix = engine.decoder.prefix_embeds(engine.voice_bank.get(None).cond_emb, ids.long())
        gen = torch.Generator().manual_seed(seed)
        for block in engine.decoder.generate(prefix, tokens, SamplingParams(), generator=gen):
            stats_tokens.extend(t for t in block if t < 6561)
    out: dict[str, Any] = {}
    for label, cfg in (("defaults", defaults), ("fast", dataclasses.replace(defaults, **FAST_KNOBS))):
        full_prompt = engine.voice_bank.get(None).prompt if cfg.prompt_tokens is None else dataclasses.replace(
            prompt, tokens=prompt.tokens[:, -cfg.prompt_tokens:],
            mels=prompt.mels[:, -2 * cfg.prompt_tokens:])
        out[label] = fidelity.compare(
            engine.s3gen, full_prompt, stats_tokens, seed=seed, flow_steps=cfg.flow_steps,
            context_tokens=cfg.context_tokens, crossfade_ms=cfg.crossfade_ms,
            schedule=(cfg.first_chunk_tokens, cfg.chunk_tokens, cfg.chunk_growth, cfg.max_chunk_tokens),
            seed_chunk=25, seed_context=50, flow_cfg_rate=cfg.flow_cfg_rate)
    return out


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
    for name, o in results["ours"].items():
        series.append((f"chatterd {name}", median_run(o["cases"]["headline"]["timelines"])))
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
    ax.set_title("Chunk production vs playback (same checkpoint, text, token count, machine)")
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def run(checkpoint: Path, *, baseline_venv: Path | None, repeats: int, headline_tokens: int,
        lengths: bool, dtype: str) -> dict[str, Any]:
    results: dict[str, Any] = {"text": TEXT, "headline_tokens": headline_tokens, "repeats": repeats}
    if baseline_venv is not None:
        results["baseline"] = {
            "defaults_25_50": run_baseline(baseline_venv, checkpoint, TEXT, 25, 50, headline_tokens // 25, repeats),
            "recommended_75_150": run_baseline(baseline_venv, checkpoint, TEXT, 75, 150,
                                               max(1, headline_tokens // 75), repeats),
        }
    cases = {"headline": (TEXT, headline_tokens)}
    if lengths:
        cases.update(LENGTHS)
    results["ours"] = {
        "fidelity_first": run_ours(checkpoint, {"dtype": dtype}, cases, repeats),
        "fast": run_ours(checkpoint, FAST_KNOBS, cases, repeats),
        # tts.pipeline is auto (off on a CPU): the pipelined variant, measured beside it, is why.
        "fast_pipelined": run_ours(checkpoint, FAST_KNOBS | {"pipeline": True}, {"headline": cases["headline"]},
                                   repeats),
    }
    if "baseline" in results:
        base = results["baseline"]["defaults_25_50"]["summary"]
        results["ratios_vs_baseline_defaults"] = {
            name: {k: base[k]["median"] / o["cases"]["headline"]["summary"][k]["median"]
                   for k in ("first_audio_s", "steady_rtf", "rtf")}
            for name, o in results["ours"].items()
        }
    results["fidelity"] = run_fidelity(checkpoint, headline_tokens, seed=0)
    return results


def report(results: dict[str, Any]) -> str:
    def line(label: str, summary: dict[str, Any]) -> str:
        s = {k: Summary(**v) for k, v in summary.items()}
        return (f"  {label:34s} first audio {s['first_audio_s'].fmt('s', 1)}  steady RTF "
                f"{s['steady_rtf'].fmt('', 1)}  RTF {s['rtf'].fmt('', 1)}  stalls {s['stall_s'].fmt('s', 1)}")

    out = [f"stream bench: {results['headline_tokens']} tokens, {results['repeats']} repeats (median [min-max])"]
    for name, b in results.get("baseline", {}).items():
        out.append(line(f"seed method {name}", b["summary"]) + f"  RSS {b['peak_rss_mb']:.0f} MB")
    for name, o in results["ours"].items():
        for case, c in o["cases"].items():
            split = {k: Summary(**v).median for k, v in c["split"].items()}
            out.append(line(f"chatterd {name} {case} ({c['tokens']} tok)", c["summary"])
                       + f"  T3 {split['t3_s']:.1f}s flow {split['flow_s']:.1f}s HiFT {split['hift_s']:.1f}s")
        out.append(f"    load {o['load_s']:.1f} s, warm-up {o['warm_up_s']:.1f} s, peak RSS {o['peak_rss_mb']:.0f} MB")
    for name, r in results.get("ratios_vs_baseline_defaults", {}).items():
        out.append(f"  baseline(25/50) / chatterd {name}: " + ", ".join(f"{k} {v:.1f}x" for k, v in r.items()))
    for label, f in results["fidelity"].items():
        o, s = f["ours"], f["seed_method"]
        out.append(f"  fidelity ({label}, vs one-shot): log-mel distance ours {o['log_mel_distance']:.3f} / seed "
                   f"{s['log_mel_distance']:.3f}; seam error ours {o['seam_error']:.3f} / seed {s['seam_error']:.3f}; "
                   f"seam jump ours {o['seam_jump']:.2f} / seed {s['seam_jump']:.2f}")
    return "\n".join(out)
