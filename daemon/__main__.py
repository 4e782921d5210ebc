"""chatterd's command line; each command is a few lines of wiring into the modules that do the work."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from daemon.errors import ChatterdError
from tts.errors import TTSError


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="chatterd", description="MQTT text in, streaming Chatterbox speech out."
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    run = commands.add_parser("run", help="run the daemon")
    run.add_argument("-c", "--config", type=Path, required=True, help="YAML config file")
    say = commands.add_parser("say", help="speak TEXT through a running daemon and wait until it is done")
    say.add_argument("text", nargs="+", metavar="TEXT")
    say.add_argument("-c", "--config", type=Path, help="read the mqtt section of this config file")
    say.add_argument("--host", help="MQTT broker host")
    say.add_argument("--port", type=int, help="MQTT broker port")
    say.add_argument("--site", help="the daemon's site (topics chatterd/<site>/...)")
    say.add_argument("--voice", help="voice name (default: the daemon's default voice)")
    say.add_argument("--timeout", type=float, default=120.0, help="seconds to wait for the end (default 120)")
    commands.add_parser("devices", help="list the audio output devices (the names audio.device takes)")
    doctor = commands.add_parser(
        "doctor", help="check the config, weights, broker, audio output and compute device, each with its fix"
    )
    doctor.add_argument("-c", "--config", type=Path, required=True)
    check = commands.add_parser("check-config", help="validate a config file")
    check.add_argument("-c", "--config", type=Path, required=True)
    make = commands.add_parser(
        "make-checkpoint", help="write a random-weight checkpoint (for tests and benches)"
    )
    make.add_argument("--random", type=Path, required=True, metavar="DIR", help="output directory")
    make.add_argument("--model", default=None, metavar="FAMILY",
                      help="turbo, original or multilingual (default: the default model, turbo)")
    make.add_argument("--seed", type=int, default=0)
    commands.add_parser(
        "bench", help="benchmarks (see bench/README.md); arguments pass through", add_help=False
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["bench"]:
        from bench.cli import main as bench_main

        return int(bench_main(argv[1:]))
    args = _parser().parse_args(argv)
    try:
        if args.command == "run":
            from daemon.app import serve, setup_logging
            from daemon.config import load_config
            from daemon.quiet import filter_third_party_deprecations

            config = load_config(args.config)
            setup_logging(config.log)
            filter_third_party_deprecations()  # before torch and friends are imported
            serve(config)
        elif args.command == "say":
            from daemon.client import client_config, say

            mqtt = client_config(args.config, args.host, args.port, args.site)
            return say(mqtt, " ".join(args.text), args.voice, args.timeout)
        elif args.command == "devices":
            from daemon.doctor import print_devices

            return print_devices()
        elif args.command == "doctor":
            from daemon.doctor import doctor

            return doctor(args.config)
        elif args.command == "check-config":
            from daemon.config import load_config

            load_config(args.config)
            print("OK")
        elif args.command == "make-checkpoint":
            from tts.checkpoint import make_random_checkpoint
            from tts.families import DEFAULT_FAMILY, family

            fam = family(args.model or DEFAULT_FAMILY)
            make_random_checkpoint(args.random, fam, args.seed)
            print(f"wrote a random-weight {fam.name} checkpoint to {args.random}")
    except (ChatterdError, TTSError) as exc:
        print(f"chatterd: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
