"""SpeechService with a fake engine and real sinks: order, events, stop, queue limits, failures."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import AlsaCapture
from fakes import CRASH, FAIL, GHOST_VOICE, FakeEngine, PacedSink

from daemon.admission import QueueFull, RequestQueue
from daemon.app import start_engine
from daemon.config import SpeechConfig
from daemon.engine import EngineThread
from daemon.events import Event
from daemon.messages import SayRequest
from daemon.player import Player, PyAudioSink, Sink, WavSink
from daemon.speech import SpeechService
from tts.config import TTSConfig

TIMEOUT = 10.0


class Harness:
    """A running SpeechService whose events land in `events` (emitted at `emitted_at`, monotonic)."""

    def __init__(self, engine: FakeEngine, sink: Sink, queue_size: int = 32) -> None:
        self.engine = engine
        self.events: list[Event] = []
        self.emitted_at: list[float] = []
        self.received_at: dict[str, float] = {}
        self.speaking: list[bool] = []
        self._changed = asyncio.Event()
        self.player = Player(sink)
        self.player.start()
        self.service = SpeechService(
            engine, self.player, SpeechConfig(queue_size=queue_size), self._emit, self._on_speaking
        )
        self.task = asyncio.create_task(self.service.run())

    def _emit(self, event: Event) -> None:
        self.events.append(event)
        self.emitted_at.append(time.monotonic())
        self._changed.set()

    def _on_speaking(self, speaking: bool) -> None:
        self.speaking.append(speaking)
        self._changed.set()

    def say(self, text: str, request_id: str, **fields: Any) -> bool:
        self.received_at[request_id] = time.monotonic()
        request = SayRequest(text=text, id=request_id, received_at=self.received_at[request_id], **fields)
        return self.service.submit(request)

    def at(self, event: Event) -> float:
        """When `event` was emitted."""
        return self.emitted_at[self.events.index(event)]

    async def until(self, condition: Callable[[], bool]) -> None:
        async def scan() -> None:
            while not condition():
                self._changed.clear()
                await self._changed.wait()

        await asyncio.wait_for(scan(), TIMEOUT)

    async def wait_for(self, predicate: Callable[[Event], bool]) -> Event:
        """The first event (so far or later) that `predicate` accepts."""
        await self.until(lambda: any(predicate(e) for e in self.events))
        return next(e for e in self.events if predicate(e))

    async def end_of(self, request_id: str) -> Event:
        return await self.wait_for(lambda e: e.id == request_id and e.is_end)

    async def event(self, name: str, request_id: str) -> Event:
        return await self.wait_for(lambda e: e.id == request_id and e.event == name)

    def names(self, request_id: str) -> list[str]:
        return [e.event for e in self.events if e.id == request_id]

    async def idle(self) -> None:
        """Until the worker has emptied the queue and said so (speaking off)."""
        await self.until(lambda: self.speaking[-1:] == [False] and not self.service.queued)

    async def close(self) -> None:
        self.task.cancel()
        await asyncio.gather(self.task, return_exceptions=True)
        self.player.close()


HarnessFactory = Callable[..., Harness]


@pytest.fixture
async def harness(tmp_path: Path) -> AsyncIterator[HarnessFactory]:
    made: list[Harness] = []

    def make(engine: FakeEngine | None = None, sink: Sink | None = None, queue_size: int = 32) -> Harness:
        engine = engine or FakeEngine()
        h = Harness(engine, sink or WavSink(tmp_path / f"out{len(made)}.wav", engine.sample_rate), queue_size)
        made.append(h)
        return h

    yield make
    for h in made:
        await h.close()


async def test_requests_are_spoken_in_order_with_full_event_sequences(harness: HarnessFactory) -> None:
    h = harness()
    texts = {"a": "one two three", "b": "four five", "c": "six"}
    for request_id, text in texts.items():
        assert h.say(text, request_id)
    for request_id in texts:
        await h.end_of(request_id)
    assert h.engine.calls == list(texts.values())
    previous: Event | None = None
    for request_id, text in texts.items():
        assert h.names(request_id) == ["queued", "started", "finished"]
        started = next(e for e in h.events if e.id == request_id and e.event == "started")
        finished = next(e for e in h.events if e.id == request_id and e.event == "finished")
        # One worker: synthesis begins once the request before has ended, then the fake sleeps
        # delay_s before its first chunk; the first frame was handed over before `started` went out.
        received = h.received_at[request_id]
        began = received if previous is None else h.at(previous)
        first_audio_ms = started.extras["first_audio_ms"]  # rounded to 0.1 ms
        assert (began - received + h.engine.delay_s) * 1000 - 0.1 <= first_audio_ms
        assert first_audio_ms <= (h.at(started) - received) * 1000 + 0.1
        previous = finished
        assert finished.extras["first_audio_ms"] == started.extras["first_audio_ms"]
        assert finished.extras["audio_s"] == pytest.approx(len(text.split()) * h.engine.chunk_s, abs=1e-3)
        assert finished.extras["synth_s"] > 0
        audio_s, synth_s = finished.extras["audio_s"], finished.extras["synth_s"]
        # synth_s is rounded to 1 ms in the event; rtf is computed before rounding.
        assert finished.extras["rtf"] == pytest.approx(synth_s / audio_s, abs=0.0006 / audio_s + 0.001)
    queued = [e.extras["position"] for e in h.events if e.event == "queued"]
    assert queued[0] == 0
    await h.idle()
    assert h.speaking == [True, False]  # back-to-back requests do not flap the speaking state


async def test_audio_reaches_the_wav_file_gaplessly(harness: HarnessFactory, tmp_path: Path) -> None:
    engine = FakeEngine()
    h = harness(engine, WavSink(tmp_path / "speech.wav", engine.sample_rate))
    h.say("alpha beta", "a")
    h.say("gamma", "b", volume=0.5)
    await h.end_of("b")
    await h.close()
    import wave

    with wave.open(str(tmp_path / "speech.wav"), "rb") as wav:
        samples = np.frombuffer(wav.readframes(wav.getnframes()), dtype="<i2")
    n = engine.chunk_samples()
    assert len(samples) == 3 * n
    assert np.abs(samples[: 2 * n]).max() == pytest.approx(0.5 * 32767, rel=0.01)
    assert np.abs(samples[2 * n :]).max() == pytest.approx(0.25 * 32767, rel=0.01)


async def test_stop_all_cuts_the_current_request_and_clears_the_queue(harness: HarnessFactory) -> None:
    engine = FakeEngine(delay_s=0.03)
    h = harness(engine, PacedSink(engine.sample_rate))
    h.say("w " * 40, "a")
    h.say("w w", "b")
    h.say("w w w", "c")
    await h.event("started", "a")
    h.service.stop_all()
    for request_id in ("a", "b", "c"):
        stopped = await h.end_of(request_id)
        assert stopped.event == "stopped" and stopped.extras["reason"] == "stop"
    a = next(e for e in h.events if e.id == "a" and e.event == "stopped")
    assert 0 < a.extras["audio_s"] < 40 * engine.chunk_s
    assert h.names("b") == ["queued", "stopped"]
    await h.idle()
    assert engine.cancelled[0] and engine.yielded[0] < 40  # synthesis stopped too, not only the audio
    assert engine.calls == [("w " * 40).strip()]  # b and c were never synthesised
    h.say("after the stop", "d")
    assert (await h.end_of("d")).event == "finished"


async def test_stop_by_id_cancels_a_queued_or_speaking_request(harness: HarnessFactory) -> None:
    engine = FakeEngine(delay_s=0.03)
    h = harness(engine, PacedSink(engine.sample_rate))
    h.say("w " * 40, "a")
    h.say("queued one", "b")
    h.say("next one", "c")
    await h.event("started", "a")
    assert h.service.stop("b")
    assert h.names("b") == ["queued", "stopped"]
    assert h.service.stop("a")
    assert (await h.end_of("a")).event == "stopped"
    assert (await h.end_of("c")).event == "finished"
    assert engine.calls == [("w " * 40).strip(), "next one"]


async def test_stop_of_an_unknown_id_is_an_error_event(harness: HarnessFactory) -> None:
    h = harness()
    assert not h.service.stop("nobody")
    error = await h.end_of("nobody")
    assert error.event == "error" and error.extras["code"] == "unknown_id"
    assert "'nobody'" in error.extras["message"]


async def test_full_queue_drops_the_newcomer(harness: HarnessFactory) -> None:
    engine = FakeEngine(delay_s=0.03)
    h = harness(engine, PacedSink(engine.sample_rate), queue_size=2)
    h.say("w " * 20, "speaking")
    await h.event("started", "speaking")
    assert h.say("one", "q1") and h.say("two", "q2")
    assert not h.say("three", "q3")
    dropped = await h.end_of("q3")
    assert dropped.event == "dropped" and dropped.extras["reason"] == "queue_full"
    assert h.names("q3") == ["dropped"]
    # A high-priority request evicts the newest normal one instead of being dropped.
    assert h.say("urgent", "hi", priority="high")
    assert (await h.end_of("q2")).event == "dropped"
    h.service.stop("speaking")
    for request_id in ("hi", "q1"):
        assert (await h.end_of(request_id)).event == "finished"
    assert engine.calls[1:] == ["urgent", "one"]


async def test_priorities_then_arrival_order(harness: HarnessFactory) -> None:
    engine = FakeEngine(delay_s=0.03)
    h = harness(engine, PacedSink(engine.sample_rate, pace=0.2))
    h.say("w " * 10, "first")
    await h.event("started", "first")
    h.say("low one", "l1", priority="low")
    h.say("normal one", "n1")
    h.say("high one", "h1", priority="high")
    h.say("normal two", "n2")
    for request_id in ("l1", "n1", "h1", "n2"):
        await h.end_of(request_id)
    assert engine.calls[1:] == ["high one", "normal one", "normal two", "low one"]


async def test_interrupt_cuts_the_current_request_and_goes_first(harness: HarnessFactory) -> None:
    engine = FakeEngine(delay_s=0.03)
    h = harness(engine, PacedSink(engine.sample_rate))
    h.say("w " * 40, "long")
    h.say("waiting", "waiting")
    await h.event("started", "long")
    h.say("doorbell", "bell", interrupt=True)
    stopped = await h.end_of("long")
    assert stopped.event == "stopped" and stopped.extras["reason"] == "interrupted"
    assert (await h.end_of("bell")).event == "finished"
    assert (await h.end_of("waiting")).event == "finished"
    assert engine.calls[1:] == ["doorbell", "waiting"]


async def test_unknown_voice_is_rejected_with_the_known_ones(harness: HarnessFactory) -> None:
    h = harness()
    assert not h.say("hi", "v", voice="bob")
    error = await h.end_of("v")
    assert h.names("v") == ["error"]
    assert error.extras["code"] == "unknown_voice"
    assert "'bob'" in error.extras["message"] and "default, alice" in error.extras["message"]
    assert h.engine.calls == []


async def test_unknown_voice_raised_by_the_engine_is_an_error_event(harness: HarnessFactory) -> None:
    h = harness()
    h.say("hi there", "g", voice=GHOST_VOICE)
    error = await h.end_of("g")
    assert h.names("g") == ["queued", "error"]
    assert (
        error.extras["code"] == "unknown_voice" and "known voices: default, alice" in error.extras["message"]
    )


@pytest.mark.parametrize("marker", [FAIL, CRASH])
async def test_engine_failure_is_an_error_and_the_next_request_works(
    harness: HarnessFactory, marker: str
) -> None:
    h = harness()
    h.say(f"{marker} please", "bad")
    h.say("all good", "good")
    error = await h.end_of("bad")
    assert error.event == "error" and error.extras["code"] == "synthesis_failed"
    assert "failed" in error.extras["message"] or "crashed" in error.extras["message"]
    assert (await h.end_of("good")).event == "finished"
    # FAIL raises after yielding one chunk; whether the player wrote it before the failure cut the
    # audio is a race, so `started` may or may not come. Either way: exactly one end event.
    assert h.names("bad") in (["queued", "started", "error"], ["queued", "error"])
    if marker == CRASH:
        assert h.names("bad") == ["queued", "error"]


async def test_audio_failure_is_an_error_and_the_next_request_works(harness: HarnessFactory) -> None:
    engine = FakeEngine()
    sink = PacedSink(engine.sample_rate, pace=0.0)
    h = harness(engine, sink)
    sink.fail = True
    h.say("lost words", "lost")
    error = await h.end_of("lost")
    assert error.event == "error" and error.extras["code"] == "audio_failed"
    assert "unplugged" in error.extras["message"]
    sink.fail = False
    assert h.say("back again", "back")
    assert (await h.end_of("back")).event == "finished"


async def test_duplicate_id_is_rejected(harness: HarnessFactory) -> None:
    engine = FakeEngine(delay_s=0.03)
    h = harness(engine, PacedSink(engine.sample_rate))
    h.say("w " * 10, "same")
    assert not h.say("again", "same")
    assert [e.event for e in h.events if e.id == "same"] == ["queued", "error"]
    assert h.events[-1].extras["code"] == "duplicate_id"
    assert (await h.end_of("same")).event == "error"  # the rejection; the first one still runs
    h.service.stop("same")


async def test_shutdown_stops_everything_with_reason_shutdown(harness: HarnessFactory) -> None:
    engine = FakeEngine(delay_s=0.03)
    h = harness(engine, PacedSink(engine.sample_rate))
    h.say("w " * 40, "a")
    h.say("later", "b")
    await h.event("started", "a")
    h.task.cancel()
    await asyncio.gather(h.task, return_exceptions=True)
    for request_id in ("a", "b"):
        ends = [e for e in h.events if e.id == request_id and e.is_end]
        assert [(e.event, e.extras["reason"]) for e in ends] == [("stopped", "shutdown")]
    assert h.speaking == [True, False]


async def test_every_request_ends_exactly_once_under_churn(harness: HarnessFactory) -> None:
    engine = FakeEngine(delay_s=0.005)
    h = harness(engine, PacedSink(engine.sample_rate, pace=0.1), queue_size=4)
    accepted = []
    for i in range(30):
        if h.say(f"word {i} " + ("[fail] x" if i % 7 == 3 else ""), f"r{i}", interrupt=i % 9 == 0):
            accepted.append(f"r{i}")
        if i % 5 == 4:
            h.service.stop(f"r{i - 1}")
        if i == 20:
            h.service.stop_all()
        await asyncio.sleep(0.01)
    for request_id in accepted:
        await h.end_of(request_id)
    await h.idle()
    for request_id in accepted:
        # A stop that arrives after its request ended gets its own `unknown_id` error: not an end.
        ends = [
            e.event
            for e in h.events
            if e.id == request_id and e.is_end and e.extras.get("code") != "unknown_id"
        ]
        assert len(ends) == 1, (request_id, h.names(request_id))


async def test_pyaudio_sink_under_alsa_capture(harness: HarnessFactory, alsa_capture: AlsaCapture) -> None:
    engine = FakeEngine()
    h = harness(engine, PyAudioSink(engine.sample_rate))
    h.say("one two three", "a")
    finished = await h.end_of("a")
    assert finished.event == "finished"
    await h.close()
    assert len(alsa_capture.samples()) >= engine.expected_samples("one two three")


def test_request_queue_order_and_eviction() -> None:
    def req(request_id: str, priority: str = "normal", interrupt: bool = False) -> SayRequest:
        return SayRequest(text="x", id=request_id, priority=priority, interrupt=interrupt)  # type: ignore[arg-type]

    queue = RequestQueue(3)
    assert queue.push(req("n1")) is None
    assert queue.push(req("l1", "low")) is None
    assert queue.push(req("h1", "high")) is None
    assert [r.id for r in queue] == ["h1", "n1", "l1"]
    evicted = queue.push(req("n2"))
    assert evicted is not None and evicted.id == "l1"
    with pytest.raises(QueueFull):
        queue.push(req("n3"))  # the lowest queued is normal: a normal newcomer cannot evict it
    evicted = queue.push(req("i1", "low", interrupt=True))
    assert evicted is not None and evicted.id == "n2"
    assert [r.id for r in queue] == ["i1", "h1", "n1"]
    assert queue.position("n1") == 2 and "h1" in queue and "zz" not in queue
    assert queue.remove("h1") is not None and queue.remove("h1") is None
    assert queue.pop() is not None and [r.id for r in queue.clear()] == ["n1"] and len(queue) == 0


async def test_each_sentence_is_told_how_much_audio_is_still_queued_ahead_of_it(harness: HarnessFactory) -> None:
    # Synthesis far faster than playback: when the second sentence starts, most of the first one's
    # second of audio is still waiting to play, and the engine hears so (to size its chunks).
    engine = FakeEngine(chunk_s=0.2)
    h = harness(engine, PacedSink(engine.sample_rate))
    h.say("One two three four five. Six seven.", "q")
    assert (await h.end_of("q")).event == "finished"
    assert engine.calls == ["One two three four five.", "Six seven."]
    assert engine.thens == ["Six seven.", None]  # the engine may start on the next one early
    assert engine.queued_s[0] == 0.0
    assert 0.5 < engine.queued_s[1] <= 1.0


class ThreadRecordingEngine(FakeEngine):
    """A FakeEngine that records the thread of every call that would run torch in the real one."""

    def __init__(self) -> None:
        super().__init__()
        self.threads: dict[str, set[int]] = {}

    def _record(self, what: str) -> None:
        self.threads.setdefault(what, set()).add(threading.get_ident())

    def warm_up(self, progress: Callable[[int, int, str], None] | None = None) -> float:
        self._record("warm_up")
        return super().warm_up(progress)

    def identity(self) -> str:
        self._record("identity")
        return super().identity()

    def stream(self, *args: Any, **kwargs: Any) -> Any:
        self._record("stream")
        return super().stream(*args, **kwargs)


async def test_the_engine_is_loaded_warmed_up_and_served_on_one_thread(tmp_path: Path) -> None:
    # libgomp stops spinning once a process holds more OpenMP workers than CPUs: a model loaded on
    # one thread and served from another ran 30-50% slower on two cores (daemon.engine.EngineThread).
    engine = ThreadRecordingEngine()

    def load(config: TTSConfig) -> FakeEngine:
        engine._record("load")
        return engine

    engine_thread = EngineThread()
    assert start_engine(TTSConfig(), engine_thread, load) is engine
    player = Player(WavSink(tmp_path / "out.wav", engine.sample_rate))
    player.start()
    events: list[Event] = []
    service = SpeechService(engine, player, SpeechConfig(), events.append, engine_thread=engine_thread)
    task = asyncio.create_task(service.run())
    try:
        assert service.submit(SayRequest(text="one two", id="r1", received_at=time.monotonic()))
        async with asyncio.timeout(TIMEOUT):
            while not any(e.id == "r1" and e.is_end for e in events):
                await asyncio.sleep(0.01)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        player.close()
    assert [e.event for e in events if e.id == "r1"][-1] == "finished"
    assert set(engine.threads) == {"load", "warm_up", "identity", "stream"}
    threads = set().union(*engine.threads.values())
    assert len(threads) == 1 and threading.get_ident() not in threads
