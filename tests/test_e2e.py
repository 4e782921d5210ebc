"""End to end with every real part: mosquitto, `chatterd run` as a subprocess, the random-weight
Chatterbox model, and PyAudio/PortAudio writing through an ALSA `file` PCM that we read back.

One daemon serves the whole module (loading and warming the model costs about a minute on a
2-core CPU); the tests run in file order and the last one shuts it down with SIGTERM.
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import signal
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from conftest import ASOUNDRC, CAPTURE_RATE, Broker, read_raw_int16
from harness import END_EVENTS, Listener, listening
from model_fixtures import fast_tts_settings

from tts.families import TURBO
from tts.text import normalize

pytestmark = [pytest.mark.model, pytest.mark.e2e]

REPO = Path(__file__).resolve().parent.parent
SITE = "e2e"
BASE = f"chatterd/{SITE}"
READY_TIMEOUT = 600.0  # load + warm-up on a busy 2-core CPU
SECONDS_PER_TOKEN = 0.04
TOKENS_PER_CHAR = fast_tts_settings(Path("."))["max_tokens_per_char"]


@dataclass
class Daemon:
    process: subprocess.Popen[bytes]
    broker: Broker
    raw_path: Path
    log_path: Path
    played_s: list[float] = field(default_factory=list)  # audio_s of every end event, for the final check

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def captured_s(self) -> float:
        return len(read_raw_int16(self.raw_path)) / CAPTURE_RATE


def start_daemon(tts: dict[str, Any], root: Path, extra: dict[str, dict[str, Any]] | None = None) -> Daemon:
    """`chatterd run` with `tts` settings against a fresh broker, PortAudio writing to a file; waits
    for its retained `online` status (published after warm-up, once the daemon has subscribed).
    `extra`: more config sections, merged key by key."""
    broker = Broker(root)
    broker.start()
    config_home = root / "xdg"
    (config_home / "alsa").mkdir(parents=True)
    raw_path = root / "speaker.raw"
    (config_home / "alsa" / "asoundrc").write_text(ASOUNDRC.format(rate=CAPTURE_RATE, path=raw_path))
    config = {
        "mqtt": {"host": broker.host, "port": broker.port, "site": SITE},
        "tts": tts,
        "audio": {"output": "pyaudio"},
        "log": {"level": "INFO"},
    }
    for section, values in (extra or {}).items():
        config[section] = {**config.get(section, {}), **values}
    config_path = root / "chatterd.yaml"
    config_path.write_text(yaml.safe_dump(config))
    log_path = root / "daemon.log"
    env = {**os.environ, "XDG_CONFIG_HOME": str(config_home), "PYTHONUNBUFFERED": "1"}
    with log_path.open("wb") as log:
        process = subprocess.Popen([sys.executable, "-m", "daemon", "run", "-c", str(config_path)],
                                   stdout=log, stderr=subprocess.STDOUT, env=env)
    handle = Daemon(process, broker, raw_path, log_path)
    loop = asyncio.new_event_loop()  # its own loop: asyncio.run would unset the current one
    try:
        loop.run_until_complete(_until_online(handle))
    except BaseException:
        stop_daemon(handle)
        raise
    finally:
        loop.close()
    return handle


async def _until_online(handle: Daemon) -> None:
    """Wait for `online` on `<base>/status`; fail with the log's tail if the daemon exits or times out."""
    deadline = time.monotonic() + READY_TIMEOUT
    async with listening(handle.broker, f"{BASE}/status", base=BASE) as status:
        while True:
            try:  # a wait in slices, to notice a daemon that exited meanwhile
                await status.wait_for(lambda r: r.payload == b"online", timeout=1.0)
                return
            except asyncio.TimeoutError:
                pass
            if handle.process.poll() is not None:
                pytest.fail(f"chatterd exited with {handle.process.returncode} before it was online:\n"
                            f"{handle.log()[-3000:]}")
            if time.monotonic() > deadline:
                pytest.fail(f"chatterd not online within {READY_TIMEOUT} s:\n{handle.log()[-3000:]}")


def stop_daemon(handle: Daemon) -> None:
    if handle.process.poll() is None:
        handle.process.kill()
        handle.process.wait()
    handle.broker.stop()


def write_tone_wav(path: Path, seconds: float, rate: int = 24000) -> Path:
    """A plain tone: a reference that is readable but, at `seconds` < 5, too short for Turbo."""
    import wave

    t = np.arange(int(rate * seconds)) / rate
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes((0.3 * np.sin(2 * np.pi * 220 * t) * 32767).astype("<i2").tobytes())
    return path


@pytest.fixture(scope="module")
def daemon(checkpoint_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    root = tmp_path_factory.mktemp("e2e")
    # The default model (Turbo), with one voice whose reference is too short for it.
    tts = {**fast_tts_settings(checkpoint_dir), "voices": {"short": str(write_tone_wav(root / "short.wav", 3.0))}}
    handle = start_daemon(tts, root)
    try:
        yield handle
    finally:
        stop_daemon(handle)


async def _exchange(daemon: Daemon, messages: list[tuple[str, bytes]], *, ends: int, timeout: float = 300.0,
                    during: Callable[[Listener], Awaitable[None]] | None = None) -> list[dict[str, Any]]:
    """Publish `messages` and collect events until `ends` requests have ended (errors count as ends).

    `during(listener)` runs once they are published, while events come in: it may wait for one
    (`listener.event(...)`) and publish more (e.g. a stop).
    """
    async with listening(daemon.broker, f"{BASE}/event", base=BASE, timeout=timeout) as ear:
        for topic, payload in messages:
            await ear.client.publish(topic, payload, qos=1)
        if during is not None:
            await during(ear)
        await ear.until(lambda: sum(e["event"] in END_EVENTS for e in ear.events()) >= ends)
        events = ear.events()
    last_end = [i for i, e in enumerate(events) if e["event"] in END_EVENTS][ends - 1]
    events = events[: last_end + 1]
    for event in events:
        if event["event"] in ("finished", "stopped") and event.get("audio_s") is not None:
            daemon.played_s.append(event["audio_s"])
    return events


def _by_id(events: list[dict[str, Any]], request_id: str) -> list[str]:
    return [e["event"] for e in events if e["id"] == request_id]


def _expected_audio_s(text: str) -> float:
    """The length guard's tokens for the default model's cleaned text, plus the silence tokens Turbo
    appends after the last one (as upstream Turbo does)."""
    clean = normalize(text, "en", punctuation=TURBO.punctuation)
    return (math.ceil(len(clean) * TOKENS_PER_CHAR) + TURBO.flow.tail_silence) * SECONDS_PER_TOKEN


async def test_status_is_online_and_retained(daemon: Daemon) -> None:
    async with listening(daemon.broker, f"{BASE}/status", base=BASE, timeout=10) as status:
        message = await status.wait_for(lambda r: True)
        assert message.payload == b"online" and message.retain


async def test_plain_text_and_json_are_spoken(daemon: Daemon) -> None:
    plain = "Hello kitchen."
    doc = "The front door is open."
    before = daemon.captured_s()
    events = await _exchange(daemon, [(f"{BASE}/say", plain.encode()),
                                      (f"{BASE}/say", json.dumps({"text": doc, "id": "door-1"}).encode())],
                             ends=2)
    plain_id = next(e["id"] for e in events if e["event"] == "queued" and e["id"] != "door-1")
    previous_end: float | None = None
    for request_id, text in ((plain_id, plain), ("door-1", doc)):
        assert _by_id(events, request_id) == ["queued", "started", "finished"], events
        queued, started, finished = (next(e for e in events if e["id"] == request_id and e["event"] == name)
                                     for name in ("queued", "started", "finished"))
        assert started["site"] == SITE and started["ts"] > 0
        # One worker: door-1's synthesis starts once the request before it has ended, so its first
        # audio waited that long (ts are rounded to 1 ms); then it streams: the first audio comes
        # before the whole text is synthesised.
        waited_ms = 0.0 if previous_end is None else (previous_end - queued["ts"]) * 1000
        first_audio_ms = started["first_audio_ms"]
        assert waited_ms - 2 <= first_audio_ms < waited_ms + finished["synth_s"] * 1000, (queued, started, finished)
        previous_end = finished["ts"]
        # The random model never stops by itself: the length guard decides the duration exactly.
        assert finished["audio_s"] == pytest.approx(_expected_audio_s(text), abs=0.002)
        assert finished["synth_s"] > 0
        assert finished["rtf"] == pytest.approx(finished["synth_s"] / finished["audio_s"], rel=0.02)
    # What PortAudio wrote is what the events report (allowing for the last unflushed period).
    captured = daemon.captured_s() - before
    reported = sum(e["audio_s"] for e in events if e["event"] == "finished")
    assert captured == pytest.approx(reported, abs=0.15)
    samples = read_raw_int16(daemon.raw_path)[int(before * CAPTURE_RATE):]
    assert np.abs(samples).max() > 100, "the captured audio must not be silence"


async def test_a_voice_too_short_for_turbo_gets_an_error_and_the_next_message_is_spoken(daemon: Daemon) -> None:
    assert "voice short is unusable" in daemon.log() and "at least 5 s" in daemon.log()
    events = await _exchange(daemon, [
        (f"{BASE}/say", json.dumps({"text": "Hello.", "voice": "short", "id": "short-voice"}).encode()),
        (f"{BASE}/say", json.dumps({"text": "Hello.", "id": "after-short"}).encode()),
    ], ends=2)
    error = next(e for e in events if e["id"] == "short-voice")
    assert error["event"] == "error" and error["code"] == "unknown_voice" and "default" in error["message"]
    assert _by_id(events, "after-short") == ["queued", "started", "finished"]


async def test_stop_mid_speech_cuts_audio(daemon: Daemon) -> None:
    long_text = ("This is a long announcement about the weather, the traffic and the garden, "
                 "and it goes on for a good while so that there is time to stop it in the middle.")
    full_s = _expected_audio_s(long_text)

    async def stop_on_start(ear: Listener) -> None:
        await ear.event("started", "long-1")
        await ear.publish("stop", b"")

    events = await _exchange(daemon,
                             [(f"{BASE}/say", json.dumps({"text": long_text, "id": "long-1"}).encode())],
                             ends=1, during=stop_on_start)
    assert _by_id(events, "long-1") == ["queued", "started", "stopped"], events
    stopped = next(e for e in events if e["event"] == "stopped")
    assert stopped["audio_s"] < full_s / 2
    # The daemon is free again at once: the next request is spoken in full.
    after = await _exchange(daemon,
                            [(f"{BASE}/say", json.dumps({"text": "Okay.", "id": "after-stop"}).encode())],
                            ends=1)
    assert _by_id(after, "after-stop") == ["queued", "started", "finished"]


BAD_INPUTS = [
    (b"\xff\xfe\xfa not utf-8", "invalid_utf8"),
    (b'{"text": "unclosed', "invalid_json"),
    (b"", "empty_text"),
    (b"   \n\t ", "empty_text"),
    (b'{"text": 5}', "wrong_type"),
    (b'{"text": "hi", "volume": "loud"}', "wrong_type"),
    (b'{"text": "hi", "priority": "urgent"}', "bad_value"),
    (b'{"text": "hi", "voice": "nobody"}', "unknown_voice"),
    (b"{\"id\": \"no-text\"}", "missing_field"),
    (b"{\"text\": \"hi\", \"interrupt\": \"yes\"}", "wrong_type"),
]


async def test_bad_input_gets_error_events_and_the_next_message_is_spoken(daemon: Daemon) -> None:
    messages = [(f"{BASE}/say", payload) for payload, _ in BAD_INPUTS]
    messages.append((f"{BASE}/say", json.dumps({"text": "Still here.", "id": "good-after-bad"}).encode()))
    events = await _exchange(daemon, messages, ends=len(BAD_INPUTS) + 1)
    errors = [e for e in events if e["event"] == "error"]
    assert [e["code"] for e in errors] == [code for _, code in BAD_INPUTS]
    assert all(e["message"] for e in errors)
    assert _by_id(events, "good-after-bad") == ["queued", "started", "finished"]
    assert daemon.process.poll() is None


async def test_sigterm_stops_cleanly_and_publishes_offline(daemon: Daemon) -> None:
    async with listening(daemon.broker, f"{BASE}/status", base=BASE, timeout=60) as status:
        await status.wait_for(lambda r: r.payload == b"online", timeout=10)
        daemon.process.send_signal(signal.SIGTERM)
        await status.wait_for(lambda r: r.payload == b"offline")
        assert [r.payload for r in status.received] == [b"online", b"offline"]
    assert await asyncio.to_thread(daemon.process.wait, 60) == 0
    # Closing the stream drains PortAudio: everything reported as played is in the capture.
    assert daemon.captured_s() == pytest.approx(sum(daemon.played_s), abs=0.05)


def test_default_config_offline_fails_fast_with_download_advice(tmp_path: Path) -> None:
    """The shipped config names the hub id; with no cached weights and no network, a clear error."""
    config_home = tmp_path / "xdg"
    (config_home / "alsa").mkdir(parents=True)
    (config_home / "alsa" / "asoundrc").write_text(
        ASOUNDRC.format(rate=CAPTURE_RATE, path=tmp_path / "out.raw")
    )
    env = {**os.environ, "XDG_CONFIG_HOME": str(config_home), "HF_HOME": str(tmp_path / "hf"),
           "HF_HUB_OFFLINE": "1"}
    started = time.monotonic()
    result = subprocess.run(
        [sys.executable, "-m", "daemon", "run", "-c", str(REPO / "configs" / "default.yaml")],
        capture_output=True, text=True, env=env, timeout=300,
    )
    assert result.returncode == 2
    assert "ResembleAI/chatterbox" in result.stderr and "offline" in result.stderr
    assert "make-checkpoint --random" in result.stderr
    assert "Traceback" not in result.stderr
    assert time.monotonic() - started < 120
