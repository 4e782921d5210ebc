"""The one-shot GPU check (README "GPU check"): every measurement a lent GPU should give, in one run.

    python -m bench.gpu_check --out DIR [--checkpoints DIR] [--total-s 450] [--budget STAGE=S ...]
    python -m bench.gpu_check --dry-run --out DIR      # the same stages on the CPU, tiny sizes

Stages, in order, each a subprocess stopped at its time budget (then recorded as `cut`, never
waited on), and all of them within `--total-s`:

- env: torch, CUDA, the GPU, nvidia-smi, package versions (a GPU run stops here without CUDA);
- checkpoints: one random checkpoint per family (`make-checkpoint --random`, in parallel), or the
  ones already under `--checkpoints`;
- parity: tests/test_t3_parity.py and tests/test_vocoder.py on the device (CHATTERD_TEST_DEVICE);
- e2e: `chatterd run` through a private mosquitto with a `wav:` output, per family (and Turbo
  with `compile: true`): first audio and RTF from the daemon's own `started`/`finished` events;
- t3, stream: `chatterd bench t3` and `chatterd bench stream` per family, with `--compile` and
  without, using whichever of `--families`, `--compile` and `--device` the benches offer.

Everything (summary.json, summary.txt, each stage's log and JSON) goes to `--out`. The dry run
skips what only a GPU can afford (compiled variants, upstream's loop, the long texts) and uses the
fast CPU settings; tests/test_gpu_check.py runs it so that the check cannot rot.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import wave
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
FAMILIES = ("turbo", "original", "multilingual")
STAGES = ("env", "checkpoints", "parity", "e2e", "t3", "stream")
# Seconds per stage on the GPU machine; the whole stays under 8 minutes with the install before it.
GPU_BUDGETS: dict[str, float] = {"env": 20, "checkpoints": 100, "parity": 60, "e2e": 150, "t3": 60, "stream": 60}
DRY_BUDGETS: dict[str, float] = {"env": 60, "checkpoints": 900, "parity": 300, "e2e": 400, "t3": 200, "stream": 200}
BENCH_DEFAULT_FAMILY = {"t3": "original", "stream": "turbo"}
SITE = "gpucheck"
SHORT = "Hello kitchen."
PARAGRAPH = ("The weather today will be mostly sunny, with a light breeze from the west and a high of twenty "
             "one degrees. In the afternoon a few clouds may pass over the hills, but no rain is expected "
             "before the weekend. Remember to close the windows in the garden room before you leave, and "
             "take the bins out tonight.")


@dataclass
class Check:
    out: Path
    dry_run: bool
    checkpoints: Path
    families: list[str]
    budgets: dict[str, float]
    total_s: float
    start: float = field(default_factory=time.monotonic)
    stages: list[dict[str, Any]] = field(default_factory=list)

    @property
    def device(self) -> str:
        return "cpu" if self.dry_run else "cuda"

    def left(self) -> float:
        return self.total_s - (time.monotonic() - self.start)

    def env(self, **extra: str) -> dict[str, str]:
        env = {**os.environ, "PYTHONUNBUFFERED": "1", "TQDM_DISABLE": "1", "HF_HUB_OFFLINE": "1",
               "TRANSFORMERS_OFFLINE": "1", "CHATTERD_TEST_DEVICE": self.device,
               "CHATTERD_TEST_CHECKPOINTS": str(self.checkpoints)}
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH", "")) if p)
        return env | extra


def run_command(argv: list[str], log: Path, timeout: float, env: dict[str, str]) -> dict[str, Any]:
    """Run one command to `log`; stop its whole process group at `timeout` (status `cut`)."""
    began = time.monotonic()
    with log.open("ab") as out:
        out.write(f"$ {' '.join(argv)}\n".encode())
        out.flush()
        process = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=REPO,
                                   start_new_session=True)
        try:
            rc: int | None = process.wait(max(timeout, 0.1))
            status = "ok" if rc == 0 else "failed"
        except subprocess.TimeoutExpired:
            stop_group(process)
            rc, status = None, "cut"
    return {"cmd": argv, "log": log.name, "status": status, "rc": rc, "wall_s": round(time.monotonic() - began, 2),
            "budget_s": round(timeout, 1)}


def stop_group(process: subprocess.Popen[Any], grace: float = 5.0) -> None:
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(process.pid, sig)
        except ProcessLookupError:
            return
        try:
            process.wait(grace)
            return
        except subprocess.TimeoutExpired:
            continue


def overall(commands: list[dict[str, Any]]) -> str:
    statuses = {c["status"] for c in commands}
    for status in ("cut", "failed", "skipped"):
        if status in statuses:
            return status
    return "ok" if commands else "skipped"


# -- stages ---------------------------------------------------------------------------------------

PROBE = r"""
import json, platform, subprocess, shutil, importlib.metadata as m
import torch
info = {"python": platform.python_version(), "torch": torch.__version__, "cuda": torch.version.cuda,
        "cuda_available": torch.cuda.is_available()}
if torch.cuda.is_available():
    p = torch.cuda.get_device_properties(0)
    info |= {"gpu": p.name, "gpu_memory_gib": round(p.total_memory / 2**30, 1), "sms": p.multi_processor_count}
if shutil.which("nvidia-smi"):
    info["nvidia_smi"] = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total,clocks.max.sm",
                                         "--format=csv,noheader"], capture_output=True, text=True).stdout.strip()
info["packages"] = {}
for name in ("chatterbox-tts", "transformers", "tokenizers", "huggingface-hub", "numpy", "torchaudio", "librosa",
             "diffusers", "safetensors", "aiomqtt", "paho-mqtt", "wyoming", "onnxruntime", "triton", "pytest"):
    try:
        info["packages"][name] = m.version(name)
    except m.PackageNotFoundError:
        info["packages"][name] = None
import importlib, traceback
info["import_errors"] = {}
for module in ("chatterbox", "chatterbox.models.t3", "chatterbox.models.s3gen", "librosa", "aiomqtt", "yaml",
               "tts.engine", "bench.t3", "bench.stream", "daemon.app"):  # every import the stages need
    try:
        importlib.import_module(module)
    except Exception as exc:
        info["import_errors"][module] = f"{type(exc).__name__}: {exc}"
        traceback.print_exc()
print("PROBE " + json.dumps(info))
"""


def stage_env(check: Check, budget: float) -> dict[str, Any]:
    log = check.out / "env.log"
    command = run_command([sys.executable, "-c", PROBE], log, budget, check.env())
    result: dict[str, Any] = {"commands": [command]}
    lines = [line for line in log.read_text(errors="replace").splitlines() if line.startswith("PROBE ")]
    if lines:
        result["env"] = json.loads(lines[-1][6:])
        (check.out / "env.json").write_text(json.dumps(result["env"], indent=1))
    if result.get("env", {}).get("import_errors"):
        command["status"] = "failed"
        result["error"] = "cannot import " + ", ".join(result["env"]["import_errors"])
    if not check.dry_run and not result.get("env", {}).get("cuda_available"):
        command["status"] = "failed"
        result["fatal"] = "no CUDA device: a GPU run measures nothing without one (use --dry-run on a CPU)"
    return result


def stage_checkpoints(check: Check, budget: float) -> dict[str, Any]:
    pending = [f for f in check.families if not (check.checkpoints / f / "RANDOM_WEIGHTS.txt").exists()]
    result: dict[str, Any] = {"reused": [f for f in check.families if f not in pending], "commands": []}
    threads = str(max(1, (os.cpu_count() or 1) // max(1, len(pending))))
    began = time.monotonic()
    running = []
    for fam in pending:
        argv = [sys.executable, "-m", "daemon", "make-checkpoint", "--random", str(check.checkpoints / fam),
                "--model", fam]
        log = check.out / f"checkpoint-{fam}.log"
        out = log.open("ab")
        process = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, cwd=REPO, start_new_session=True,
                                   env=check.env(OMP_NUM_THREADS=threads))
        running.append((fam, argv, log, out, process))
    for _fam, argv, log, out, process in running:
        try:
            rc: int | None = process.wait(max(0.1, budget - (time.monotonic() - began)))
            status = "ok" if rc == 0 else "failed"
        except subprocess.TimeoutExpired:
            stop_group(process)
            rc, status = None, "cut"
        out.close()
        result["commands"].append({"cmd": argv, "log": log.name, "status": status, "rc": rc,
                                   "wall_s": round(time.monotonic() - began, 2), "budget_s": round(budget, 1)})
    if not running:
        result["status"] = "ok"
    return result


def stage_parity(check: Check, budget: float) -> dict[str, Any]:
    argv = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", f"--junitxml={check.out / 'parity.xml'}"]
    if check.dry_run:  # one family's fp32 parity: the CUDA run covers all of both files
        argv += ["tests/test_t3_parity.py::test_fp32_decoder_matches_upstream[turbo]"]
    else:
        argv += ["tests/test_t3_parity.py", "tests/test_vocoder.py"]
    return {"commands": [run_command(argv, check.out / "parity.log", budget, check.env())]}


def bench_flags(what: str, check: Check) -> set[str]:
    """The options `chatterd bench WHAT` offers (another branch adds --families, --compile...)."""
    help_text = subprocess.run([sys.executable, "-m", "daemon", "bench", what, "--help"], capture_output=True,
                               text=True, cwd=REPO, env=check.env(), timeout=60).stdout
    return {word.rstrip(",]") for word in help_text.split() if word.startswith("--")}


def bench_runs(what: str, check: Check, flags: set[str]) -> list[tuple[str, list[str]]]:
    """(name, argv) per family and compile variant; without --families, the family each bench assumes
    (bench t3 loads the original's t3_cfg.safetensors, bench stream the engine's default, Turbo)."""
    families = check.families if "--families" in flags else [BENCH_DEFAULT_FAMILY[what]]
    variants = [False] if check.dry_run or "--compile" not in flags else [False, True]
    if what == "t3" and "--compile" in flags and not check.dry_run:
        variants = [True]  # bench t3 --compile times the eager step beside the compiled one
    runs = []
    for fam in families:
        for compiled in variants:
            name = f"{what}-{fam}" + ("-compile" if compiled else "")
            argv = [sys.executable, "-m", "daemon", "bench", "--checkpoint", str(check.checkpoints / fam),
                    "--out", str(check.out / name), what]
            if "--families" in flags:
                argv += ["--families", fam]
            if "--device" in flags:
                argv += ["--device", check.device]
            if compiled:
                argv.append("--compile")
            if what == "t3":
                argv += (["--dtypes", "float32", "--steps", "2", "--repeats", "1", "--no-upstream"] if check.dry_run
                         else ["--dtypes", "float32,bfloat16", "--steps", "32", "--repeats", "5"])
            else:
                argv += ["--smoke"] if check.dry_run else ["--no-baseline", "--repeats", "3", "--no-lengths"]
            runs.append((name, argv))
    return runs


def stage_bench(what: str) -> Callable[[Check, float], dict[str, Any]]:
    def stage(check: Check, budget: float) -> dict[str, Any]:
        flags = bench_flags(what, check)
        runs = bench_runs(what, check, flags)
        result: dict[str, Any] = {"flags": sorted(f for f in flags if f != "--help"), "commands": []}
        if "--families" not in flags:
            result["note"] = f"`bench {what}` has no --families: the {BENCH_DEFAULT_FAMILY[what]} family alone"
        if "--compile" not in flags or check.dry_run:
            result["note_compile"] = ("dry run: no compiled variants (minutes on a CPU)" if check.dry_run
                                      else f"`bench {what}` has no --compile")
        began = time.monotonic()
        for i, (name, argv) in enumerate(runs):
            share = (budget - (time.monotonic() - began)) / (len(runs) - i)  # what is left, shared evenly
            command = run_command(argv, check.out / f"{name}.log", share, check.env())
            command["results"] = [str(p.relative_to(check.out)) for p in sorted((check.out / name).glob("*.json"))]
            result["commands"].append(command)
        return result

    return stage


# -- e2e: the daemon through MQTT -----------------------------------------------------------------

def find_mosquitto() -> tuple[str, dict[str, str]] | None:
    """The broker: $CHATTERD_MOSQUITTO, the one scripts/gpu-wheels carries in .gpu/, or the system's."""
    carried = REPO / ".gpu" / "mosquitto" / "mosquitto"
    if os.environ.get("CHATTERD_MOSQUITTO"):
        return os.environ["CHATTERD_MOSQUITTO"], {}
    if carried.exists():
        return str(carried), {"LD_LIBRARY_PATH": str(carried.parent / "lib")}
    found = shutil.which("mosquitto") or ("/usr/sbin/mosquitto" if Path("/usr/sbin/mosquitto").exists() else None)
    return (found, {}) if found else None


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def e2e_variants(check: Check) -> list[tuple[str, str, dict[str, Any]]]:
    """(name, family, tts overrides): the defaults a user gets on this device; Turbo also compiled."""
    if check.dry_run:
        from_fixtures = {"dtype": "int8", "flow_steps": 2, "prompt_tokens": 25, "context_tokens": 10,
                         "first_chunk_tokens": 6, "chunk_tokens": 12, "max_chunk_tokens": 24,
                         "max_tokens_per_char": 0.5}
        return [(f"e2e-{check.families[0]}", check.families[0], from_fixtures)]
    variants: list[tuple[str, str, dict[str, Any]]] = [(f"e2e-{fam}", fam, {}) for fam in check.families]
    if "turbo" in check.families:
        variants.insert(1, ("e2e-turbo-compile", "turbo", {"compile": True}))
    return variants


async def _say_all(port: int, texts: list[tuple[str, str]], timeout: float) -> list[dict[str, Any]]:
    """Publish each text in turn, waiting for its end event; every event of the exchange."""
    import aiomqtt

    events: list[dict[str, Any]] = []
    async with aiomqtt.Client("127.0.0.1", port) as client:
        await client.subscribe(f"chatterd/{SITE}/event", qos=1)
        for request_id, text in texts:
            await client.publish(f"chatterd/{SITE}/say", json.dumps({"text": text, "id": request_id}), qos=1)

            async def until_end(request_id: str = request_id) -> None:
                async for message in client.messages:
                    event = json.loads(bytes(message.payload))
                    event["received_monotonic"] = time.monotonic()
                    events.append(event)
                    if event.get("id") == request_id and event["event"] in ("finished", "stopped", "dropped",
                                                                             "error"):
                        return

            await asyncio.wait_for(until_end(), timeout)
    return events


def e2e_one(check: Check, name: str, family: str, overrides: dict[str, Any], port: int,
            budget: float) -> dict[str, Any]:
    import yaml

    began = time.monotonic()
    wav = check.out / f"{name}.wav"
    config = {"mqtt": {"host": "127.0.0.1", "port": port, "site": SITE, "persistent_session": False},
              "tts": {"model": family, "checkpoint": str(check.checkpoints / family), "seed": 7} | overrides,
              "audio": {"output": f"wav:{wav}"}, "log": {"level": "INFO"}}
    config_path = check.out / f"{name}.yaml"
    config_path.write_text(yaml.safe_dump(config))
    log = check.out / f"{name}.log"
    argv = [sys.executable, "-m", "daemon", "run", "-c", str(config_path)]
    record: dict[str, Any] = {"cmd": argv, "log": log.name, "config": config, "budget_s": round(budget, 1)}
    with log.open("ab") as out:
        process = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, cwd=REPO, env=check.env(),
                                   start_new_session=True)
    try:
        while "ready" not in log.read_text(errors="replace"):
            if process.poll() is not None:
                return record | {"status": "failed", "rc": process.returncode, "error": "exited before ready",
                                 "wall_s": round(time.monotonic() - began, 2)}
            if time.monotonic() - began > budget:
                return record | {"status": "cut", "rc": None, "error": "not ready within the budget",
                                 "wall_s": round(time.monotonic() - began, 2)}
            time.sleep(0.2)
        record["ready_s"] = round(time.monotonic() - began, 2)
        texts = [(f"short-{i}", SHORT) for i in range(3 if not check.dry_run else 2)]
        texts.append(("paragraph", PARAGRAPH if not check.dry_run else "The front door is open, and it is raining."))
        try:
            events = asyncio.run(_say_all(port, texts, max(1.0, budget - (time.monotonic() - began))))
        except (TimeoutError, asyncio.TimeoutError):
            return record | {"status": "cut", "rc": None, "error": "requests not finished within the budget",
                             "wall_s": round(time.monotonic() - began, 2)}
        record["events"] = events
        record |= e2e_summary(events)
    finally:
        stop_group(process, grace=20.0)
        record["rc"] = process.returncode
    record["wav_s"] = wav_seconds(wav)
    ok = record.get("ended") == len(texts) and process.returncode == 0
    return record | {"status": "ok" if ok else "failed", "wall_s": round(time.monotonic() - began, 2)}


def e2e_summary(events: list[dict[str, Any]]) -> dict[str, Any]:
    by_event: dict[str, list[dict[str, Any]]] = {}
    for event in events:
        by_event.setdefault(event["event"], []).append(event)
    finished = by_event.get("finished", [])
    return {"ended": len(finished), "errors": [e for e in events if e["event"] in ("error", "dropped", "stopped")],
            "first_audio_ms": {e["id"]: e.get("first_audio_ms") for e in by_event.get("started", [])},
            "rtf": {e["id"]: e.get("rtf") for e in finished},
            "audio_s": round(sum(e.get("audio_s") or 0.0 for e in finished), 3)}


def wav_seconds(path: Path) -> float | None:
    try:
        with wave.open(str(path), "rb") as w:
            return round(w.getnframes() / w.getframerate(), 3)
    except (OSError, EOFError, wave.Error):
        return None


def stage_e2e(check: Check, budget: float) -> dict[str, Any]:
    broker = find_mosquitto()
    if broker is None:
        return {"commands": [{"status": "skipped", "error": "no mosquitto: scripts/gpu-wheels carries one in .gpu/ "
                                                           "(name .gpu in the run's carry), or install it"}]}
    binary, extra_env = broker
    port = free_port()
    conf = check.out / "mosquitto.conf"
    lines = [f"listener {port} 127.0.0.1", "allow_anonymous true", "persistence false"]
    if os.geteuid() == 0:
        lines.append("user root")  # the GPU machine has no `mosquitto` user to drop to
    conf.write_text("\n".join(lines) + "\n")
    with (check.out / "mosquitto.log").open("ab") as out:
        mosquitto = subprocess.Popen([binary, "-c", str(conf)], stdout=out, stderr=subprocess.STDOUT,
                                     env={**os.environ, **extra_env}, start_new_session=True)
    result: dict[str, Any] = {"broker": binary, "commands": []}
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                if mosquitto.poll() is not None or time.monotonic() > deadline:
                    result["commands"].append({"status": "failed", "error": "mosquitto did not start",
                                               "log": "mosquitto.log"})
                    return result
                time.sleep(0.05)
        began = time.monotonic()
        variants = e2e_variants(check)
        for i, (name, family, overrides) in enumerate(variants):
            share = (budget - (time.monotonic() - began)) / (len(variants) - i)
            record = e2e_one(check, name, family, overrides, port, share)
            (check.out / f"{name}.json").write_text(json.dumps(record, indent=1))
            result["commands"].append({k: v for k, v in record.items() if k not in ("events", "config")})
    finally:
        stop_group(mosquitto)
    return result


# -- the whole --------------------------------------------------------------------------------------

STAGE_FUNCTIONS: dict[str, Callable[[Check, float], dict[str, Any]]] = {
    "env": stage_env, "checkpoints": stage_checkpoints, "parity": stage_parity, "e2e": stage_e2e,
    "t3": stage_bench("t3"), "stream": stage_bench("stream"),
}


def run_check(check: Check, stages: list[str]) -> dict[str, Any]:
    check.out.mkdir(parents=True, exist_ok=True)
    summary: dict[str, Any] = {"dry_run": check.dry_run, "device": check.device, "families": check.families,
                               "checkpoints": str(check.checkpoints), "total_s_budget": check.total_s,
                               "started": time.strftime("%Y-%m-%d %H:%M:%S"), "stages": check.stages}
    for name in stages:
        budget = min(check.budgets[name], check.left())
        print(f"gpu-check: {name} (budget {budget:.0f} s)", flush=True)
        if budget < 5:
            check.stages.append({"stage": name, "status": "skipped", "reason": "the total budget is spent"})
            continue
        began = time.monotonic()
        try:
            result = STAGE_FUNCTIONS[name](check, budget)
        except Exception as exc:  # a broken stage is recorded; the next one still runs
            result = {"commands": [], "status": "failed", "error": f"{type(exc).__name__}: {exc}"}
        record = {"stage": name, "status": result.pop("status", None) or overall(result["commands"]),
                  "wall_s": round(time.monotonic() - began, 2), "budget_s": round(budget, 1), **result}
        check.stages.append(record)
        print(f"gpu-check: {name}: {record['status']} in {record['wall_s']} s", flush=True)
        write_summary(check.out, summary)
        if "fatal" in result:
            print(f"gpu-check: {result['fatal']}", flush=True)
            break
    summary["total_s"] = round(time.monotonic() - check.start, 2)
    write_summary(check.out, summary)
    return summary


def write_summary(out: Path, summary: dict[str, Any]) -> None:
    (out / "summary.json").write_text(json.dumps(summary, indent=1))
    (out / "summary.txt").write_text(report(summary))


def report(summary: dict[str, Any]) -> str:
    lines = [f"GPU check ({'dry run, cpu' if summary['dry_run'] else summary['device']}), "
             f"{summary.get('total_s', '?')} s of {summary['total_s_budget']} s"]
    for stage in summary["stages"]:
        lines.append(f"{stage['stage']:12} {stage['status']:8} {stage.get('wall_s', 0):7} s / "
                     f"{stage.get('budget_s', 0)} s  {stage.get('reason') or stage.get('error') or ''}".rstrip())
        for command in stage.get("commands", []):
            label = command.get("log", "")
            extra = ""
            if "first_audio_ms" in command:
                extra = f" first_audio_ms={command['first_audio_ms']} rtf={command.get('rtf')}"
            lines.append(f"    {label:32} {command['status']:8} rc={command.get('rc')} "
                         f"{command.get('wall_s', '')} s{extra} {command.get('error', '')}".rstrip())
        for key in ("note", "note_compile"):
            if key in stage:
                lines.append(f"    ({stage[key]})")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.gpu_check", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True, help="folder for every result and log")
    parser.add_argument("--dry-run", action="store_true", help="on the CPU, tiny sizes, no compiled variants")
    parser.add_argument("--checkpoints", type=Path, default=None,
                        help="one random checkpoint per family under it, made where missing "
                             "(default: $CHATTERD_TEST_CHECKPOINTS or var/test-checkpoints)")
    parser.add_argument("--families", default=None,
                        help=f"comma-separated (default: {','.join(FAMILIES)}; the dry run: turbo)")
    parser.add_argument("--stages", default=",".join(STAGES), help="comma-separated subset, in this order")
    parser.add_argument("--total-s", type=float, default=None, help="budget for everything (GPU 450, dry run 1800)")
    parser.add_argument("--budget", action="append", default=[], metavar="STAGE=S", help="one stage's budget")
    args = parser.parse_args(argv)

    budgets = dict(DRY_BUDGETS if args.dry_run else GPU_BUDGETS)
    for item in args.budget:
        stage, _, seconds = item.partition("=")
        if stage not in budgets:
            parser.error(f"--budget {item}: no stage {stage!r} (stages: {', '.join(STAGES)})")
        budgets[stage] = float(seconds)
    families = (args.families or ("turbo" if args.dry_run else ",".join(FAMILIES))).split(",")
    unknown = [f for f in families if f not in FAMILIES]
    stages = [s for s in args.stages.split(",") if s]
    if unknown or any(s not in STAGES for s in stages):
        parser.error(f"families are {', '.join(FAMILIES)}; stages are {', '.join(STAGES)}")
    default_checkpoints = os.environ.get("CHATTERD_TEST_CHECKPOINTS", str(REPO / "var" / "test-checkpoints"))
    checkpoints = args.checkpoints or Path(default_checkpoints)
    check = Check(out=args.out.resolve(), dry_run=args.dry_run, checkpoints=checkpoints.resolve(), families=families,
                  budgets=budgets, total_s=args.total_s or (1800.0 if args.dry_run else 450.0))
    summary = run_check(check, stages)
    print(report(summary), end="")
    return 0 if all(s["status"] == "ok" for s in summary["stages"]) else 1


if __name__ == "__main__":
    sys.exit(main())
