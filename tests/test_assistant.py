"""Voice-assistant behaviour over a real mosquitto, with the fake engine and the daemon in-process.

Queue order and interrupts, stop freeing the engine, queue-full and duplicate drops, sentence
pipelining, the speaking state, the phrase cache, per-request voice and volume with loudness
levelling, run-time voice/volume controls, Rhasspy Hermes and Home Assistant discovery, and a
mixed run in which every request must end exactly once.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest
from conftest import Broker
from fakes import FAIL, FakeEngine, PacedSink
from harness import END_EVENTS, Listener, Received, listening

from daemon import app
from daemon.config import config_from_dict
from daemon.loudness import dbfs, voiced_level

SITE = "assist"
BASE = f"chatterd/{SITE}"
TIMEOUT = 15.0


def listen(broker: Broker) -> contextlib.AbstractAsyncContextManager[Listener]:
    """An MQTT client subscribed to `#`: records every message with its arrival time."""
    return listening(broker, "#", base=BASE, timeout=TIMEOUT)


class TimedSink(PacedSink):
    """A PacedSink that also records (start, end) monotonic times of every write."""

    def __init__(self, sample_rate: int = 24000, pace: float = 1.0) -> None:
        super().__init__(sample_rate, pace)
        self.times: list[tuple[float, float]] = []

    def write(self, pcm: npt.NDArray[np.float32]) -> None:
        start = time.monotonic()
        super().write(pcm)
        self.times.append((start, time.monotonic()))

    def gaps(self) -> list[float]:
        """Idle time of the device between consecutive writes (an underrun on a real device)."""
        return [b[0] - a[1] for a, b in zip(self.times, self.times[1:], strict=False)]


@dataclass
class Running:
    task: asyncio.Task[None]
    engine: FakeEngine
    sink: PacedSink
    listener: Listener
    config: dict[str, Any] = field(default_factory=dict)

    async def stop(self) -> None:
        self.task.cancel()
        await asyncio.gather(self.task, return_exceptions=True)


@pytest.fixture
async def start(mosquitto: Broker, tmp_path: Path) -> AsyncIterator[Callable[..., Any]]:
    """start(engine=..., sink=..., **sections) -> Running: app.run in-process, once it is online."""
    running: list[Running] = []
    stack = contextlib.AsyncExitStack()

    async def make(
        engine: FakeEngine | None = None, sink: PacedSink | None = None, **sections: dict[str, Any]
    ) -> Running:
        engine = engine or FakeEngine()
        sink = sink or PacedSink(engine.sample_rate, pace=0.0)
        listener = await stack.enter_async_context(listen(mosquitto))
        raw: dict[str, Any] = {
            "mqtt": {"host": mosquitto.host, "port": mosquitto.port, "site": SITE},
            "speech": {"rate_limit_per_s": 0},
            "audio": {"max_gain_db": 0},
        }
        for name, values in sections.items():
            raw[name] = {**raw.get(name, {}), **values}
        task = asyncio.create_task(app.run(config_from_dict(raw), engine, sink))
        handle = Running(task, engine, sink, listener, raw)
        running.append(handle)
        await listener.wait_for(lambda r: r.topic == f"{BASE}/status" and r.payload == b"online")
        return handle

    yield make
    for handle in running:
        await handle.stop()
    await stack.aclose()


# --- queue: priorities, interrupt, stop, drops ----------------------------------------------------


async def test_priorities_and_interrupt_order(start: Callable[..., Any]) -> None:
    engine = FakeEngine(delay_s=0.02)
    d = await start(engine, PacedSink(engine.sample_rate, pace=0.3))
    ear = d.listener
    await ear.say("w " * 20, "first")
    await ear.event("started", "first")
    await ear.say("low one", "l1", priority="low")
    await ear.say("normal one", "n1")
    await ear.say("high one", "h1", priority="high")
    await ear.say("normal two", "n2")
    await ear.say("doorbell now", "bell", interrupt=True, priority="low")
    for request_id in ("bell", "h1", "n1", "n2", "l1"):
        assert (await ear.end_of(request_id))["event"] == "finished"
    first = await ear.end_of("first")
    assert (first["event"], first["reason"]) == ("stopped", "interrupted")
    assert engine.calls[1:] == ["doorbell now", "high one", "normal one", "normal two", "low one"]


async def test_stop_mid_sentence_frees_the_engine_within_one_chunk(start: Callable[..., Any]) -> None:
    engine = FakeEngine(delay_s=0.05)
    d = await start(engine, PacedSink(engine.sample_rate))
    ear = d.listener
    text = " ".join(["This sentence has quite a few words in it to speak."] * 4)
    await ear.say(text, "long")
    await ear.say("Waiting for my turn.", "next")
    await ear.event("started", "long")
    await ear.publish("stop", b"")
    stopped = await ear.end_of("long")
    assert stopped["event"] == "stopped" and stopped["reason"] == "stop"
    assert (await ear.end_of("next"))["event"] == "stopped"
    deadline = time.monotonic() + 2
    while engine.running and time.monotonic() < deadline:
        await asyncio.sleep(0.005)
    assert not engine.running
    stop_received = next(r.at for r in ear.received if r.topic == f"{BASE}/stop")
    # The engine returned within one chunk's synthesis time (50 ms) of the stop, plus slack.
    assert engine.returned_at[0] - stop_received < 0.05 + 0.1
    assert engine.cancelled[0] and engine.calls == ["This sentence has quite a few words in it to speak."]
    await ear.say("After the stop.", "after")
    assert (await ear.end_of("after"))["event"] == "finished"


async def test_cancel_by_id_queued_or_speaking(start: Callable[..., Any]) -> None:
    engine = FakeEngine(delay_s=0.03)
    d = await start(engine, PacedSink(engine.sample_rate))
    ear = d.listener
    await ear.say("w " * 30, "speaking")
    await ear.say("Queued words.", "queued")
    await ear.say("Kept words.", "kept")
    await ear.event("started", "speaking")
    await ear.publish("stop", json.dumps({"id": "queued"}))
    assert (await ear.end_of("queued"))["event"] == "stopped"
    await ear.publish("stop", json.dumps({"id": "speaking"}))
    assert (await ear.end_of("speaking"))["event"] == "stopped"
    assert (await ear.end_of("kept"))["event"] == "finished"
    assert engine.calls[1:] == ["Kept words."]


async def test_queue_full_and_duplicates_are_dropped(start: Callable[..., Any]) -> None:
    engine = FakeEngine(delay_s=0.03)
    d = await start(engine, PacedSink(engine.sample_rate), speech={"queue_size": 2})
    ear = d.listener
    await ear.say("w " * 20, "speaking")
    await ear.event("started", "speaking")
    await ear.say("The garage is open.", "g1")
    await ear.say("The garage is open.", "g2")  # same text as a queued request
    await ear.say("The garage is open.", "g3", voice="alice")  # another voice: not a duplicate
    await ear.say("One more.", "full")
    dup = await ear.end_of("g2")
    assert (dup["event"], dup["reason"], dup["duplicate_of"]) == ("dropped", "duplicate", "g1")
    full = await ear.end_of("full")
    assert (full["event"], full["reason"]) == ("dropped", "queue_full")
    assert ear.names("full") == ["dropped"] and ear.names("g2") == ["dropped"]
    await ear.publish("stop", json.dumps({"id": "speaking"}))
    assert (await ear.end_of("g1"))["event"] == "finished"
    assert (await ear.end_of("g3"))["event"] == "finished"
    assert engine.calls[1:] == ["The garage is open.", "The garage is open."]


async def test_duplicates_are_queued_when_dedupe_is_off(start: Callable[..., Any]) -> None:
    engine = FakeEngine(delay_s=0.02)
    d = await start(engine, PacedSink(engine.sample_rate, pace=0.5), speech={"dedupe": False})
    ear = d.listener
    await ear.say("w " * 10, "speaking")
    await ear.event("started", "speaking")
    await ear.say("Twice.", "t1")
    await ear.say("Twice.", "t2")
    for request_id in ("t1", "t2"):
        assert (await ear.end_of(request_id))["event"] == "finished"


# --- long text --------------------------------------------------------------------------------------


@pytest.mark.parametrize("grouped", [False, True], ids=["per-sentence", "grouped"])
async def test_sentences_are_pipelined_without_gaps(start: Callable[..., Any], grouped: bool) -> None:
    """Each engine call costs 150 ms before its first chunk; played in real time, none of it is heard.

    Without pipelining every call boundary would be a ~150 ms underrun. With `group_sentences`
    (the default) the first sentence is one call and the three after it (99 characters) another.
    """
    engine = FakeEngine(delay_s=0.005, first_delay_s=0.15)
    sink = TimedSink(engine.sample_rate)
    d = await start(engine, sink, speech={"group_sentences": grouped})
    ear = d.listener
    sentence = "Six words make one sentence here."
    await ear.say(" ".join([sentence] * 4), "long")
    finished = await ear.end_of("long")
    assert ear.names("long") == ["queued", "started", "finished"]
    calls = [sentence, " ".join([sentence] * 3)] if grouped else [sentence] * 4
    assert finished["sentences"] == len(calls) and engine.calls == calls
    assert finished["audio_s"] == pytest.approx(24 * engine.chunk_s, abs=1e-3)
    gaps = sink.gaps()
    assert len(gaps) == 23
    print(f"\nlargest gap between writes, paced fake, 4 sentences: {max(gaps) * 1000:.1f} ms")
    assert max(gaps) < 0.04, gaps
    # No silence inserted between sentences in the audio itself (longest run under 1e-3: 1 sample).
    samples = sink.samples()
    quiet = np.abs(samples) < 1e-3
    longest = max((len(run) for run in "".join("1" if q else "0" for q in quiet).split("0")), default=0)
    assert longest < int(0.005 * engine.sample_rate)


async def test_speaking_is_on_and_off_once_per_queue_run(start: Callable[..., Any]) -> None:
    engine = FakeEngine(delay_s=0.01)
    d = await start(engine, PacedSink(engine.sample_rate, pace=0.5))
    ear = d.listener
    for i in range(3):
        await ear.say(f"Request number {i}.", f"r{i}")
    for i in range(3):
        await ear.end_of(f"r{i}")
    await ear.wait_for(lambda r: [x.payload for x in ear.on(f"{BASE}/speaking")][-2:] == [b"ON", b"OFF"])
    await ear.barrier()  # no second ON/OFF pair is still on its way
    states = [r.payload for r in ear.on(f"{BASE}/speaking")]
    assert states == [b"OFF", b"ON", b"OFF"]  # the start's OFF, then one ON/OFF for the whole run
    await ear.say("A second run.", "again")
    await ear.end_of("again")
    await ear.wait_for(lambda r: len(ear.on(f"{BASE}/speaking")) == 5)
    assert [r.payload for r in ear.on(f"{BASE}/speaking")][3:] == [b"ON", b"OFF"]


# --- phrase cache, voices, volume -------------------------------------------------------------


async def test_phrase_cache_hit_plays_at_once_and_identically(
    start: Callable[..., Any], tmp_path: Path
) -> None:
    engine = FakeEngine(first_delay_s=0.3)
    d = await start(engine, speech={"cache": {"dir": str(tmp_path / "phrases")}})
    ear = d.listener
    text = "The washing machine is done. Please empty it."
    await ear.say(text, "first")
    first = await ear.end_of("first")
    first_len = len(d.sink.samples())
    await ear.say(text, "second")
    second = await ear.end_of("second")
    started = [await ear.event("started", rid) for rid in ("first", "second")]
    assert (first["cached"], second["cached"]) == (False, True)
    assert (started[0]["cached"], started[1]["cached"]) == (False, True)
    assert second["sentences"] == 2 and engine.calls == ["The washing machine is done.", "Please empty it."]
    assert started[0]["first_audio_ms"] > 300
    assert started[1]["first_audio_ms"] < started[0]["first_audio_ms"] / 5
    print(f"\nfake: first_audio_ms {started[0]['first_audio_ms']}, cached {started[1]['first_audio_ms']}")
    samples = d.sink.samples()
    a, b = samples[:first_len], samples[first_len:]
    assert len(a) == len(b) and np.array_equal(np.round(a * 32767), np.round(b * 32767))
    assert len(list((tmp_path / "phrases").glob("*.wav"))) == 2


async def test_voice_and_volume_per_request_with_levelling(start: Callable[..., Any]) -> None:
    engine = FakeEngine(amplitudes={"default": 0.5, "alice": 0.05})
    d = await start(engine, audio={"target_dbfs": -20.0, "max_gain_db": 20.0})
    ear = d.listener
    segments = []
    for request_id, fields in (("loud", {}), ("quiet", {"voice": "alice"}), ("half", {"volume": 0.5})):
        before = len(d.sink.samples())
        await ear.say("w " * 20, request_id, **fields)
        assert (await ear.end_of(request_id))["event"] == "finished"
        segments.append(d.sink.samples()[before:])
    assert engine.voices_used == ["default", "alice", "default"]
    levels = [dbfs(voiced_level(s, engine.sample_rate)[0]) for s in segments]
    # Voices 20 dB apart come out at the same level (-20 dBFS); volume 0.5 is 6 dB down.
    assert levels[0] == pytest.approx(-20.0, abs=0.5) and levels[1] == pytest.approx(-20.0, abs=0.5)
    assert levels[2] - levels[0] == pytest.approx(-6.02, abs=0.5)


async def test_voice_and_volume_controls_publish_retained_state(
    start: Callable[..., Any], mosquitto: Broker
) -> None:
    engine = FakeEngine()
    d = await start(engine)
    ear = d.listener
    await ear.wait_for(lambda r: r.topic == f"{BASE}/voice" and r.payload == b"default")
    await ear.wait_for(lambda r: r.topic == f"{BASE}/volume" and r.payload == b"1")
    await ear.publish("voice/set", "alice")
    await ear.publish("volume/set", "0.4")
    await ear.wait_for(lambda r: r.topic == f"{BASE}/voice" and r.payload == b"alice" and not r.retain)
    await ear.wait_for(lambda r: r.topic == f"{BASE}/volume" and r.payload == b"0.4")
    await ear.say("Who speaks?", "who")
    await ear.end_of("who")
    assert engine.voices_used == ["alice"]
    await ear.publish("voice/set", "bob")
    error = await ear.wait_for(lambda r: r.topic == f"{BASE}/event" and r.json()["event"] == "error")
    assert error.json()["code"] == "unknown_voice" and "alice" in error.json()["message"]
    async with listen(mosquitto) as late:  # a client connecting now sees the retained state
        voice = await late.wait_for(lambda r: r.topic == f"{BASE}/voice")
        assert (voice.payload, voice.retain) == (b"alice", True)


# --- Rhasspy / Hermes ---------------------------------------------------------------------------------


async def test_hermes_round_trip(start: Callable[..., Any]) -> None:
    engine = FakeEngine(delay_s=0.01)
    d = await start(engine, integrations={"hermes": {"enabled": True}})
    ear = d.listener
    # As Rhasspy's dialogue manager sends it (camelCase), and as rhasspy-hermes' CLI does (snake_case).
    await ear.publish(
        "hermes/tts/say",
        '{"text": "Turning on the kitchen light.", "siteId": "assist", "id": "h-1", '
        '"sessionId": "s-1", "lang": "en_US", "volume": 0.5}',
    )
    await ear.publish(
        "hermes/tts/say",
        '{"text": "Snake case works too.", "site_id": "assist", "id": "h-2", "session_id": "s-2"}',
    )
    await ear.publish("hermes/tts/say", '{"text": "Not for me.", "siteId": "bedroom", "id": "h-3"}')
    await ear.publish("hermes/tts/say", f'{{"text": "{FAIL} broken words", "siteId": "assist", "id": "h-4"}}')
    await ear.publish("hermes/tts/say", '{"text": "", "siteId": "assist", "id": "h-5", "sessionId": ""}')
    finished = [await ear.wait_for(_say_finished(i)) for i in ("h-1", "h-2", "h-4", "h-5")]
    one, two, four, five = (r.json() for r in finished)
    assert one == {"id": "h-1", "siteId": "assist", "sessionId": "s-1"}
    assert two == {"id": "h-2", "site_id": "assist", "session_id": "s-2"}  # answered as asked
    assert (four["id"], five["id"], five["sessionId"]) == ("h-4", "h-5", "")
    # sayFinished comes after the playback ended (the request's end event).
    end_event = await ear.end_of("h-1")
    end = next(r for r in ear.received if r.topic == f"{BASE}/event" and r.json() == end_event)
    assert ear.received.index(end) < ear.received.index(finished[0])
    assert (await ear.end_of("h-1"))["event"] == "finished"
    # Errors: hermes/error/tts first, then sayFinished.
    for request_id, position in (("h-4", 2), ("h-5", 3)):
        error = await ear.wait_for(
            lambda r, i=request_id: r.topic == "hermes/error/tts" and r.json()["context"] == i  # type: ignore[misc]
        )
        assert error.json()["siteId"] == "assist" and error.json()["error"]
        assert ear.received.index(error) < ear.received.index(finished[position])
    assert (await ear.end_of("h-4"))["code"] == "synthesis_failed"
    assert (await ear.end_of("h-5"))["code"] == "empty_text"
    # Barrier: a say for this site published after h-3 (rejected at once, no engine) is answered,
    # so an answer to h-3 would have come before it.
    await ear.publish("hermes/tts/say", '{"text": "", "siteId": "assist", "id": "barrier"}')
    await ear.wait_for(_say_finished("barrier"))
    assert not [r for r in ear.on("hermes/tts/sayFinished") if r.json()["id"] == "h-3"]
    assert "Not for me." not in engine.calls
    assert engine.calls[:2] == ["Turning on the kitchen light.", "Snake case works too."]
    assert np.abs(d.sink.written[0]).max() == pytest.approx(0.5 * 0.5, rel=0.01)  # the say's volume


def _say_finished(hermes_id: str) -> Callable[[Received], bool]:
    return lambda r: r.topic == "hermes/tts/sayFinished" and r.json()["id"] == hermes_id


# --- Home Assistant ---------------------------------------------------------------------------------------

# Required keys per platform (HA core's MQTT platform schemas) and the topics they must point at.
HA_REQUIRED = {
    "notify": {"command_topic": f"{BASE}/say"},
    "binary_sensor": {"state_topic": f"{BASE}/speaking"},
    "button": {"command_topic": f"{BASE}/stop"},
    "number": {"command_topic": f"{BASE}/volume/set", "state_topic": f"{BASE}/volume"},
    "select": {"command_topic": f"{BASE}/voice/set", "state_topic": f"{BASE}/voice"},
    "event": {"state_topic": f"{BASE}/event"},
}
DISCOVERY_TOPIC = re.compile(r"^homeassistant/(\w+)/([a-zA-Z0-9_-]+)/config$")


def _configs(listener: Listener) -> dict[str, Received]:
    """Latest discovery message per topic."""
    latest: dict[str, Received] = {}
    for r in listener.received:
        if r.topic.startswith("homeassistant/") and r.topic.endswith("/config"):
            latest[r.topic] = r
    return latest


async def test_home_assistant_discovery_payloads(start: Callable[..., Any], mosquitto: Broker) -> None:
    engine = FakeEngine(delay_s=0.01, voices=("default", "alice"))
    ha = {"enabled": True, "device_name": "Kitchen speaker"}
    d = await start(engine, integrations={"home_assistant": ha})
    ear = d.listener
    await ear.wait_for(lambda r: len(_configs(ear)) == 6)
    configs = _configs(ear)
    unique_ids = set()
    for topic, message in configs.items():
        match = DISCOVERY_TOPIC.match(topic)
        assert match, topic
        platform, object_id = match.groups()
        config = message.json()
        for key, value in HA_REQUIRED[platform].items():
            assert config[key] == value, (platform, key)
        assert config["unique_id"] == object_id and config["name"]
        unique_ids.add(config["unique_id"])
        assert config["availability"] == [
            {"topic": f"{BASE}/status", "payload_available": "online", "payload_not_available": "offline"}
        ]
        device = config["device"]
        assert device["identifiers"] == ["chatterd_assist_device"] and device["name"] == "Kitchen speaker"
        assert device["manufacturer"] and device["model"] and device["sw_version"]
        assert config["origin"]["name"] == "chatterd" and config["origin"]["sw_version"]
    by_platform = {t.split("/")[1]: m.json() for t, m in configs.items()}
    assert len(unique_ids) == 6 and set(by_platform) == set(HA_REQUIRED)
    sensor = by_platform["binary_sensor"]
    assert (sensor["payload_on"], sensor["payload_off"], sensor["device_class"]) == ("ON", "OFF", "sound")
    assert by_platform["number"]["min"] == 0 and by_platform["number"]["max"] == 1
    assert by_platform["select"]["options"] == ["default", "alice"]
    assert set(by_platform["event"]["event_types"]) == {"queued", "started", *END_EVENTS}
    async with listen(mosquitto) as late:  # the configs are retained
        await late.wait_for(lambda r: len(_configs(late)) == 6)
        assert all(r.retain for r in _configs(late).values())
    # The entities work: notify's raw string is spoken, the button's payload stops it.
    await ear.client.publish(by_platform["notify"]["command_topic"], "w " * 60, qos=1)
    started = await ear.wait_for(lambda r: r.topic == f"{BASE}/event" and r.json()["event"] == "started")
    button = by_platform["button"]
    await ear.client.publish(button["command_topic"], button["payload_press"], qos=1)
    assert (await ear.end_of(started.json()["id"]))["event"] == "stopped"
    # HA's birth message makes the daemon announce everything again.
    before = len([r for r in ear.received if r.topic.endswith("/config")])
    await ear.publish("homeassistant/status", "online")
    await ear.wait_for(lambda r: len([x for x in ear.received if x.topic.endswith("/config")]) == before + 6)
    await ear.publish("homeassistant/status", "offline")
    await ear.barrier()  # handled after the offline: announcements for it would have come first
    assert len([r for r in ear.received if r.topic.endswith("/config")]) == before + 6


async def test_home_assistant_entities_are_removed_when_disabled(
    start: Callable[..., Any], mosquitto: Broker
) -> None:
    first = await start(integrations={"home_assistant": {"enabled": True}})
    await first.listener.wait_for(lambda r: len(_configs(first.listener)) == 6)
    await first.stop()
    async with listen(mosquitto) as before:
        await before.wait_for(lambda r: len(_configs(before)) == 6)  # retained on the broker
    second = await start()  # the integration is disabled by default
    await second.listener.wait_for(
        lambda r: len([x for x in _configs(second.listener).values() if x.payload == b""]) == 6
    )
    async with listen(mosquitto) as after:
        await after.wait_for(lambda r: r.topic == f"{BASE}/status")
        await after.broker_barrier()  # behind every retained message the subscription gets
        assert _configs(after) == {}


# --- every request ends exactly once --------------------------------------------------------------


async def test_mixed_run_every_request_ends_exactly_once(start: Callable[..., Any]) -> None:
    engine = FakeEngine(delay_s=0.004)
    d = await start(
        engine, PacedSink(engine.sample_rate, pace=0.5), speech={"queue_size": 6},
        integrations={"hermes": {"enabled": True}},
    )
    ear = d.listener
    ids: list[str] = []
    for i in range(60):
        rid = f"m{i}"
        ids.append(rid)
        kind = i % 10
        if kind == 3:
            await ear.say(f"{FAIL} failing words {i}", rid)  # error from the engine
        elif kind == 5:
            await ear.say(f"Bad voice {i}.", rid, voice="nobody")  # rejected
        elif kind == 6:
            await ear.publish("say", json.dumps({"text": "x", "id": rid, "volume": 3}))  # bad value
        elif kind == 7:
            await ear.say(f"Interrupting {i}.", rid, interrupt=True)
        elif kind == 8:
            hermes = {"text": f"Hermes {i}.", "siteId": SITE, "id": rid}
            await ear.publish("hermes/tts/say", json.dumps(hermes))
        elif kind == 9:
            await ear.say("The same words again.", rid)  # duplicates while queued
        else:
            priority = ("low", "normal", "high")[i % 3]
            await ear.say(f"Normal request number {i} with a few words.", rid, priority=priority)
        if i % 12 == 11:
            await ear.publish("stop", json.dumps({"id": f"m{i - 2}"}))
        if i == 40:
            await ear.publish("stop", b"")
        await asyncio.sleep(0.01)  # requests arrive over time, while earlier ones are being spoken
    for rid in ids:
        await ear.end_of(rid, timeout=30)
    await ear.barrier()  # a second end event already emitted for any of them has arrived
    kinds: dict[str, int] = {}
    for rid in ids:
        ends = [e for e in ear.events(rid) if e["event"] in END_EVENTS and e.get("code") != "unknown_id"]
        assert len(ends) == 1, (rid, ear.events(rid))
        kinds[ends[0]["event"]] = kinds.get(ends[0]["event"], 0) + 1
    print(f"\nmixed run of {len(ids)} requests, end events: {kinds}")
    assert set(kinds) == set(END_EVENTS)  # the run covered every way to end
    hermes_finished = [r.json()["id"] for r in ear.on("hermes/tts/sayFinished")]
    assert sorted(hermes_finished) == sorted(f"m{i}" for i in range(60) if i % 10 == 8)
