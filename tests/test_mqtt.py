"""The daemon's MQTT side against a real mosquitto, with the fake engine and a WAV output in-process."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import signal
import subprocess
import sys
import wave
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import Broker
from fakes import FakeEngine
from harness import Listener, listening

from daemon import app
from daemon.config import Config, MqttConfig, config_from_dict
from daemon.events import Event
from daemon.mqtt import MqttLink

SITE = "test"
BASE = f"chatterd/{SITE}"
TIMEOUT = 10.0


def listen(broker: Broker) -> contextlib.AbstractAsyncContextManager[Listener]:
    """A plain MQTT client subscribed to `<base>/#`, recording everything it receives."""
    return listening(broker, f"{BASE}/#", base=BASE, timeout=TIMEOUT)


@pytest.fixture
async def listener(mosquitto: Broker) -> AsyncIterator[Listener]:
    async with listen(mosquitto) as item:
        yield item


def daemon_config(broker: Broker, wav: Path, **speech: Any) -> Config:
    return config_from_dict(
        {
            "mqtt": {"host": broker.host, "port": broker.port, "site": SITE, "reconnect_min_s": 0.2},
            # Levelling off: these tests check the fake engine's exact amplitudes.
            "audio": {"output": f"wav:{wav}", "max_gain_db": 0},
            "speech": {"max_text_chars": 200, **speech},
        }
    )


@dataclass
class Daemon:
    task: asyncio.Task[None]
    engine: FakeEngine
    wav: Path

    async def stop(self) -> None:
        self.task.cancel()
        await asyncio.gather(self.task, return_exceptions=True)


@pytest.fixture
async def daemon(
    mosquitto: Broker, listener: Listener, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> AsyncIterator[Daemon]:
    caplog.set_level(logging.INFO)
    engine = FakeEngine()
    wav = tmp_path / "speech.wav"
    task = asyncio.create_task(app.run(daemon_config(mosquitto, wav), engine))
    running = Daemon(task, engine, wav)
    await listener.wait_for(lambda r: r.topic == f"{BASE}/status" and r.payload == b"online")
    yield running
    await running.stop()


async def test_ready_publishes_retained_online_and_speaking_off(
    daemon: Daemon, mosquitto: Broker, caplog: pytest.LogCaptureFixture
) -> None:
    async with listen(mosquitto) as late:  # a client that connects afterwards sees the retained state
        status = await late.wait_for(lambda r: r.topic == f"{BASE}/status")
        speaking = await late.wait_for(lambda r: r.topic == f"{BASE}/speaking")
        assert (status.payload, status.retain) == (b"online", True)
        assert (speaking.payload, speaking.retain) == (b"OFF", True)
    assert any(record.getMessage().startswith("ready") for record in caplog.get_records("setup"))


async def test_plain_text_is_spoken_with_events_and_speaking_state(
    daemon: Daemon, listener: Listener
) -> None:
    await listener.publish("say", "Hello there, kitchen")
    queued = await listener.event("queued")
    request_id = queued["id"]
    finished = await listener.end_of(request_id)
    assert finished["event"] == "finished" and finished["site"] == SITE
    assert finished["audio_s"] == pytest.approx(3 * daemon.engine.chunk_s, abs=1e-3)
    started = await listener.event("started", request_id)
    # From receipt: at least the fake's sleep before its first chunk.
    assert started["first_audio_ms"] >= daemon.engine.delay_s * 1000 and isinstance(started["ts"], float)
    assert [e["event"] for e in listener.events() if e["id"] == request_id] == [
        "queued",
        "started",
        "finished",
    ]
    await listener.until(lambda: listener.states("speaking")[-2:] == ["ON", "OFF"])
    assert daemon.engine.calls == ["Hello there, kitchen"]


async def test_json_request_keeps_its_id_and_volume_set_applies(daemon: Daemon, listener: Listener) -> None:
    await listener.publish("volume/set", "0.5")
    await listener.publish("say", json.dumps({"text": "quiet please", "id": "q1", "volume": 0.5}))
    assert (await listener.end_of("q1"))["event"] == "finished"
    with wave.open(str(daemon.wav), "rb") as wav:
        samples = np.frombuffer(wav.readframes(wav.getnframes()), dtype="<i2")
    assert np.abs(samples).max() == pytest.approx(0.5 * 0.5 * 0.5 * 32767, rel=0.01)


@pytest.mark.parametrize(
    ("topic", "payload", "code", "request_id"),
    [
        ("say", b"\xff\xfe", "invalid_utf8", None),
        ("say", b'{"text": "unterminated', "invalid_json", None),
        ("say", b"", "empty_text", None),
        ("say", b'{"text": 42, "id": "bad-type"}', "wrong_type", "bad-type"),
        ("say", b'{"text": "hi", "id": "loud", "volume": 7}', "bad_value", "loud"),
        ("say", b'{"text": "hi", "id": "who", "voice": "nobody"}', "unknown_voice", "who"),
        ("say", ("x" * 201).encode(), "text_too_long", None),
        ("stop", b"not json", "invalid_json", None),
        ("stop", b'{"id": "ghost"}', "unknown_id", "ghost"),
        ("volume/set", b"2", "bad_value", None),
    ],
)
async def test_bad_input_becomes_an_error_event_and_the_next_message_works(
    daemon: Daemon, listener: Listener, topic: str, payload: bytes, code: str, request_id: str | None
) -> None:
    await listener.publish(topic, payload)
    error = await listener.event("error")
    assert error["code"] == code and error["id"] == request_id and error["message"]
    await listener.publish("say", json.dumps({"text": "still here", "id": "next"}))
    assert (await listener.end_of("next"))["event"] == "finished"


async def test_stop_topic_stops_everything(mosquitto: Broker, listener: Listener, tmp_path: Path) -> None:
    engine = FakeEngine(delay_s=0.05)
    task = asyncio.create_task(app.run(daemon_config(mosquitto, tmp_path / "o.wav"), engine))
    try:
        await listener.wait_for(lambda r: r.topic == f"{BASE}/status" and r.payload == b"online")
        await listener.publish("say", json.dumps({"text": "w " * 60, "id": "long"}))
        await listener.publish("say", json.dumps({"text": "later", "id": "later"}))
        await listener.event("started", "long")
        await listener.publish("stop", b"")
        assert (await listener.end_of("long"))["event"] == "stopped"
        assert (await listener.end_of("later"))["event"] == "stopped"
        await listener.until(lambda: listener.states("speaking")[-2:] == ["ON", "OFF"])
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def test_shutdown_publishes_offline_and_stops_open_requests(
    mosquitto: Broker, listener: Listener, tmp_path: Path
) -> None:
    engine = FakeEngine(delay_s=0.05)
    task = asyncio.create_task(app.run(daemon_config(mosquitto, tmp_path / "o.wav"), engine))
    await listener.wait_for(lambda r: r.topic == f"{BASE}/status" and r.payload == b"online")
    await listener.publish("say", json.dumps({"text": "w " * 60, "id": "cut"}))
    await listener.event("started", "cut")
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    stopped = await listener.end_of("cut")
    assert (stopped["event"], stopped["reason"]) == ("stopped", "shutdown")
    await listener.wait_for(lambda r: r.topic == f"{BASE}/status" and r.payload == b"offline")
    assert listener.states("speaking")[-1] == "OFF"
    async with listen(mosquitto) as late:
        status = await late.wait_for(lambda r: r.topic == f"{BASE}/status")
        assert (status.payload, status.retain) == (b"offline", True)


async def test_events_published_during_an_outage_arrive_after_the_reconnect(
    mosquitto: Broker, tmp_path: Path
) -> None:
    resume = asyncio.Event()

    async def held_back(seconds: float) -> None:  # the reconnect waits until the listener is there
        await resume.wait()

    config = MqttConfig(host=mosquitto.host, port=mosquitto.port, site=SITE)
    link = MqttLink(config, sleep=held_back)
    connected, offline = asyncio.Event(), asyncio.Event()
    link.on_offline.append(lambda reason: offline.set())
    task = asyncio.create_task(link.run(lambda *_: None, connected.set))
    try:
        await asyncio.wait_for(connected.wait(), TIMEOUT)
        mosquitto.stop()
        await asyncio.wait_for(offline.wait(), TIMEOUT)
        for i in range(3):
            link.publish_event(Event("queued", f"during-outage-{i}"))
        mosquitto.start()
        async with listen(mosquitto) as listener:
            resume.set()
            await listener.wait_for(lambda r: r.topic == f"{BASE}/status" and r.payload == b"online")
            for i in range(3):
                event = await listener.event("queued", f"during-outage-{i}")
                assert event["site"] == SITE
    finally:
        link.stop()
        await asyncio.wait_for(task, TIMEOUT)


async def test_reconnect_backoff_doubles_up_to_the_maximum_and_resets_after_a_connection(tmp_path: Path) -> None:
    """The waits between attempts, exactly: each drawn from [delay / 2, delay] (here its upper end),
    delay doubling from reconnect_min_s to reconnect_max_s; after a connection, back to the minimum."""
    broker = Broker(tmp_path)  # not started yet: every attempt is refused
    bounds: list[tuple[float, float]] = []
    waits: list[float] = []

    def upper_end(low: float, high: float) -> float:
        bounds.append((low, high))
        return high

    async def sleep(seconds: float) -> None:  # no wall time passes; the broker comes and goes here
        waits.append(seconds)
        if len(waits) == 6:
            await asyncio.to_thread(broker.start)
        elif len(waits) == 7:
            link.stop()

    config = MqttConfig(host=broker.host, port=broker.port, site=SITE, reconnect_min_s=0.25, reconnect_max_s=2.0)
    link = MqttLink(config, sleep=sleep, jitter=upper_end)
    connected = asyncio.Event()
    task = asyncio.create_task(link.run(lambda *_: None, connected.set))
    try:
        await asyncio.wait_for(connected.wait(), TIMEOUT)
        assert waits == [0.25, 0.5, 1.0, 2.0, 2.0, 2.0]
        assert bounds == [(w / 2, w) for w in waits]
        broker.stop()  # the connection is lost: the next wait starts from the minimum again
        await asyncio.wait_for(task, TIMEOUT)
        assert waits[6:] == [0.25] and bounds[6] == (0.125, 0.25)
    finally:
        link.stop()
        await asyncio.wait_for(task, TIMEOUT)
        broker.stop()


async def test_outbox_is_bounded_and_keeps_the_newest() -> None:
    link = MqttLink(MqttConfig(site=SITE), outbox_limit=3)
    for i in range(5):
        link.publish_event(Event("queued", f"r{i}"))
    assert [json.loads(o.payload)["id"] for o in link._outbox] == ["r2", "r3", "r4"]


async def test_last_will_publishes_offline_when_the_daemon_dies(mosquitto: Broker) -> None:
    script = (
        "import asyncio, sys\n"
        "from daemon.config import MqttConfig\n"
        "from daemon.mqtt import MqttLink\n"
        "async def main():\n"
        f"    link = MqttLink(MqttConfig(host='{mosquitto.host}', port={mosquitto.port}, site='{SITE}'))\n"
        "    await link.run(lambda *_: None, lambda: print('ready', flush=True))\n"
        "asyncio.run(main())\n"
    )
    with subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True) as process:
        try:
            assert process.stdout is not None
            assert (await asyncio.to_thread(process.stdout.readline)).strip() == "ready"
            process.send_signal(signal.SIGKILL)
            await asyncio.to_thread(process.wait, TIMEOUT)
        finally:
            if process.poll() is None:
                process.kill()
    async with listen(mosquitto) as watcher:  # the broker may notice the lost connection after this subscribes
        await watcher.wait_for(lambda r: r.topic == f"{BASE}/status" and r.payload == b"offline")
    async with listen(mosquitto) as late:
        status = await late.wait_for(lambda r: r.topic == f"{BASE}/status")
        assert (status.payload, status.retain) == (b"offline", True)
