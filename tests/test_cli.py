"""The `chatterd` command line: exit codes, one-line errors, and `say` against an in-process daemon."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import types
from pathlib import Path

import pytest
from conftest import AlsaCapture, Broker
from fakes import FakeEngine

from daemon import app
from daemon.__main__ import main
from daemon.config import config_from_dict

REPO = Path(__file__).resolve().parent.parent


def chatterd(
    *args: str, env: dict[str, str] | None = None, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "daemon", *args],
        capture_output=True,
        text=True,
        cwd=REPO,
        env=env,
        timeout=timeout,
    )


def test_check_config_ok(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check-config", "-c", str(REPO / "configs" / "default.yaml")]) == 0
    assert capsys.readouterr().out.strip() == "OK"


def test_check_config_error_is_one_line_and_exit_2(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("mqtt:\n  prot: 1883\n")
    result = chatterd("check-config", "-c", str(path))
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr
    assert "unknown key 'mqtt.prot'" in result.stderr and str(path) in result.stderr


def test_run_with_a_missing_config_exits_2(tmp_path: Path) -> None:
    result = chatterd("run", "-c", str(tmp_path / "nope.yaml"))
    assert result.returncode == 2 and "cannot read config file" in result.stderr
    assert "Traceback" not in result.stderr


def test_run_with_a_missing_audio_device_fails_fast(tmp_path: Path, alsa_capture: AlsaCapture) -> None:
    path = tmp_path / "chatterd.yaml"
    path.write_text("audio:\n  device: no-such-speaker\ntts:\n  checkpoint: /nonexistent\n")
    result = chatterd("run", "-c", str(path), env=alsa_capture.env)
    assert result.returncode == 2
    last = result.stderr.strip().splitlines()[-1]  # PortAudio/ALSA chatter comes first
    assert last.startswith("chatterd: error: audio device 'no-such-speaker' not found")
    assert "'default'" in last and "Traceback" not in result.stderr


def test_bench_passes_its_arguments_through(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[list[str]] = []
    bench = types.ModuleType("bench")
    cli = types.ModuleType("bench.cli")
    cli.main = lambda argv: seen.append(argv) or 3  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "bench", bench)
    monkeypatch.setitem(sys.modules, "bench.cli", cli)
    assert main(["bench", "--runs", "3", "-x"]) == 3
    assert seen == [["--runs", "3", "-x"]]


def test_make_checkpoint_calls_the_maker(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    calls: list[tuple[Path, str, int]] = []
    maker = types.ModuleType("tts.checkpoint")
    maker.make_random_checkpoint = (  # type: ignore[attr-defined]
        lambda out_dir, fam, seed: calls.append((out_dir, fam.name, seed)))
    monkeypatch.setitem(sys.modules, "tts.checkpoint", maker)
    assert main(["make-checkpoint", "--random", str(tmp_path / "ck"), "--seed", "5"]) == 0
    assert main(["make-checkpoint", "--random", str(tmp_path / "ml"), "--model", "multilingual"]) == 0
    assert calls == [(tmp_path / "ck", "turbo", 5), (tmp_path / "ml", "multilingual", 0)]


def test_say_without_a_broker_exits_2(mosquitto: Broker) -> None:
    mosquitto.stop()
    result = chatterd(
        "say", "hello", "--host", mosquitto.host, "--port", str(mosquitto.port), "--timeout", "5"
    )
    assert result.returncode == 2 and "cannot talk to the MQTT broker" in result.stderr


async def test_say_waits_for_the_end_event(mosquitto: Broker, tmp_path: Path) -> None:
    config = config_from_dict(
        {
            "mqtt": {"host": mosquitto.host, "port": mosquitto.port, "site": "cli"},
            "audio": {"output": f"wav:{tmp_path}/o.wav"},
        }
    )
    daemon = asyncio.create_task(app.run(config, FakeEngine()))
    config_file = tmp_path / "client.yaml"
    config_file.write_text(f"mqtt:\n  host: {mosquitto.host}\n  port: {mosquitto.port}\n")

    async def say(*args: str) -> tuple[int, str, str]:
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "daemon",
            "say",
            *args,
            "-c",
            str(config_file),
            "--site",
            "cli",
            "--timeout",
            "20",
            cwd=REPO,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        out, err = await asyncio.wait_for(process.communicate(), 30)
        assert process.returncode is not None
        return process.returncode, out.decode(), err.decode()

    try:
        code, out, err = await say("Hello", "from", "the", "shell")
        assert code == 0, err
        event = json.loads(out)
        assert event["event"] == "finished" and event["site"] == "cli" and event["audio_s"] > 0
        code, out, _ = await say("Hi", "--voice", "nobody")
        assert code == 1 and json.loads(out)["code"] == "unknown_voice"
    finally:
        daemon.cancel()
        await asyncio.gather(daemon, return_exceptions=True)
    code, _, err = await say("anyone?")
    assert code == 1 and "offline" in err
