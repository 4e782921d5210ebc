"""`chatterd devices` and `chatterd doctor -c FILE`: what a new user needs to know before `run`.

`doctor` runs each check and prints one line per check: `ok`, or `FAIL` followed by what is wrong
and, on the next line, the one thing to do about it. Its exit status is 0 only if all pass.
Nothing is changed or downloaded: weights are only looked up (the local directory, or the
Hugging Face cache for a hub id), the broker gets one connection, the audio device one stream.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from daemon import __version__
from daemon.config import Config, MqttConfig, load_config
from daemon.errors import ChatterdError
from daemon.quiet import native_quiet

SAMPLE_RATE = 24000  # Chatterbox's output rate: what the audio check opens
MQTT_TIMEOUT_S = 10.0


@dataclass(frozen=True)
class Check:
    name: str
    ok: bool
    detail: str
    fix: str = ""  # one line, for a failed check


def output_devices() -> list[tuple[str, int, float, bool]]:
    """PortAudio's output devices: (exact name for audio.device, channels, default rate, is default)."""
    with native_quiet():
        import pyaudio

        pa = pyaudio.PyAudio()
        try:
            try:
                default = int(pa.get_default_output_device_info()["index"])
            except OSError:
                default = -1
            found = []
            for index in range(pa.get_device_count()):
                info = pa.get_device_info_by_index(index)
                if int(info["maxOutputChannels"]) > 0:
                    found.append((str(info["name"]), int(info["maxOutputChannels"]),
                                  float(info["defaultSampleRate"]), index == default))
            return found
        finally:
            pa.terminate()


def print_devices() -> int:
    devices = output_devices()
    if not devices:
        print("PortAudio sees no output devices (is the user in the 'audio' group? is there a sound card?)")
        return 1
    print("Output devices (set audio.device to the name exactly, or leave it null for the default):")
    for name, channels, rate, default in devices:
        print(f"  {name!r:40} {channels} ch, {rate:.0f} Hz{'  (default)' if default else ''}")
    return 0


def check_config(path: Path) -> tuple[Check, Config | None]:
    try:
        config = load_config(path)
    except ChatterdError as exc:
        fix = f"fix {path} as the message says (chatterd check-config -c {path})"
        return Check("config", False, str(exc), fix), None
    return Check("config", True, f"{path} is valid (chatterd {__version__})"), config


def check_weights(checkpoint: str | None, model: str) -> Check:
    from tts.families import family

    fam = family(model)
    checkpoint = checkpoint or fam.hub_repo
    path = Path(checkpoint).expanduser()
    if path.is_dir() or checkpoint.startswith((".", "/", "~")):
        from tts.checkpoint import is_random_checkpoint, resolve_checkpoint
        from tts.errors import CheckpointError

        try:
            directory = resolve_checkpoint(checkpoint, fam)  # a local directory: only validated
        except CheckpointError as exc:
            return Check("weights", False, str(exc),
                         f"point tts.checkpoint at a complete {fam.name} checkpoint directory, or null "
                         f"for {fam.hub_repo}")
        kind = "random test weights (speech is noise)" if is_random_checkpoint(directory) else "local"
        return Check("weights", True, f"{directory} ({fam.name}, {kind})")
    from huggingface_hub import try_to_load_from_cache

    missing = [name for name in fam.files if not isinstance(try_to_load_from_cache(checkpoint, name), str)]
    if not missing:
        return Check("weights", True, f"{checkpoint} ({fam.name}) is in the Hugging Face cache")
    return Check(
        "weights", False, f"{checkpoint}: {', '.join(missing)} not in the Hugging Face cache "
        f"({os.environ.get('HF_HOME', '~/.cache/huggingface')})",
        f"online, `chatterd run` downloads them on first start; offline: `hf download {checkpoint} "
        f"--local-dir DIR` elsewhere, copy DIR here and set tts.checkpoint to it",
    )


def check_broker(mqtt: MqttConfig) -> Check:
    import aiomqtt

    from daemon.mqtt import NO_BROKER_HINT, describe_error, tls_context

    async def connect() -> None:
        async with aiomqtt.Client(
            mqtt.host, mqtt.port, username=mqtt.username, password=mqtt.resolve_password(),
            identifier=f"chatterd-doctor-{os.getpid()}", tls_context=tls_context(mqtt),
            tls_insecure=mqtt.tls_insecure if mqtt.uses_tls else None, timeout=MQTT_TIMEOUT_S,
        ):
            pass

    where = f"{mqtt.host}:{mqtt.port}"
    try:
        asyncio.run(asyncio.wait_for(connect(), MQTT_TIMEOUT_S))
    except aiomqtt.MqttError as exc:
        reason = describe_error(exc)
        if "no MQTT broker is listening" in reason:
            return Check("broker", False, f"{where}: nothing listens there", NO_BROKER_HINT)
        if "user name or password" in reason or "refused access" in reason:
            return Check("broker", False, f"{where}: {reason}",
                         "set mqtt.username and mqtt.password_file to an account the broker accepts")
        return Check("broker", False, f"{where}: {reason}", "check mqtt.host, mqtt.port and the mqtt.tls_* settings")
    except (ChatterdError, OSError, asyncio.TimeoutError) as exc:
        return Check("broker", False, f"{where}: {exc or 'timed out'}",
                     "check mqtt.host, mqtt.port, the password file and the mqtt.tls_* settings")
    login = f" as {mqtt.username}" if mqtt.username else ""
    return Check("broker", True, f"{where} accepted the connection{login}")


def check_audio(config: Config) -> Check:
    from daemon.player import open_sink

    if config.audio.output.startswith("wav:"):
        target = config.audio.output
    else:
        target = repr(config.audio.device) if config.audio.device else "the default device"
    try:
        sink = open_sink(config.audio, SAMPLE_RATE)
    except ChatterdError as exc:
        return Check("audio", False, str(exc),
                     "run `chatterd devices` and set audio.device to one of the names it prints")
    sink.close()
    return Check("audio", True, f"{target} opens for {SAMPLE_RATE} Hz mono output")


def check_compute(device: str) -> Check:
    import torch

    if device.startswith("cuda") or device == "auto":
        if torch.cuda.is_available():
            return Check("compute", True, f"CUDA: {torch.cuda.get_device_name(0)} (torch {torch.__version__})")
        if device != "auto":
            return Check("compute", False, f"tts.device is {device} but torch sees no CUDA GPU",
                         "install the NVIDIA driver (nvidia-smi must work) or set tts.device: cpu")
    from tts.attention import cpu_kernel

    kernel = cpu_kernel()
    attention = ("T3's decode attention in the C kernel" + (" with fp16 K/V" if torch.float16 in kernel.kv_dtypes
                                                            else "")
                 if kernel is not None else
                 "T3's decode attention in torch (no C compiler: install gcc for faster steps)")
    return Check("compute", True, f"CPU, {torch.get_num_threads()} threads (torch {torch.__version__}); "
                                  f"{attention}; expect slow synthesis without a GPU")


def doctor(path: Path, out: Callable[[str], None] = print) -> int:
    """Run every check, print them, return 0 when all pass."""
    first, config = check_config(path)
    checks = [first]
    if config is not None:
        checks += [check_weights(config.tts.checkpoint, config.tts.model), check_broker(config.mqtt),
                   check_audio(config),
                   check_compute(config.tts.device)]
    for check in checks:
        out(f"{check.name:8} {'ok  ' if check.ok else 'FAIL'} {check.detail}")
        if not check.ok:
            out(f"{'':8}      fix: {check.fix}")
    return 0 if all(c.ok for c in checks) else 1
