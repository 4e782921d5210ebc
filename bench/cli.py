"""`chatterd bench ...`: benchmark entry point (see bench/README.md)."""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path
from typing import Any

# CPU features that decide which T3 paths are fast here (bf16 and int8 matrix instructions).
RELEVANT_CPU_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_bf16", "amx_int8", "amx_tile")
DEFAULT_CHECKPOINTS = Path("var/test-checkpoints")


def _machine() -> dict[str, Any]:
    import torch

    from tts.loading import cpu_flags

    flags = cpu_flags()
    info: dict[str, Any] = {"platform": platform.platform(), "python": platform.python_version(),
                            "torch": torch.__version__, "cpus": os.cpu_count(),
                            "torch_threads": torch.get_num_threads(),
                            "torch_interop_threads": torch.get_num_interop_threads(),
                            "cpu_flags": {f: f in flags for f in RELEVANT_CPU_FLAGS}}
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


def checkpoints(args: argparse.Namespace, parser: argparse.ArgumentParser,
                wanted: list[str] | None) -> dict[str, Path]:
    """Family -> checkpoint directory: `--checkpoint FAMILY=DIR` overrides, else `--checkpoints`/FAMILY.

    `wanted`: the families asked for (each must have a valid checkpoint); None = every family whose
    checkpoint directory exists (at least one must).
    """
    from tts.checkpoint import resolve_checkpoint
    from tts.errors import TTSError
    from tts.families import FAMILIES, family

    overrides: dict[str, Path] = {}
    for item in args.checkpoint:
        name, sep, directory = item.partition("=")
        if not sep:  # a bare DIR: the family whose files it holds
            directory = item
            fits = [n for n, f in FAMILIES.items() if all((Path(item) / file).is_file() for file in f.files)]
            if len(fits) != 1:
                parser.error(f"--checkpoint {item}: holds no single family's files; use FAMILY=DIR")
            name = fits[0]
        if name not in FAMILIES:
            parser.error(f"--checkpoint takes [FAMILY=]DIR with FAMILY one of {', '.join(FAMILIES)} (got {item!r})")
        overrides[name] = Path(directory)
    paths = {name: overrides.get(name, args.checkpoints / name) for name in FAMILIES}
    # Default: every family with a checkpoint directory (only the --checkpoint ones, if any are given).
    names = wanted if wanted is not None else [n for n, p in paths.items() if p.is_dir()
                                               and (not overrides or n in overrides)]
    if not names:
        parser.error(f"no family checkpoint under {args.checkpoints}; make them with `make checkpoints` "
                     f"(`chatterd make-checkpoint --model FAMILY --random {args.checkpoints}/FAMILY`)")
    found: dict[str, Path] = {}
    for name in names:
        try:
            found[name] = resolve_checkpoint(str(paths[name].resolve()), family(name))
        except TTSError as exc:
            parser.error(f"{exc}; make it with `chatterd make-checkpoint --model {name} --random {paths[name]}`")
    return found


def _families(value: str) -> list[str] | None:
    return [f for f in value.split(",") if f] or None


def main(argv: list[str]) -> int:
    os.environ.setdefault("TQDM_DISABLE", "1")  # upstream's loops draw a progress bar per call
    parser = argparse.ArgumentParser(prog="chatterd bench", description=__doc__)
    parser.add_argument("--checkpoints", type=Path, default=DEFAULT_CHECKPOINTS,
                        help="directory holding one checkpoint per family, DIR/<family> "
                             "(`make checkpoints` makes random ones); default %(default)s")
    parser.add_argument("--checkpoint", action="append", default=[], metavar="[FAMILY=]DIR",
                        help="one family's checkpoint directory, overriding --checkpoints (repeatable; a bare "
                             "DIR counts for the family whose files it holds)")
    parser.add_argument("--out", type=Path, default=Path("bench/results"), help="where JSON results go")
    sub = parser.add_subparsers(dest="what", required=True)
    families_help = "comma-separated families (default: every family with a checkpoint)"
    t3 = sub.add_parser("t3", help="T3 step per family: upstream loop vs ours (eager, compiled) vs the "
                                   "weight-read floor")
    t3.add_argument("--families", type=_families, default=None, help=families_help)
    t3.add_argument("--dtypes", default="float32,bfloat16,int8,int4")
    t3.add_argument("--steps", type=int, default=16)
    t3.add_argument("--repeats", type=int, default=5)
    t3.add_argument("--vs-fp32-steps", type=int, default=32,
                    help="teacher-forced steps for each dtype's numerical cost against fp32")
    t3.add_argument("--compile", action="store_true",
                    help="also time the torch.compile'd step (slow to build)")
    t3.add_argument("--no-upstream", action="store_true", help="skip upstream's loops (quick smoke runs)")
    stream = sub.add_parser("stream", help="first audio, RTF, time split, fidelity per family, against the seed's "
                                           "method and upstream Turbo (bench/README.md)")
    stream.add_argument("--families", type=_families, default=None, help=families_help)
    stream.add_argument("--baseline-venv", type=Path, default=Path("var/baseline-venv"),
                        help="venv with chatterbox-streaming 0.1.2 (bench/setup-baseline makes it)")
    stream.add_argument("--no-baseline", action="store_true", help="skip the seed's method")
    stream.add_argument("--no-upstream", action="store_true", help="skip upstream Turbo's generate()")
    stream.add_argument("--repeats", type=int, default=3)
    stream.add_argument("--tokens", type=int, default=75, help="speech tokens per request (25 = 1 s)")
    stream.add_argument("--no-lengths", action="store_true", help="skip the three-text-length series")
    stream.add_argument("--dtype", default="auto", help="T3 dtype for the original's fidelity-first configuration")
    stream.add_argument("--smoke", action="store_true",
                        help="tiny and quick (CI): 12 tokens, one repeat, one configuration per family, no baseline")
    startup = sub.add_parser("startup", help="load + warm-up with torch.compile, cold vs warm compile cache")
    startup.add_argument("--family", default="turbo")
    startup.add_argument("--dtype", default="bfloat16")
    startup.add_argument("--max-speech-tokens", type=int, default=1000)
    startup.add_argument("--max-text-tokens", type=int, default=400)
    knobs = sub.add_parser("knobs", help="each vocoder knob alone: cost and distance from the defaults' output")
    knobs.add_argument("--family", default="original")
    knobs.add_argument("--tokens", type=int, default=50)
    knobs.add_argument("--repeats", type=int, default=2)
    knobs.add_argument("--only", default="", help="comma-separated variant names (default: all)")
    parts = sub.add_parser("parts", help="where one family's time goes here, part by part (T3 step, flow encoder, "
                           "estimator, HiFT per chunk size), against its bandwidth and compute floors")
    parts.add_argument("--family", default="turbo")
    parts.add_argument("--tokens", type=int, default=64, help="speech tokens of the T3 request")
    parts.add_argument("--repeats", type=int, default=3)
    parts.add_argument("--threads", default="1,2", help="comma-separated thread counts")
    threads = sub.add_parser("threads", help="what a second OpenMP team costs: first chunk and T3 step on the "
                             "loading thread vs a second thread (why the daemon has one engine thread)")
    threads.add_argument("--family", default="turbo")
    threads.add_argument("--tokens", type=int, default=32, help="speech tokens of the T3 request")
    threads.add_argument("--repeats", type=int, default=3)
    wyoming = sub.add_parser("wyoming", help="Wyoming first audio and RTF, one-shot and streaming, against a "
                             "running daemon (and its MQTT first audio in the same run)")
    wyoming.add_argument("--uri", default="tcp://127.0.0.1:10200")
    wyoming.add_argument("--repeats", type=int, default=3)
    wyoming.add_argument("--words-per-s", type=float, default=8.0, help="streaming: pace of the text after "
                         "the first sentence")
    wyoming.add_argument("--mqtt-host", help="also measure the same text over MQTT (the daemon's broker)")
    wyoming.add_argument("--mqtt-port", type=int, default=1883)
    wyoming.add_argument("--site", default="default")
    daemon = sub.add_parser("daemon", help="first audio, RTF and stalls from a running daemon's own events "
                            "(short sentence and a ~20 s paragraph)")
    daemon.add_argument("--mqtt-host", default="localhost")
    daemon.add_argument("--mqtt-port", type=int, default=1883)
    daemon.add_argument("--site", default="default")
    daemon.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args(argv)

    if args.what == "daemon":
        from bench import daemon as daemon_bench

        results = daemon_bench.run(args.mqtt_host, args.mqtt_port, args.site, args.repeats)
        print(daemon_bench.report(results))
        print(f"results: {_write(args.out, 'daemon', results)}")
        return 0
    if args.what == "wyoming":
        from bench import wyoming as wyoming_bench

        mqtt = (args.mqtt_host, args.mqtt_port, args.site) if args.mqtt_host else None
        results = wyoming_bench.run(args.uri, args.repeats, args.words_per_s, mqtt)
        print(wyoming_bench.report(results))
        print(f"results: {_write(args.out, 'wyoming', results)}")
        return 0
    if args.what == "t3":
        from bench import t3 as t3_bench

        results = t3_bench.run(checkpoints(args, parser, args.families), args.dtypes.split(","), args.steps,
                               args.repeats, args.compile, upstream=not args.no_upstream,
                               vs_fp32_steps=args.vs_fp32_steps)
        print(t3_bench.report(results))
        print(f"results: {_write(args.out, 't3', results)}")
    if args.what == "startup":
        from bench import startup as startup_bench

        (ckpt,) = checkpoints(args, parser, [args.family]).values()
        results = startup_bench.run(args.family, ckpt, args.dtype, args.max_speech_tokens, args.max_text_tokens)
        print(startup_bench.report(results))
        print(f"results: {_write(args.out, 'startup', results)}")
    if args.what == "parts":
        from bench import parts as parts_bench

        (ckpt,) = checkpoints(args, parser, [args.family]).values()
        results = parts_bench.run(args.family, ckpt, args.tokens, args.repeats,
                                  [int(n) for n in args.threads.split(",") if n])
        print(parts_bench.report(results))
        print(f"results: {_write(args.out, 'parts', results)}")
    if args.what == "threads":
        from bench import threads as threads_bench

        (ckpt,) = checkpoints(args, parser, [args.family]).values()
        results = threads_bench.run(args.family, ckpt, args.tokens, args.repeats)
        print(threads_bench.report(results))
        print(f"results: {_write(args.out, 'threads', results)}")
    if args.what == "knobs":
        from bench import knobs as knobs_bench

        (ckpt,) = checkpoints(args, parser, [args.family]).values()
        results = knobs_bench.run(args.family, ckpt, args.tokens, args.repeats,
                                  [v for v in args.only.split(",") if v] or None)
        print(knobs_bench.report(results))
        print(f"results: {_write(args.out, 'knobs', results)}")
    if args.what == "stream":
        from bench import stream as stream_bench

        smoke = args.smoke
        found = checkpoints(args, parser, args.families)
        # The seed's method runs the original model, whichever families are benched.
        seed_checkpoint = found.get("original")
        if seed_checkpoint is None and (args.checkpoints / "original" / "conds.pt").is_file():
            seed_checkpoint = args.checkpoints / "original"
        venv = None if (args.no_baseline or smoke or seed_checkpoint is None) else args.baseline_venv
        if venv is not None and not (venv / "bin" / "python").exists():
            parser.error(f"no baseline venv at {venv}; run bench/setup-baseline {venv} (or pass --no-baseline)")
        results = stream_bench.run(found, baseline_venv=venv, baseline_checkpoint=seed_checkpoint,
                                   repeats=1 if smoke else args.repeats,
                                   headline_tokens=12 if smoke else args.tokens,
                                   lengths=not (smoke or args.no_lengths), dtype=args.dtype, smoke=smoke,
                                   upstream_turbo=not args.no_upstream and "turbo" in found)
        print(stream_bench.report(results))
        path = _write(args.out, "stream", results)
        stream_bench.plot(results, path.with_suffix(".png"))
        print(f"results: {path} and {path.with_suffix('.png')}")
    return 0
