"""The first minutes of a new user: readable start-up output, `chatterd devices`, `chatterd doctor`.

Each runs chatterd as a subprocess (`python -m daemon`, this checkout), the way a person would.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import warnings
from pathlib import Path

import yaml
from conftest import AlsaCapture, Broker, free_port

from daemon import quiet
from tts.families import TURBO

NATIVE_NOISE = re.compile(r"ALSA lib|jack|Jack|Cannot connect to server|pcm_|PulseAudio")


def _chatterd(*args: str, env: dict[str, str], timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "daemon", *args], capture_output=True, text=True, env=env,
                          timeout=timeout)


def _no_sound_card(tmp_path: Path) -> dict[str, str]:
    """ALSA with its stock configuration and no card: PortAudio's probing fails loudly."""
    (tmp_path / "xdg").mkdir(exist_ok=True)
    return {**os.environ, "XDG_CONFIG_HOME": str(tmp_path / "xdg")}


def _write_config(path: Path, **sections: object) -> Path:
    path.write_text(yaml.safe_dump(sections))
    return path


def test_run_without_audio_device_or_broker_prints_one_error_and_no_alsa_or_jack_lines(tmp_path: Path) -> None:
    config = _write_config(tmp_path / "c.yaml", mqtt={"host": "127.0.0.1", "port": free_port()},
                           audio={"output": "pyaudio"})
    result = _chatterd("run", "-c", str(config), env=_no_sound_card(tmp_path))
    assert result.returncode == 2, result.stderr
    lines = result.stderr.splitlines()
    assert lines == ["chatterd: error: no default audio output device; PortAudio sees no output devices "
                     "at all (is the user in the 'audio' group?)"], result.stderr
    assert not NATIVE_NOISE.search(result.stderr + result.stdout)


def test_at_debug_level_the_native_probing_is_shown(tmp_path: Path) -> None:
    config = _write_config(tmp_path / "c.yaml", audio={"output": "pyaudio"}, log={"level": "DEBUG"})
    result = _chatterd("run", "-c", str(config), env=_no_sound_card(tmp_path))
    assert result.returncode == 2
    assert "ALSA" in result.stderr  # the ALSA hook's debug lines, or ALSA's own output


def test_third_party_deprecations_are_filtered_and_chatterds_own_are_not() -> None:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        quiet.filter_third_party_deprecations()
        for module in ("diffusers.models.lora", "torch.backends.cuda", "tts.engine", "daemon.app"):
            exec("import warnings\nwarnings.warn('deprecated', FutureWarning)", {"__name__": module})
        exec("import warnings\nwarnings.warn('not a deprecation', UserWarning)", {"__name__": "torch.x"})
    assert sorted(str(w.message) + " " + w.category.__name__ for w in caught) == [
        "deprecated FutureWarning", "deprecated FutureWarning", "not a deprecation UserWarning"
    ]


def test_devices_lists_the_exact_names_audio_device_takes(alsa_capture: AlsaCapture) -> None:
    result = _chatterd("devices", env=alsa_capture.env)
    assert result.returncode == 0, result.stderr
    assert "'tts_capture'" in result.stdout and "'default'" in result.stdout
    assert re.search(r"'default'.*\(default\)", result.stdout)
    assert not NATIVE_NOISE.search(result.stderr)


def _checkpoint(tmp_path: Path) -> Path:
    directory = tmp_path / "weights"
    directory.mkdir()
    for name in TURBO.files:  # the default model's
        (directory / name).write_bytes(b"")  # doctor checks the layout; it does not load the model
    return directory


def test_doctor_passes_against_the_test_broker_and_the_alsa_file_device(
    mosquitto: Broker, alsa_capture: AlsaCapture, tmp_path: Path
) -> None:
    config = _write_config(
        tmp_path / "c.yaml", mqtt={"host": mosquitto.host, "port": mosquitto.port},
        tts={"checkpoint": str(_checkpoint(tmp_path)), "device": "cpu"}, audio={"output": "pyaudio"},
    )
    result = _chatterd("doctor", "-c", str(config), env=alsa_capture.env)
    assert result.returncode == 0, result.stdout + result.stderr
    checks = [line.split()[:2] for line in result.stdout.splitlines()]
    assert checks == [[name, "ok"] for name in ("config", "weights", "broker", "audio", "compute")], result.stdout
    assert "24000 Hz" in result.stdout and "fix:" not in result.stdout
    assert "decode attention in the C kernel" in result.stdout  # scripts/setup installs gcc
    assert not NATIVE_NOISE.search(result.stderr)


def test_doctor_names_the_fix_for_each_failing_check(tmp_path: Path) -> None:
    config = _write_config(
        tmp_path / "c.yaml", mqtt={"host": "127.0.0.1", "port": free_port()},
        tts={"checkpoint": str(tmp_path / "nowhere"), "device": "cpu"},
        audio={"output": "pyaudio", "device": "no such card"},
    )
    result = _chatterd("doctor", "-c", str(config), env=_no_sound_card(tmp_path))
    assert result.returncode == 1
    lines = result.stdout.splitlines()
    failed = {line.split()[0]: lines[i + 1] for i, line in enumerate(lines) if line.split()[1:2] == ["FAIL"]}
    assert set(failed) == {"weights", "broker", "audio"}, result.stdout
    assert "tts.checkpoint" in failed["weights"]
    assert "systemctl enable --now mosquitto" in failed["broker"]
    assert "chatterd devices" in failed["audio"] and "audio.device" in failed["audio"]
    assert all(fix.strip().startswith("fix: ") for fix in failed.values())
    assert not NATIVE_NOISE.search(result.stderr)
    bad = _write_config(tmp_path / "bad.yaml", mqtt={"hots": "x"})
    result = _chatterd("doctor", "-c", str(bad), env=_no_sound_card(tmp_path))
    assert result.returncode == 1
    assert "unknown key 'mqtt.hots'" in result.stdout and "fix: " in result.stdout
