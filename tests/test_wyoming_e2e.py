"""End to end for the Wyoming server: `chatterd run` with the default model (Turbo, random weights)
and integrations.wyoming on a free port, real mosquitto, PortAudio through an ALSA file PCM, and the
wyoming package's own AsyncTcpClient talking to it as Home Assistant does.

One daemon serves the module (the tests run in file order). Its settings differ from the defaults
where a check needs it:
* `tts.max_chunk_tokens` = `tts.chunk_tokens`: the chunk schedule sizes chunks from measured
  timings, and the streaming vocoder's output depends on where chunks end, so two requests of
  the same text are sample-equal only with the schedule pinned (first chunk, then fixed ones);
* `audio.max_gain_db: 0` (levelling off): the leveller learns each voice's level over everything
  it has said, so the same text spoken twice gets two different gains by design. It applies to
  both destinations alike, before they part (daemon/utterance.py), and the output stage
  (daemon/player.py `output_stage`, `to_int16`) is the same code on both paths;
* `speech.cache.dir`: a phrase cache, to show that a cached replay is identical too;
* Wyoming on `tcp://0.0.0.0:PORT` with zeroconf on under a name unique to this run, so the
  announced (LAN) address is one the server listens on.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import socket
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest
from conftest import CAPTURE_RATE, free_port, in_ci, read_raw_int16
from harness import Listener, Received, listening
from model_fixtures import fast_tts_settings
from test_e2e import BASE, Daemon, _expected_audio_s, start_daemon, stop_daemon, write_tone_wav
from wyoming.audio import AudioChunk, AudioStart
from wyoming.client import AsyncTcpClient
from wyoming.error import Error
from wyoming.event import Event
from wyoming.info import Describe, Info
from wyoming.tts import Synthesize, SynthesizeChunk, SynthesizeStart, SynthesizeStop, SynthesizeVoice

pytestmark = [pytest.mark.model, pytest.mark.e2e]

TIMEOUT = 300.0  # one request on a busy 2-core CPU
ZEROCONF_TYPE = "_wyoming._tcp.local."


@dataclass
class WyomingDaemon:
    daemon: Daemon
    port: int
    cache_dir: Path
    zeroconf_name: str

    def log(self) -> str:
        return self.daemon.log()


@pytest.fixture(scope="module")
def wy(checkpoint_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[WyomingDaemon]:
    root = tmp_path_factory.mktemp("wyoming-e2e")
    port = free_port()
    name = f"chatterd-e2e-{os.getpid()}"
    settings = fast_tts_settings(checkpoint_dir)
    tts = {
        **settings,
        "max_chunk_tokens": settings["chunk_tokens"],
        # One voice Turbo can use (>= 5 s) and one it cannot: only the first is offered.
        "voices": {"tone": str(write_tone_wav(root / "tone.wav", 6.0)),
                   "short": str(write_tone_wav(root / "short.wav", 3.0))},
    }
    extra: dict[str, dict[str, Any]] = {
        "audio": {"max_gain_db": 0},
        "speech": {"cache": {"dir": str(root / "cache")}},
        "integrations": {"wyoming": {"enabled": True, "uri": f"tcp://0.0.0.0:{port}", "zeroconf": True,
                                     "zeroconf_name": name}},
    }
    handle = start_daemon(tts, root, extra)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline or handle.process.poll() is not None:
                    pytest.fail(f"the Wyoming server does not listen on {port}:\n{handle.log()[-3000:]}")
                time.sleep(0.2)
        yield WyomingDaemon(handle, port, root / "cache", name)
    finally:
        stop_daemon(handle)


# --- helpers ---------------------------------------------------------------------------------

Timed = list[tuple[Event, float]]  # events with their arrival times (time.monotonic())


def client(port: int, host: str = "127.0.0.1") -> AsyncTcpClient:
    return AsyncTcpClient(host, port)


async def read(c: AsyncTcpClient, timeout: float = TIMEOUT) -> Event:
    event = await asyncio.wait_for(c.read_event(), timeout)
    assert event is not None, "the daemon closed the Wyoming connection"
    return event


async def read_until(c: AsyncTcpClient, last: str) -> Timed:
    """Events up to and including the first of type `last`."""
    seen: Timed = []
    while True:
        event = await read(c)
        seen.append((event, time.monotonic()))
        if event.type == last:
            return seen


def types(events: Timed) -> list[str]:
    return [e.type for e, _ in events]


def pcm_of(events: Timed) -> npt.NDArray[np.int16]:
    data = b"".join(AudioChunk.from_event(e).audio for e, _ in events if AudioChunk.is_type(e.type))
    return np.frombuffer(data, dtype="<i2").astype(np.int16)


def segments(events: Timed) -> list[Timed]:
    """The audio-start ... audio-stop groups, in order."""
    found: list[Timed] = []
    for event, at in events:
        if AudioStart.is_type(event.type):
            found.append([])
        if found and (not found[-1] or found[-1][-1][0].type != "audio-stop"):
            found[-1].append((event, at))
    return found


@contextlib.asynccontextmanager
async def daemon_events(wy: WyomingDaemon) -> AsyncIterator[Listener]:
    """The daemon's `<base>/event` messages from now on."""
    async with listening(wy.daemon.broker, f"{BASE}/event", base=BASE, timeout=TIMEOUT) as listener:
        yield listener


async def wyoming_ids(events: Listener, count: int) -> list[str]:
    """The ids of the first `count` Wyoming requests seen by `events`, from their `queued` events."""

    def ids() -> list[str]:
        return [e["id"] for e in events.events() if e["event"] == "queued" and e.get("source") == "wyoming"]

    await events.until(lambda: len(ids()) >= count)
    return ids()[:count]


async def end_received(events: Listener, request_id: str) -> Received:
    """The end event of `request_id` with its arrival time."""
    return await events.wait_for(
        lambda r: r.json()["id"] == request_id and r.json()["event"] in ("finished", "stopped", "dropped", "error"))


def find(haystack: npt.NDArray[np.int16], needle: npt.NDArray[np.int16], start: int, window: int) -> int | None:
    """The first offset in start..start+window where `needle` lies in `haystack` sample for sample."""
    n = len(needle)
    for offset in range(max(0, start), min(start + window, len(haystack) - n) + 1):
        if haystack[offset] == needle[0] and np.array_equal(haystack[offset:offset + n], needle):
            return offset
    return None


# --- the tests -------------------------------------------------------------------------------


async def test_describe_lists_the_real_engines_voices_and_languages(wy: WyomingDaemon) -> None:
    from tts.families import family

    async with client(wy.port) as c:
        await c.write_event(Describe().event())
        info = Info.from_event(await read(c, 30))
    (program,) = info.tts
    assert program.name == "chatterd" and program.installed and program.supports_synthesize_streaming
    assert "turbo" in (program.description or "").lower()
    ready = re.search(r"ready: speaking requests from \S+ \(voices: (.*)\)", wy.log())
    assert ready is not None, wy.log()[-2000:]
    offered = ready.group(1).split(", ")
    assert [v.name for v in program.voices] == offered
    assert set(offered) == {"default", "tone"}  # "short" (3 s) is unusable for Turbo: not offered
    assert all(v.languages == list(family("turbo").languages) for v in program.voices)


async def test_one_shot_is_one_segment_whose_audio_comes_while_synthesis_runs(wy: WyomingDaemon) -> None:
    text = "The hall light is on. The back door is shut."
    async with daemon_events(wy) as events, client(wy.port) as c:
        sent = time.monotonic()
        await c.write_event(Synthesize(text=text).event())
        got = await read_until(c, "audio-stop")
        (request_id,) = await wyoming_ids(events, 1)
        end = await end_received(events, request_id)
        started = await events.event("started", request_id)
    finished = end.json()
    assert finished["event"] == "finished" and finished["sentences"] == 2, finished
    kinds = types(got)
    assert kinds[0] == "audio-start" and kinds[-1] == "audio-stop"
    assert set(kinds[1:-1]) == {"audio-chunk"} and len(kinds) > 4, kinds
    start = AudioStart.from_event(got[0][0])
    assert (start.rate, start.width, start.channels) == (24000, 2, 1)
    assert all((c.rate, c.width, c.channels) == (24000, 2, 1)
               for c in (AudioChunk.from_event(e) for e, _ in got if AudioChunk.is_type(e.type)))
    assert finished["audio_s"] > 0 and len(pcm_of(got)) / 24000 == pytest.approx(finished["audio_s"], abs=0.002)
    # Streamed, not held back: the first chunk comes early in the request, long before the daemon
    # reports the end of synthesis, and the chunks spread over most of it.
    chunk_times = [at for e, at in got if AudioChunk.is_type(e.type)]
    whole = end.at - sent
    assert chunk_times[0] - sent < 0.5 * whole, (chunk_times[0] - sent, whole)
    assert chunk_times[-1] - chunk_times[0] > 0.3 * finished["synth_s"]
    # The client's time to first audio is the daemon's own first_audio_ms (plus the network).
    assert chunk_times[0] - sent == pytest.approx(started["first_audio_ms"] / 1000, abs=0.5)


async def test_streaming_pieces_split_mid_word_give_one_segment_per_sentence(wy: WyomingDaemon) -> None:
    first_pieces = ["The kit", "chen is wa", "rm. The gar"]  # the first sentence completes here
    rest_pieces = ["den is co", "ld."]
    async with daemon_events(wy) as events, client(wy.port) as c:
        await c.write_event(SynthesizeStart().event())
        for piece in first_pieces:
            await c.write_event(SynthesizeChunk(text=piece).event())
        # The first sentence's audio starts before the second sentence's text has been sent.
        head = await read_until(c, "audio-chunk")
        for piece in rest_pieces:
            await c.write_event(SynthesizeChunk(text=piece).event())
        await c.write_event(Synthesize(text="".join(first_pieces + rest_pieces)).event())  # compatibility copy
        await c.write_event(SynthesizeStop().event())
        tail = await read_until(c, "synthesize-stopped")
        ids = await wyoming_ids(events, 2)
        ends = [(await end_received(events, request_id)).json() for request_id in ids]
        queued = [e for e in events.events() if e["event"] == "queued" and e.get("source") == "wyoming"]
    got = head + tail
    assert types(head)[0] == "audio-start"
    assert types(got).count("audio-start") == 2 and types(got).count("audio-stop") == 2
    assert types(got)[-2:] == ["audio-stop", "synthesize-stopped"]
    assert len(queued) == 2  # the compatibility copy of the whole text was not spoken again
    assert [e["event"] for e in ends] == ["finished", "finished"]
    for segment, end in zip(segments(got), ends, strict=True):
        assert end["audio_s"] > 0 and len(pcm_of(segment)) / 24000 == pytest.approx(end["audio_s"], abs=0.002)


async def test_a_disconnect_mid_stream_stops_synthesis_and_the_next_request_is_served(wy: WyomingDaemon) -> None:
    long = ("This sentence is long on purpose, so that the client can hang up while it is still being "
            "spoken, well before it ends.")
    async with daemon_events(wy) as events:
        async with client(wy.port) as c:
            await c.write_event(SynthesizeStart().event())
            await c.write_event(SynthesizeChunk(text=long + " And then").event())
            await read_until(c, "audio-chunk")
        (request_id,) = await wyoming_ids(events, 1)
        stopped = await events.end_of(request_id)
        assert stopped["event"] == "stopped" and stopped["reason"] == "disconnected", stopped
        assert stopped["audio_s"] < _expected_audio_s(long) / 2
        assert "disconnected; cancelled 1 request(s)" in wy.log()
        async with client(wy.port) as c:
            await c.write_event(Synthesize(text="Next one.").event())
            got = await read_until(c, "audio-stop")
        (_, next_id) = await wyoming_ids(events, 2)
        finished = await events.end_of(next_id)
    assert finished["event"] == "finished" and finished["audio_s"] > 0
    assert len(pcm_of(got)) / 24000 == pytest.approx(finished["audio_s"], abs=0.002)


async def test_an_mqtt_announcement_queued_during_a_wyoming_request_is_spoken_after_it(wy: WyomingDaemon) -> None:
    async with daemon_events(wy) as events, client(wy.port) as c:
        await c.write_event(Synthesize(text="Wyoming goes first, and this answer takes a moment.").event())
        await read_until(c, "audio-chunk")
        await events.say("The announcement waits its turn.", "mqtt-after")
        await events.event("queued", "mqtt-after")
        await read_until(c, "audio-stop")
        (request_id,) = await wyoming_ids(events, 1)
        assert (await events.end_of("mqtt-after"))["event"] == "finished"
    order = [(e["id"], e["event"]) for e in events.events()]
    assert order.index(("mqtt-after", "queued")) < order.index((request_id, "finished"))  # queued while it ran
    assert order.index((request_id, "finished")) < order.index(("mqtt-after", "started"))  # spoken after it
    assert events.names("mqtt-after") == ["queued", "started", "finished"]


async def test_wyoming_audio_equals_what_the_speaker_plays_fresh_and_cached(wy: WyomingDaemon) -> None:
    """With the seed fixed (tts.seed 7), one text: spoken through MQTT on the local sink (captured
    from the ALSA file PCM), then over Wyoming from the phrase cache, then over Wyoming afresh
    (its cache entry deleted), then on the local sink from the cache again: all the same samples."""
    text = "Same seed, same samples."
    raw_path = wy.daemon.raw_path
    before = len(read_raw_int16(raw_path))
    entries = set(wy.cache_dir.glob("*.wav"))
    async with daemon_events(wy) as events:
        await events.say(text, "same-local")
        local = await events.end_of("same-local")
        assert local["event"] == "finished" and not local["cached"], local
        (entry,) = set(wy.cache_dir.glob("*.wav")) - entries
        async with client(wy.port) as c:
            await c.write_event(Synthesize(text=text).event())
            cached = pcm_of(await read_until(c, "audio-stop"))
            entry.unlink()  # the next one is synthesised again (and stored again)
            await c.write_event(Synthesize(text=text).event())
            fresh = pcm_of(await read_until(c, "audio-stop"))
        ids = await wyoming_ids(events, 2)
        assert [(await events.end_of(i))["cached"] for i in ids] == [True, False]
        assert entry.exists()
        for request_id in ("same-local-cached", "same-flush"):  # the second pushes the first out of ALSA
            await events.say(text, request_id)
            end = await events.end_of(request_id)
            assert end["event"] == "finished" and end["cached"], end
    n = len(fresh)
    assert n / 24000 == pytest.approx(local["audio_s"], abs=0.002) and np.abs(fresh).max() > 100
    np.testing.assert_array_equal(cached, fresh)
    played = read_raw_int16(raw_path)
    # The previous test's last PortAudio period may have reached the file only now: look a little further.
    offset = find(played, fresh, before, CAPTURE_RATE)
    assert offset is not None, (
        f"the Wyoming audio is not in the capture after sample {before}; captured {len(played) - before} "
        f"samples since, first differences: {played[before:before + 8]} vs {fresh[:8]}")
    np.testing.assert_array_equal(played[offset + n:offset + 2 * n], fresh)  # the local cached replay


async def test_errors_through_the_real_daemon_keep_the_connection_usable(wy: WyomingDaemon) -> None:
    cases = [
        (SynthesizeVoice(name="nobody"), "unknown_voice", "known voices: default, tone"),
        (SynthesizeVoice(name="short"), "unknown_voice", "known voices: default, tone"),  # unusable: not offered
        (SynthesizeVoice(language="de"), "unsupported_language", "en"),
    ]
    async with client(wy.port) as c:
        for voice, code, said in cases:
            await c.write_event(Synthesize(text="Hello there.", voice=voice).event())
            got = await read_until(c, "audio-stop")  # a one-shot always ends with audio-stop
            errors = [Error.from_event(e) for e, _ in got if Error.is_type(e.type)]
            assert [e.code for e in errors] == [code], (voice, errors)
            assert said in errors[0].text, errors[0].text
            assert "audio-chunk" not in types(got)
        await c.write_event(Synthesize(text="Fine again.", voice=SynthesizeVoice(name="tone")).event())
        got = await read_until(c, "audio-stop")
    assert len(pcm_of(got)) > 0 and types(got).count("audio-start") == 1


async def test_zeroconf_announces_the_server(wy: WyomingDaemon) -> None:
    if "zeroconf announcement failed" in wy.log():
        reason = ("no multicast here: the daemon could not announce over zeroconf "
                  f"({wy.log().split('zeroconf announcement failed')[1].splitlines()[0].strip()})")
        if in_ci():
            pytest.fail(reason)
        pytest.skip(reason)
    from zeroconf import ServiceBrowser, ServiceInfo, ServiceListener, Zeroconf

    wanted = f"{wy.zeroconf_name}.{ZEROCONF_TYPE}"

    class Found(ServiceListener):
        def __init__(self) -> None:
            self.info: ServiceInfo | None = None

        def add_service(self, zc: Zeroconf, type_: str, name: str) -> None:
            if name == wanted:
                self.info = zc.get_service_info(type_, name, timeout=3000)

        def update_service(self, zc: Zeroconf, type_: str, name: str) -> None:
            self.add_service(zc, type_, name)

        def remove_service(self, zc: Zeroconf, type_: str, name: str) -> None:
            pass

    def browse() -> ServiceInfo | None:
        zc = Zeroconf()
        try:
            found = Found()
            browser = ServiceBrowser(zc, ZEROCONF_TYPE, found)
            deadline = time.monotonic() + 10
            while found.info is None and time.monotonic() < deadline:
                time.sleep(0.05)
            browser.cancel()
            return found.info
        finally:
            zc.close()

    info = await asyncio.to_thread(browse)
    if info is None:
        reason = f"{wanted} was not seen within 10 s (is multicast delivered on this host?)"
        if in_ci():
            pytest.fail(reason)
        pytest.skip(reason)
    assert info.port == wy.port
    (address, *_) = info.parsed_addresses()
    assert f"announced {wy.zeroconf_name!r} as {ZEROCONF_TYPE} on {address}:{wy.port}" in wy.log()
    # A client that found it there (Home Assistant) is served there.
    async with client(wy.port, address) as c:
        await c.write_event(Describe().event())
        assert Info.is_type((await read(c, 30)).type)


def test_the_daemon_is_still_up_and_logged_no_traceback(wy: WyomingDaemon) -> None:
    assert wy.daemon.process.poll() is None
    assert "Traceback" not in wy.log(), wy.log()[-3000:]
