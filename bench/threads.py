"""`chatterd bench threads`: what a second OpenMP team costs (why the daemon has one engine thread).

torch's CPU kernels run on GNU OpenMP; each thread that runs a multi-threaded operator keeps its
own team of workers for life, and once the process holds more workers than CPUs, libgomp stops
letting idle workers spin (100 spins instead of ~300,000): every parallel region then wakes its
team through the kernel. With the family's served engine (its defaults on this device) and all
threads (`torch.get_num_threads()`), `repeats` rounds of, in this order:

- **one team**: the thread that loaded the model (this one), as the daemon's `EngineThread` runs;
- **second thread**: a thread started now, whose own team makes two;
- **loading thread, second team alive**: this thread again while that thread (and its team) lives,
  which is how the daemon ran before its `EngineThread` (loaded on the main thread, served from
  another);

each measuring the first chunk of a short request (what first audio waits for: prefill, the first
T3 block and its vocoding) and a T3 step (seconds per token after the first block). When the second
thread ends, its team goes with it, so each round starts with one team again. Also one thread
alone (a T3 step on one core, as the pipelined decoder runs), for scale.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import torch

from bench.parts import t3_step_s
from bench.stats import Summary

TEXT = "The front door is open."
ARRANGEMENTS = ("one team", "second thread", "loading thread, second team alive")


def run(family: str, checkpoint: Path, tokens: int, repeats: int) -> dict[str, Any]:
    from tts.config import TTSConfig
    from tts.engine import StreamingTTS, SynthesisStats

    engine = StreamingTTS.load(TTSConfig(model=family, checkpoint=str(checkpoint)))
    engine.warm_up()
    voice = engine.voice_bank.get(None)
    threads = torch.get_num_threads()
    with torch.inference_mode():
        prefix = engine.decoder.prefix_embeds(voice.cond_emb, engine.encode(engine.clean(TEXT, "en"), "en"))

    def first_chunk() -> float:
        stats = SynthesisStats()
        for _ in engine.stream(TEXT, stats=stats, seed=0):
            break  # the first chunk is what first audio waits for; leaving closes the stream
        assert stats.first_chunk_s is not None
        return stats.first_chunk_s

    def measure(n_threads: int) -> tuple[float, float]:
        torch.set_num_threads(n_threads)
        return first_chunk(), t3_step_s(engine, voice, prefix, tokens)

    samples: dict[str, list[tuple[float, float]]] = {name: [] for name in ARRANGEMENTS}
    one_core: list[float] = []
    for _ in range(repeats):
        samples["one team"].append(measure(threads))
        one_core.append(measure(1)[1])
        torch.set_num_threads(threads)
        measured, release = threading.Event(), threading.Event()

        def second(measured: threading.Event = measured, release: threading.Event = release) -> None:
            samples["second thread"].append(measure(threads))
            measured.set()
            release.wait()  # keep this thread, and its OpenMP team, alive meanwhile

        worker = threading.Thread(target=second, name="bench-second-thread")
        worker.start()
        measured.wait()
        try:
            samples["loading thread, second team alive"].append(measure(threads))
        finally:
            release.set()
            worker.join()
    rows = {name: {"first_chunk_s": Summary.of([s[0] for s in got]).to_json(),
                   "t3_step_s": Summary.of([s[1] for s in got]).to_json()} for name, got in samples.items()}
    return {"family": family, "settings": engine.settings(), "threads": threads, "tokens": tokens,
            "repeats": repeats, "arrangements": rows, "t3_step_one_core_s": Summary.of(one_core).to_json()}


def report(results: dict[str, Any]) -> str:
    rows = results["arrangements"]
    base = rows["one team"]
    lines = [f"{results['family']} on {results['threads']} threads, {results['repeats']} rounds: first chunk of "
             f"{TEXT!r}, T3 step over {results['tokens']} tokens (median [min-max], ratio to one team)"]
    for name, row in rows.items():
        first, step = Summary(**row["first_chunk_s"]), Summary(**row["t3_step_s"])
        lines.append(f"  {name:36s} first chunk {first.fmt()} ({first.median / base['first_chunk_s']['median']:.2f}x)"
                     f"  T3 step {step.fmt()} ({step.median / base['t3_step_s']['median']:.2f}x)")
    lines.append(f"  {'one thread (for scale)':36s} T3 step {Summary(**results['t3_step_one_core_s']).fmt()}")
    return "\n".join(lines)
