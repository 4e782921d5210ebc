"""The Wyoming TTS server, driven by the wyoming package's own AsyncTcpClient against the in-process
daemon (FakeEngine, real broker): describe, one-shot and streaming synthesis, disconnects, several
clients, the connection limit, every kind of bad input, sharing the queue with MQTT, and audio
equal to what the local sink plays."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import wave
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import Broker, free_port
from fakes import FakeEngine
from harness import collecting, make_config, online_at, running
from wyoming.audio import AudioChunk, AudioStart, AudioStop
from wyoming.client import AsyncTcpClient
from wyoming.error import Error
from wyoming.event import Event
from wyoming.info import Describe, Info
from wyoming.tts import Synthesize, SynthesizeChunk, SynthesizeStart, SynthesizeStop, SynthesizeStopped, SynthesizeVoice

from daemon.config import Config, config_from_dict
from daemon.player import Sink, WavSink
from daemon.wyoming import SentenceBuffer, announced_host

TIMEOUT = 10.0


def wyoming_config(broker: Broker, tmp_path: Path, **wyoming: Any) -> tuple[Config, int]:
    port = free_port()
    base = make_config(broker, tmp_path)
    raw = {
        "mqtt": {"host": broker.host, "port": broker.port, "site": "res", "reconnect_min_s": 0.2},
        "audio": {"output": f"wav:{tmp_path / 'local.wav'}", "max_gain_db": 0},
        "speech": {"rate_limit_per_s": 0},
        "integrations": {"wyoming": {"enabled": True, "uri": f"tcp://127.0.0.1:{port}", "zeroconf": False,
                                     **wyoming}},
    }
    assert base.mqtt.site == "res"
    config = config_from_dict(raw)
    port = int(config.integrations.wyoming.uri.rpartition(":")[2])  # the caller's own uri, if any
    return config, port


@contextlib.asynccontextmanager
async def daemon(
    broker: Broker, tmp_path: Path, engine: FakeEngine, sink: Sink | None = None, **wyoming: Any
) -> AsyncIterator[int]:
    config, port = wyoming_config(broker, tmp_path, **wyoming)
    sink = sink or WavSink(tmp_path / "local.wav", engine.sample_rate)
    async with running(config, engine, sink) as task:
        deadline = time.monotonic() + TIMEOUT
        while True:
            try:
                _, writer = await asyncio.open_connection("127.0.0.1", port)
                writer.close()
                break
            except OSError:
                assert time.monotonic() < deadline and not task.done(), "the Wyoming server did not start"
                await asyncio.sleep(0.02)
        yield port


async def read(client: AsyncTcpClient) -> Event:
    event = await asyncio.wait_for(client.read_event(), TIMEOUT)
    assert event is not None, "the server closed the connection"
    return event


async def read_until(client: AsyncTcpClient, last: str) -> list[tuple[Event, float]]:
    """Events (with arrival times) up to and including the first of type `last`."""
    seen = []
    while True:
        event = await read(client)
        seen.append((event, time.monotonic()))
        if event.type == last:
            return seen


def pcm_of(events: list[tuple[Event, float]]) -> np.ndarray:
    return np.frombuffer(
        b"".join(AudioChunk.from_event(e).audio for e, _ in events if AudioChunk.is_type(e.type)), dtype="<i2"
    )


def types(events: list[tuple[Event, float]]) -> list[str]:
    return [e.type for e, _ in events]


async def wyoming_ids(collector: Any, count: int) -> list[str]:
    """The ids of the first `count` Wyoming requests, from their `queued` events."""

    def ids() -> list[str]:
        return [e["id"] for e in collector.events() if e["event"] == "queued" and e.get("source") == "wyoming"]

    await collector.until(lambda: len(ids()) >= count)
    return ids()[:count]


def client(port: int) -> AsyncTcpClient:
    return AsyncTcpClient("127.0.0.1", port)


def test_sentence_buffer_hands_out_complete_sentences_only() -> None:
    buffer = SentenceBuffer(300)
    assert buffer.add("Hello wor") == []
    assert buffer.add("ld. This is") == ["Hello world."]
    assert buffer.add(" the sec") == []
    assert buffer.add("ond one. ") == ["This is the second one."]
    assert buffer.add("Dr. Smith") == []  # an abbreviation does not end a sentence
    assert buffer.flush() == ["Dr. Smith"]
    assert buffer.flush() == []


async def test_describe_lists_the_voices_with_their_languages(mosquitto: Broker, tmp_path: Path) -> None:
    engine = FakeEngine(languages=("en", "de", "fr"), family="multilingual")
    async with daemon(mosquitto, tmp_path, engine) as port, client(port) as c:
        await c.write_event(Describe().event())
        info = Info.from_event(await read(c))
    (program,) = info.tts
    assert program.name == "chatterd" and program.installed and program.supports_synthesize_streaming
    assert program.attribution.url and program.version
    assert [v.name for v in program.voices] == list(engine.voices)
    assert all(v.languages == ["en", "de", "fr"] for v in program.voices)


async def test_one_shot_is_one_segment_sent_while_synthesis_runs(mosquitto: Broker, tmp_path: Path) -> None:
    engine = FakeEngine(delay_s=0.05)
    text = "First sentence here. And a second sentence follows it."
    async with collecting(mosquitto) as collector, daemon(mosquitto, tmp_path, engine) as port:
        await collector.until(lambda: bool(online_at(collector)))
        async with client(port) as c:
            await c.write_event(Synthesize(text=text).event())
            events = await read_until(c, "audio-stop")
        (request_id,) = await wyoming_ids(collector, 1)
        finished = await collector.event("finished", request_id)
    assert types(events).count("audio-start") == 1 and types(events).count("audio-stop") == 1
    assert types(events)[0] == "audio-start"
    start = AudioStart.from_event(events[0][0])
    assert (start.rate, start.width, start.channels) == (engine.sample_rate, 2, 1)
    assert len(engine.calls) == 2  # two sentences, one request
    first_chunk_at = next(t for e, t in events if AudioChunk.is_type(e.type))
    assert first_chunk_at < engine.returned_at[-1]  # not held back until synthesis ended
    assert len(pcm_of(events)) == engine.expected_samples(text)
    queued = next(e for e in collector.events(request_id) if e["event"] == "queued")
    assert queued["source"] == "wyoming" and finished["sentences"] == 2


async def test_voice_by_name_or_by_language(mosquitto: Broker, tmp_path: Path) -> None:
    engine = FakeEngine(languages=("en", "de"), family="multilingual")
    async with daemon(mosquitto, tmp_path, engine) as port, client(port) as c:
        await c.write_event(Synthesize(text="Hallo Welt.", voice=SynthesizeVoice(language="de_DE")).event())
        await read_until(c, "audio-stop")
        await c.write_event(Synthesize(text="Hi there.", voice=SynthesizeVoice(name="alice")).event())
        await read_until(c, "audio-stop")
    assert engine.languages_used == ["de", None] and engine.voices_used == ["default", "alice"]


async def test_streaming_speaks_each_sentence_as_soon_as_it_is_complete(mosquitto: Broker, tmp_path: Path) -> None:
    engine = FakeEngine(delay_s=0.01)
    async with daemon(mosquitto, tmp_path, engine) as port, client(port) as c:
        await c.write_event(SynthesizeStart(voice=SynthesizeVoice(name="alice")).event())
        for piece in ("Hello wor", "ld, this is the fir", "st. This is"):
            await c.write_event(SynthesizeChunk(text=piece).event())
        first = await read_until(c, "audio-stop")  # before the second sentence's end was sent
        assert engine.calls == ["Hello world, this is the first."]
        for piece in (" the sec", "ond one."):
            await c.write_event(SynthesizeChunk(text=piece).event())
        # The compatibility copy of the whole text inside the stream is ignored.
        await c.write_event(Synthesize(text="Hello world, this is the first. This is the second one.").event())
        await c.write_event(SynthesizeStop().event())
        rest = await read_until(c, "synthesize-stopped")
    assert types(first)[0] == "audio-start" and types(first).count("audio-stop") == 1
    assert types(rest).count("audio-start") == 1 and types(rest)[-2:] == ["audio-stop", "synthesize-stopped"]
    assert engine.calls == ["Hello world, this is the first.", "This is the second one."]
    assert engine.voices_used == ["alice", "alice"]


async def test_disconnect_mid_stream_cancels_synthesis_and_the_next_request_is_served(
    mosquitto: Broker, tmp_path: Path
) -> None:
    engine = FakeEngine(delay_s=0.05)
    async with collecting(mosquitto) as collector, daemon(mosquitto, tmp_path, engine) as port:
        await collector.until(lambda: bool(online_at(collector)))
        async with client(port) as c:
            await c.write_event(Synthesize(text="w " * 200).event())
            while not AudioChunk.is_type((await read(c)).type):
                pass
        (request_id,) = await wyoming_ids(collector, 1)
        stopped = await collector.end_of(request_id)
        assert stopped["event"] == "stopped" and stopped["reason"] == "disconnected"
        deadline = time.monotonic() + TIMEOUT
        while engine.running:
            assert time.monotonic() < deadline
            await asyncio.sleep(0.01)
        assert engine.cancelled[0] and engine.yielded[0] < 50
        async with client(port) as c:
            await c.write_event(Synthesize(text="Still here.").event())
            assert "audio-chunk" in types(await read_until(c, "audio-stop"))


async def test_two_clients_each_get_their_own_audio(mosquitto: Broker, tmp_path: Path) -> None:
    engine = FakeEngine(delay_s=0.01)
    async with daemon(mosquitto, tmp_path, engine) as port:

        async def ask(text: str) -> np.ndarray:
            async with client(port) as c:
                await c.write_event(Synthesize(text=text).event())
                return pcm_of(await read_until(c, "audio-stop"))

        one, two = await asyncio.gather(ask("one two three"), ask("four five"))
    assert len(one) == engine.expected_samples("one two three") and len(two) == engine.expected_samples("four five")


async def test_connection_limit(mosquitto: Broker, tmp_path: Path) -> None:
    async with daemon(mosquitto, tmp_path, FakeEngine(), max_connections=1) as port:
        await asyncio.sleep(0.2)  # the start-up probe's connection is gone
        async with client(port) as first:
            await first.write_event(Describe().event())
            assert Info.is_type((await read(first)).type)
            async with client(port) as second:
                error = Error.from_event(await read(second))
                assert error.code == "too_many_connections"
                assert await asyncio.wait_for(second.read_event(), TIMEOUT) is None  # closed
            await first.write_event(Describe().event())
            assert Info.is_type((await read(first)).type)


BAD: list[tuple[str, list[Event], str]] = [
    ("empty text", [Synthesize(text=" \u200b ").event()], "empty_text"),
    ("too long", [Synthesize(text="a" * 5001).event()], "text_too_long"),
    ("text not a string", [Event("synthesize", {"text": 5})], "wrong_type"),
    ("no text", [Event("synthesize", {})], "missing_field"),
    ("unknown voice", [Synthesize(text="Hi.", voice=SynthesizeVoice(name="bob")).event()], "unknown_voice"),
    ("unknown language", [Synthesize(text="Hi.", voice=SynthesizeVoice(language="xx")).event()],
     "unsupported_language"),
    ("chunk outside a stream", [SynthesizeChunk(text="Hi.").event()], "unexpected_event"),
    ("stop outside a stream", [SynthesizeStop().event()], "unexpected_event"),
    ("start inside a stream", [SynthesizeStart().event(), SynthesizeStart().event()], "unexpected_event"),
    ("stream with unknown voice", [SynthesizeStart(voice=SynthesizeVoice(name="bob")).event()], "unknown_voice"),
]


@pytest.mark.parametrize("name", [name for name, _, _ in BAD])
async def test_bad_input_gets_an_error_and_the_connection_stays_usable(
    mosquitto: Broker, tmp_path: Path, name: str
) -> None:
    events, code = next((e, c) for n, e, c in BAD if n == name)
    engine = FakeEngine()
    async with daemon(mosquitto, tmp_path, engine) as port, client(port) as c:
        for event in events:
            await c.write_event(event)
        while True:
            reply = await read(c)
            if Error.is_type(reply.type):
                break
        error = Error.from_event(reply)
        assert error.code == code and error.text
        if events[0].type == "synthesize":  # a one-shot always ends with audio-stop
            assert types(await read_until(c, "audio-stop"))[-1] == "audio-stop"
        if events[0].type == "synthesize-start":
            await c.write_event(SynthesizeStop().event())
            await read_until(c, "synthesize-stopped")
        await c.write_event(Synthesize(text="Fine again.").event())
        assert "audio-chunk" in types(await read_until(c, "audio-stop"))


async def test_malformed_frames_get_errors_and_the_connection_stays_usable(mosquitto: Broker, tmp_path: Path) -> None:
    async with daemon(mosquitto, tmp_path, FakeEngine()) as port:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            for line in (b"not json\n", b'{"data": {}}\n', b"[1, 2]\n", b'{"type": "describe", "data_length": "x"}\n'):
                writer.write(line)
                await writer.drain()
                header = json.loads(await asyncio.wait_for(reader.readline(), TIMEOUT))
                assert header["type"] == "error"
                data = json.loads(await reader.readexactly(header["data_length"]))
                assert data["code"] == "malformed_event"
            writer.write(b'{"type": "describe"}\n')
            await writer.drain()
            assert json.loads(await asyncio.wait_for(reader.readline(), TIMEOUT))["type"] == "info"
        finally:
            writer.close()


async def test_mqtt_announcements_share_the_queue_and_wyoming_goes_first(mosquitto: Broker, tmp_path: Path) -> None:
    engine = FakeEngine(delay_s=0.02)
    async with collecting(mosquitto) as collector, daemon(mosquitto, tmp_path, engine) as port:
        await collector.until(lambda: bool(online_at(collector)))
        async with client(port) as c:
            await c.write_event(Synthesize(text="w " * 30).event())
            while not AudioChunk.is_type((await read(c)).type):
                pass
            # An MQTT announcement arriving while the Wyoming request runs is queued behind it ...
            await collector.say("queued announcement", "mqtt-1", priority="low")
            await collector.say("another announcement", "mqtt-2", priority="low")
            queued = await collector.event("queued", "mqtt-1")
            assert queued["source"] == "mqtt"
            # ... and a second Wyoming request (high by default) goes ahead of both low ones.
            await c.write_event(Synthesize(text="the answer").event())
            await read_until(c, "audio-stop")
            await read_until(c, "audio-stop")
        for request_id in ("mqtt-1", "mqtt-2"):
            assert (await collector.end_of(request_id))["event"] == "finished"
    assert engine.calls == [("w " * 30).strip(), "the answer", "queued announcement", "another announcement"]


async def test_audio_over_wyoming_equals_what_the_local_sink_plays(mosquitto: Broker, tmp_path: Path) -> None:
    engine = FakeEngine()
    text = "Exactly the same samples. On both paths."
    async with collecting(mosquitto) as collector, daemon(mosquitto, tmp_path, engine) as port:
        await collector.until(lambda: bool(online_at(collector)))
        await collector.say(text, "local")
        assert (await collector.end_of("local"))["event"] == "finished"
        async with client(port) as c:
            await c.write_event(Synthesize(text=text).event())
            remote = pcm_of(await read_until(c, "audio-stop"))
    with wave.open(str(tmp_path / "local.wav"), "rb") as wav:
        local = np.frombuffer(wav.readframes(wav.getnframes()), dtype="<i2")
    assert len(remote) == engine.expected_samples(text)
    np.testing.assert_array_equal(remote, local)


async def test_describe_without_a_broker_is_still_served(tmp_path: Path) -> None:
    # MQTT down does not take Wyoming down: the server listens from the start.
    broker = Broker(tmp_path)  # never started
    async with daemon(broker, tmp_path, FakeEngine()) as port, client(port) as c:
        await c.write_event(Describe().event())
        assert Info.is_type((await read(c)).type)


async def test_bench_measures_first_audio_and_rtf(mosquitto: Broker, tmp_path: Path) -> None:
    from bench import wyoming as bench

    engine = FakeEngine(delay_s=0.01)
    async with daemon(mosquitto, tmp_path, engine) as port:
        one = await bench.one_shot("127.0.0.1", port, bench.FIRST)
        stream = await bench.streaming("127.0.0.1", port, words_per_s=50.0)
        mqtt = await bench.mqtt_first_audio(mosquitto.host, mosquitto.port, "res", bench.FIRST, 0)
    assert 0 < one["first_audio_s"] < one["total_s"] and one["rtf"] > 0
    assert 0 < stream["first_audio_s"] and stream["first_audio_before_rest_sent"]
    assert mqtt > 0


def test_the_announced_address_is_one_the_server_listens_on() -> None:
    assert announced_host("0.0.0.0") is None and announced_host("") is None and announced_host(None) is None
    assert announced_host("::") is None and announced_host("fd00::2") is None  # the library announces IPv4
    assert announced_host("192.0.2.7") == "192.0.2.7" and announced_host("127.0.0.1") == "127.0.0.1"
    assert announced_host("speaker.local") is None


@pytest.mark.parametrize(("listen", "announced"), [("0.0.0.0", None), ("127.0.0.1", "127.0.0.1")])
async def test_zeroconf_announces_the_listening_address(
    mosquitto: Broker, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture,
    listen: str, announced: str | None,
) -> None:
    import wyoming.zeroconf

    seen: list[tuple[int, str | None, str | None]] = []

    class Announcer:
        def __init__(self, port: int, name: str | None = None, host: str | None = None) -> None:
            seen.append((port, name, host))
            self.host = host or "192.0.2.2"
            self._aiozc = self

        async def register_server(self) -> None:
            pass

        async def async_close(self) -> None:
            pass

    monkeypatch.setattr(wyoming.zeroconf, "HomeAssistantZeroconf", Announcer)
    port = free_port()
    async with daemon(mosquitto, tmp_path, FakeEngine(), uri=f"tcp://{listen}:{port}", zeroconf=True,
                      zeroconf_name="kitchen"):
        pass
    assert seen == [(port, "kitchen", announced)]
    assert ("loopback interface only" in caplog.text) == (listen == "127.0.0.1")


def test_audio_stop_type_is_the_one_the_client_waits_for() -> None:
    assert AudioStop().event().type == "audio-stop" and SynthesizeStopped().event().type == "synthesize-stopped"
