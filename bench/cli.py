"""`chatterd bench ...`: benchmark entry point (see bench/README.md)."""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path
from typing import Any


def _machine() -> dict[str, Any]:
    import torch

    info: dict[str, Any] = {"platform": platform.platform(), "python": platform.python_version(),
                            "torch": torch.__version__, "cpus": os.cpu_count()}
    try:
        info["cpu"] = next(line.split(":", 1)[1].strip()
                           for line in Path("/proc/cpuinfo").read_text().splitlines()
                           if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def _write(out: Path, name: str, results: dict[str, Any]) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{name}-{time.strftime('%Y%m%d-%H%M%S')}.json"
    path.write_text(json.dumps({"machine": _machine(), **results}, indent=1))
    return path


def main(argv: list[str]) -> int:
    os.environ.setdefault("TQDM_DISABLE", "1")  # upstream's loop draws a progress bar per call
    parser = argparse.ArgumentParser(prog="chatterd bench", description=__doc__)
    parser.add_argument("--checkpoint", type=Path, default=Path("var/checkpoint"),
                        help="checkpoint directory (make one with `chatterd make-checkpoint --random DIR`)")
    parser.add_argument("--out", type=Path, default=Path("bench/results"), help="where JSON results go")
    sub = parser.add_subparsers(dest="what", required=True)
    t3 = sub.add_parser("t3",
                        help="T3 step: upstream loop vs ours (eager, compiled) vs the weight-read floor")
    t3.add_argument("--dtypes", default="float32,bfloat16,int8")
    t3.add_argument("--steps", type=int, default=16)
    t3.add_argument("--repeats", type=int, default=5)
    t3.add_argument("--compile", action="store_true",
                    help="also time the torch.compile'd step (slow to build)")
    t3.add_argument("--no-upstream", action="store_true", help="skip upstream's loop (quick smoke runs)")
    stream = sub.add_parser("stream", help="first audio, RTF, fidelity: ours vs the seed's method (bench/README.md)")
    stream.add_argument("--baseline-venv", type=Path, default=Path("var/baseline-venv"),
                        help="venv with chatterbox-streaming 0.1.2 (bench/setup-baseline makes it)")
    stream.add_argument("--no-baseline", action="store_true")
    stream.add_argument("--repeats", type=int, default=3)
    stream.add_argument("--tokens", type=int, default=75, help="speech tokens per request (25 = 1 s)")
    stream.add_argument("--no-lengths", action="store_true", help="skip the three-text-length series")
    stream.add_argument("--dtype", default="auto", help="T3 dtype for the fidelity-first configuration")
    stream.add_argument("--smoke", action="store_true", help="tiny and quick, no baseline (CI)")
    startup = sub.add_parser("startup", help="load + warm-up with torch.compile, cold vs warm compile cache")
    startup.add_argument("--dtype", default="bfloat16")
    startup.add_argument("--max-speech-tokens", type=int, default=1000)
    startup.add_argument("--max-text-tokens", type=int, default=400)
    knobs = sub.add_parser("knobs", help="each vocoder knob alone: cost and distance from the defaults' output")
    knobs.add_argument("--tokens", type=int, default=50)
    knobs.add_argument("--repeats", type=int, default=2)
    knobs.add_argument("--only", default="", help="comma-separated variant names (default: all)")
    wyoming = sub.add_parser("wyoming", help="Wyoming first audio and RTF, one-shot and streaming, against a "
                             "running daemon (and its MQTT first audio in the same run)")
    wyoming.add_argument("--uri", default="tcp://127.0.0.1:10200")
    wyoming.add_argument("--repeats", type=int, default=3)
    wyoming.add_argument("--words-per-s", type=float, default=8.0, help="streaming: pace of the text after "
                         "the first sentence")
    wyoming.add_argument("--mqtt-host", help="also measure the same text over MQTT (the daemon's broker)")
    wyoming.add_argument("--mqtt-port", type=int, default=1883)
    wyoming.add_argument("--site", default="default")
    args = parser.parse_args(argv)

    if args.what == "wyoming":
        from bench import wyoming as wyoming_bench

        mqtt = (args.mqtt_host, args.mqtt_port, args.site) if args.mqtt_host else None
        results = wyoming_bench.run(args.uri, args.repeats, args.words_per_s, mqtt)
        print(wyoming_bench.report(results))
        print(f"results: {_write(args.out, 'wyoming', results)}")
        return 0
    if not (args.checkpoint / "t3_cfg.safetensors").exists():
        parser.error(f"no checkpoint at {args.checkpoint}; "
                     f"run `chatterd make-checkpoint --random {args.checkpoint}`")
    if args.what == "t3":
        from bench import t3 as t3_bench

        results = t3_bench.run(args.checkpoint, args.dtypes.split(","), args.steps, args.repeats,
                               args.compile, upstream=not args.no_upstream)
        print(t3_bench.report(results))
        print(f"results: {_write(args.out, 't3', results)}")
    if args.what == "startup":
        from bench import startup as startup_bench

        results = startup_bench.run(args.checkpoint, args.dtype, args.max_speech_tokens, args.max_text_tokens)
        print(startup_bench.report(results))
        print(f"results: {_write(args.out, 'startup', results)}")
    if args.what == "knobs":
        from bench import knobs as knobs_bench

        results = knobs_bench.run(args.checkpoint, args.tokens, args.repeats,
                                  [v for v in args.only.split(",") if v] or None)
        print(knobs_bench.report(results))
        print(f"results: {_write(args.out, 'knobs', results)}")
    if args.what == "stream":
        from bench import stream as stream_bench

        smoke = args.smoke
        venv = None if (args.no_baseline or smoke) else args.baseline_venv
        if venv is not None and not (venv / "bin" / "python").exists():
            parser.error(f"no baseline venv at {venv}; run bench/setup-baseline {venv} (or pass --no-baseline)")
        results = stream_bench.run(args.checkpoint, baseline_venv=venv, repeats=1 if smoke else args.repeats,
                                   headline_tokens=12 if smoke else args.tokens,
                                   lengths=not (smoke or args.no_lengths), dtype=args.dtype)
        print(stream_bench.report(results))
        path = _write(args.out, "stream", results)
        stream_bench.plot(results, path.with_suffix(".png"))
        print(f"results: {path} and {path.with_suffix('.png')}")
    return 0
