"""The speech core: a bounded request queue and one worker that speaks requests one at a time.

Threads and the event loop:
* `submit`, `stop`, `stop_all` and `run` belong to the event loop and never block it.
* Synthesis (`engine.stream`) runs on one dedicated thread: the engine is not reentrant, so the
  next request starts only once the previous generator has returned.
* Chunks go straight from that thread into the Player's queue; the Player thread writes them.

Every accepted request (`queued` event) ends in exactly one of `finished`, `stopped`, `dropped` or
`error`. Requests rejected before queueing (unknown voice, duplicate id) get a lone `error`.
Each end is logged as one key=value line (`log_outcome`): id, outcome, latency, RTF, durations.

Engine faults (an exception, MemoryError or a CUDA out-of-memory error) fail that request only
(`error`, code `out_of_memory` or `synthesis_failed`): its generator is closed at once so the
engine releases its lock and per-request buffers, and the next request is synthesised normally.

A request is spoken sentence by sentence (`tts.text.split_sentences`) into one Playback: while
the player plays sentence n, the synthesis thread is already producing sentence n+1, and the
request still gets one `started` and one `finished`. A stop or cancel is seen between chunks and
between sentences, so the engine is free again within one chunk. With a phrase cache, a sentence
heard before is played from disk instead of synthesised (`cached` in `started`/`finished`).

With `dedupe`, a request whose text and voice equal those of a queued one is dropped at once
(`dropped`, reason `duplicate`, `duplicate_of` naming the queued one); interrupts are never
deduplicated.

Order: high before normal before low, first come first served within a priority. A request with
`interrupt: true` goes to the head of the queue and cuts the current one (`stopped`, reason
`interrupted`). When the queue is full, a newcomer evicts the newest request of a lower priority
(`dropped`, reason `queue_full`), or is itself dropped if there is none.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import gc
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Protocol, TypeVar

import numpy as np
import numpy.typing as npt

from daemon.config import SpeechConfig
from daemon.errors import AudioDeviceError
from daemon.loudness import Leveller
from daemon.messages import PRIORITIES, Event, SayRequest, error_event
from daemon.phrase_cache import PhraseCache
from daemon.player import Playback, Player
from daemon.ratelimit import RateLimiter
from tts.errors import SynthesisError, UnknownVoice
from tts.text import normalize, split_sentences

_LOGGER = logging.getLogger(__name__)

# How long shutdown waits for a cancelled synthesis to notice its cancel event.
SHUTDOWN_GRACE_S = 5.0


class SpeechEngine(Protocol):
    """What the daemon needs from a TTS engine (tts.engine.StreamingTTS provides it)."""

    @property
    def sample_rate(self) -> int: ...

    @property
    def voices(self) -> tuple[str, ...]:
        """Known voice names, "default" included."""
        ...

    def stream(
        self, text: str, voice: str | None = None, language: str | None = None,
        cancel: threading.Event | None = None, *, queued_s: float = 0.0,
    ) -> Iterator[npt.NDArray[np.float32]]:
        """Yield float32 mono PCM chunks while synthesis continues; stop early once `cancel` is set.

        `queued_s`: audio of the same request still queued for playback (earlier sentences); the
        engine may size its chunks by it.

        Raises tts.errors.UnknownVoice or tts.errors.SynthesisError.
        """
        ...


EmitFn = Callable[[Event], None]
T = TypeVar("T")


def log_outcome(level: int, request_id: str | None, outcome: str, **fields: object) -> None:
    """The one log line per request: `request <id> <outcome>: key=value ...` (None values omitted)."""
    details = " ".join(f"{key}={value}" for key, value in fields.items() if value is not None)
    _LOGGER.log(level, "request %s %s: %s", request_id, outcome, details)


def is_out_of_memory(exc: BaseException) -> bool:
    """MemoryError or torch's OutOfMemoryError (also as a cause), recognised without importing torch."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, MemoryError) or type(seen).__name__ == "OutOfMemoryError":
            return True
        seen = seen.__cause__
    return False


class QueueFull(Exception):
    """The queue holds `maxsize` requests, none of which ranks below the newcomer."""


def _rank(request: SayRequest) -> int:
    return 3 if request.interrupt else 2 - PRIORITIES.index(request.priority)


class RequestQueue:
    """Bounded priority queue of SayRequests; FIFO within a priority, interrupts at the very front."""

    def __init__(self, maxsize: int) -> None:
        self.maxsize = maxsize
        self._levels: dict[str, deque[SayRequest]] = {p: deque() for p in PRIORITIES}

    def __len__(self) -> int:
        return sum(len(level) for level in self._levels.values())

    def __contains__(self, request_id: object) -> bool:
        return any(r.id == request_id for r in self)

    def __iter__(self) -> Iterator[SayRequest]:
        for priority in PRIORITIES:
            yield from self._levels[priority]

    def push(self, request: SayRequest) -> SayRequest | None:
        """Add a request; returns the request it evicted, or raises QueueFull."""
        evicted = None
        if len(self) >= self.maxsize:
            evicted = self._victim(request)
            if evicted is None:
                raise QueueFull
            self._levels[evicted.priority].remove(evicted)
        if request.interrupt:
            self._levels[PRIORITIES[0]].appendleft(request)
        else:
            self._levels[request.priority].append(request)
        return evicted

    def _victim(self, newcomer: SayRequest) -> SayRequest | None:
        for priority in reversed(PRIORITIES):
            level = self._levels[priority]
            if level:
                return level[-1] if _rank(level[-1]) < _rank(newcomer) else None
        return None

    def position(self, request_id: str) -> int:
        """0 = spoken next."""
        return next(i for i, r in enumerate(self) if r.id == request_id)

    def pop(self) -> SayRequest | None:
        for priority in PRIORITIES:
            if self._levels[priority]:
                return self._levels[priority].popleft()
        return None

    def remove(self, request_id: str) -> SayRequest | None:
        for level in self._levels.values():
            for request in level:
                if request.id == request_id:
                    level.remove(request)
                    return request
        return None

    def clear(self) -> list[SayRequest]:
        requests = list(self)
        for level in self._levels.values():
            level.clear()
        return requests


@dataclass(eq=False)
class _Active:
    """The request being spoken, and what the worker knows about it so far."""

    request: SayRequest
    cancel: threading.Event = field(default_factory=threading.Event)
    playback: Playback | None = None
    stop_reason: str | None = None  # set by stop/stop_all/interrupt/shutdown
    first_audio_ms: float | None = None
    ended: bool = False  # its end event has been emitted
    sentences: int = 0  # sentences handed to the player so far
    cached: int = 0  # ... of which came from the phrase cache
    first_cached: bool = False  # the first sentence came from the phrase cache


def _shielded(future: concurrent.futures.Future[T]) -> asyncio.Future[T]:
    """Await a thread's future without letting a cancelled waiter cancel it (wrap_future would)."""
    return asyncio.shield(asyncio.wrap_future(future))


class SpeechService:
    """Queue + worker; events go to `emit`, speaking state changes to `on_speaking` (both on the loop)."""

    def __init__(
        self,
        engine: SpeechEngine,
        player: Player,
        config: SpeechConfig,
        emit: EmitFn,
        on_speaking: Callable[[bool], None] | None = None,
        *,
        default_voice: str = "default",
        cache: PhraseCache | None = None,
        leveller: Leveller | None = None,
    ) -> None:
        self._engine = engine
        self._player = player
        self._emit = emit
        self._on_speaking = on_speaking
        self._config = config
        self._rate_limiter = RateLimiter(config.rate_limit_per_s, config.rate_limit_burst)
        # The voice of requests that name none; `<base>/voice/set` may change it at run time.
        self.default_voice = default_voice
        self._cache = cache
        self._leveller = leveller
        self._queue = RequestQueue(config.queue_size)
        self._wakeup = asyncio.Event()
        self._current: _Active | None = None
        self._speaking = False
        # One thread: the engine is not reentrant. Named for stack dumps and py-spy.
        self._executor = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="chatterd-synth")

    # --- control, called on the event loop ------------------------------------------------------

    def submit(self, request: SayRequest) -> bool:
        """Queue a request (emits `queued`) or reject it (emits `error`/`dropped`); True if queued.

        Rate limit first: per `request.client`, else one bucket per source (mqtt, hermes).
        """
        if not self._rate_limiter.allow(request.client or request.source):
            sender = f"client {request.client!r}" if request.client else f"{request.source} senders without 'client'"
            return self._reject(
                request,
                "rate_limited",
                f"more than {self._config.rate_limit_per_s:g} requests/s (bursts of "
                f"{self._config.rate_limit_burst}) from {sender} (speech.rate_limit_per_s)",
            )
        if request.voice is not None and request.voice not in self._engine.voices:
            known = ", ".join(self._engine.voices)
            return self._reject(
                request, "unknown_voice", f"unknown voice {request.voice!r}; known voices: {known}"
            )
        if request.id in self._queue or (
            self._current is not None and self._current.request.id == request.id
        ):
            return self._reject(
                request, "duplicate_id", f"a request with id {request.id!r} is already queued or speaking"
            )
        if self._config.dedupe and not request.interrupt:
            voice = self._voice_of(request)
            twin = next(
                (r for r in self._queue if r.text == request.text and self._voice_of(r) == voice), None
            )
            if twin is not None:
                self._emit(Event("dropped", request.id, {"reason": "duplicate", "duplicate_of": twin.id}))
                _LOGGER.info("request %s dropped: same text as queued request %s", request.id, twin.id)
                return False
        try:
            evicted = self._queue.push(request)
        except QueueFull:
            self._emit(Event("dropped", request.id, {"reason": "queue_full"}))
            log_outcome(logging.WARNING, request.id, "dropped", reason="queue_full", queued=len(self._queue))
            return False
        self._emit(Event("queued", request.id, {"position": self._queue.position(request.id)}))
        if evicted is not None:
            self._emit(Event("dropped", evicted.id, {"reason": "queue_full"}))
            log_outcome(logging.WARNING, evicted.id, "dropped", reason="queue_full", evicted_by=request.id)
        if request.interrupt and self._current is not None:
            self._cancel(self._current, "interrupted")
        self._wakeup.set()
        return True

    def stop_all(self, reason: str = "stop") -> None:
        """Cut the current request and drop every queued one; each gets `stopped`."""
        for request in self._queue.clear():
            self._emit_stopped(request, 0.0, reason)
        if self._current is not None:
            self._cancel(self._current, reason)

    def stop(self, request_id: str) -> bool:
        """Cancel one request, queued or speaking; an unknown id gets an `unknown_id` error."""
        if self._current is not None and self._current.request.id == request_id and not self._current.ended:
            self._cancel(self._current, "stop")
            return True
        request = self._queue.remove(request_id)
        if request is not None:
            self._emit_stopped(request, 0.0, "stop")
            return True
        self._emit(
            error_event(request_id, "unknown_id", f"no queued or speaking request has id {request_id!r}")
        )
        _LOGGER.warning("stop: no queued or speaking request has id %r", request_id)
        return False

    @property
    def queued(self) -> int:
        return len(self._queue)

    def _voice_of(self, request: SayRequest) -> str:
        return request.voice or self.default_voice

    def _cancel(self, active: _Active, reason: str) -> None:
        if active.stop_reason is None:
            active.stop_reason = reason
        active.cancel.set()  # the engine stops between chunks
        if active.playback is not None:
            active.playback.stop()  # the player drops what it has not written yet

    def _reject(self, request: SayRequest, code: str, message: str) -> bool:
        self._emit(error_event(request.id, code, message))
        log_outcome(logging.WARNING, request.id, "error", code=code, message=repr(message))
        return False

    # --- the worker -------------------------------------------------------------------------------

    async def run(self) -> None:
        """Speak queued requests until cancelled; on cancellation cut the audio and stop the queue."""
        try:
            while True:
                request = self._queue.pop()
                if request is None:
                    self._set_speaking(False)
                    self._wakeup.clear()
                    await self._wakeup.wait()
                    continue
                try:
                    await self._speak(request)
                except Exception as exc:  # a bug must not kill the worker; the request still gets its end
                    _LOGGER.exception("request %s: unexpected failure", request.id)
                    if self._current is not None and not self._current.ended:
                        self._end_with_error(self._current, "internal_error", f"internal error: {exc}")
                finally:
                    self._current = None
        finally:
            for queued in self._queue.clear():
                self._emit_stopped(queued, 0.0, "shutdown")
            self._set_speaking(False)
            self._executor.shutdown(wait=False, cancel_futures=True)

    async def _speak(self, request: SayRequest) -> None:
        loop = asyncio.get_running_loop()
        active = _Active(request)
        self._current = active

        def on_first_audio(at: float) -> None:  # player thread
            loop.call_soon_threadsafe(self._started, active, at)

        playback = self._player.play(request.id, request.volume, on_first_audio)
        active.playback = playback
        synth = loop.run_in_executor(self._executor, self._synthesize, active, playback)
        try:
            await self._finish(active, playback, synth)
        except asyncio.CancelledError:
            self._cancel(active, "shutdown")
            await self._settle_after_shutdown(active, playback, synth)
            raise

    async def _finish(self, active: _Active, playback: Playback, synth: asyncio.Future[float]) -> None:
        # The playback resolves first in every case: after end(), stop(), or a sink failure.
        try:
            result = await _shielded(playback.result)
        except AudioDeviceError as exc:
            active.cancel.set()
            await self._drain(synth)
            self._end_with_error(active, "audio_failed", str(exc))
            return
        if active.stop_reason is not None and result.stopped:
            # Report the cut at once; the engine may take a moment to see its cancel event.
            self._end_stopped(active, result.samples, active.stop_reason)
            await self._drain(synth)
            return
        try:
            synth_s = await asyncio.shield(synth)
        except UnknownVoice as exc:
            self._end_with_error(active, "unknown_voice", str(exc))
        except Exception as exc:
            if is_out_of_memory(exc):
                gc.collect()  # the failed request's tensors are unreachable now; give them back
                self._end_with_error(active, "out_of_memory", f"synthesis ran out of memory: {exc}")
            elif isinstance(exc, SynthesisError):
                self._end_with_error(active, "synthesis_failed", f"synthesis failed: {exc}")
            else:
                _LOGGER.exception("request %s: engine raised %s", active.request.id, type(exc).__name__)
                self._end_with_error(
                    active, "synthesis_failed", f"synthesis failed: {type(exc).__name__}: {exc}"
                )
        else:
            self._end_finished(active, result.samples, synth_s)

    def _synthesize(self, active: _Active, playback: Playback) -> float:
        """On the synthesis thread: speak the request sentence by sentence into one playback.

        Returns the synthesis wall time. Chunks are handed to the player as they come, so the
        next sentence is synthesised while the previous one plays.
        """
        started = time.perf_counter()
        request = active.request
        voice = self._voice_of(request)
        sentences = split_sentences(request.text, self._config.max_sentence_chars) or [request.text]
        try:
            for sentence in sentences:
                if active.cancel.is_set():
                    break
                self._speak_sentence(active, playback, sentence, voice)
        except BaseException:
            playback.stop()  # cut the audio of a failed request; the worker reports the error
            raise
        synth_s = time.perf_counter() - started
        playback.end()
        return synth_s

    def _speak_sentence(self, active: _Active, playback: Playback, sentence: str, voice: str) -> None:
        cache = self._cache
        key = cache.key(normalize(sentence), voice) if cache is not None else None
        if cache is not None and key is not None:
            audio = cache.get(key)
            if audio is not None:
                active.first_cached = active.first_cached or active.sentences == 0
                active.sentences += 1
                active.cached += 1
                playback.feed(audio)
                return
        active.sentences += 1
        parts: list[npt.NDArray[np.float32]] = []
        chunks = self._engine.stream(sentence, voice, cancel=active.cancel, queued_s=playback.queued_seconds)
        try:
            for chunk in chunks:
                if active.cancel.is_set():
                    return
                if self._leveller is not None:
                    chunk = self._leveller.process(voice, chunk)
                playback.feed(chunk)
                if key is not None:
                    parts.append(chunk)
        finally:
            close = getattr(chunks, "close", None)
            if close is not None:
                close()  # a generator left early releases the engine now, not when collected
        if cache is not None and key is not None and parts and not active.cancel.is_set():
            cache.put(key, np.concatenate(parts))

    async def _drain(self, synth: asyncio.Future[float]) -> None:
        """Wait for a cancelled or failed synthesis to return (the next request needs the engine)."""
        try:
            await asyncio.shield(synth)
        except Exception as exc:
            _LOGGER.debug("synthesis ended with %s after its request ended", type(exc).__name__)

    async def _settle_after_shutdown(
        self, active: _Active, playback: Playback, synth: asyncio.Future[float]
    ) -> None:
        try:
            result = await asyncio.wait_for(_shielded(playback.result), SHUTDOWN_GRACE_S)
            samples = result.samples
        except (asyncio.TimeoutError, AudioDeviceError):
            samples = playback.samples
        if not active.ended:
            self._end_stopped(active, samples, "shutdown")
        try:
            await asyncio.wait_for(asyncio.shield(synth), SHUTDOWN_GRACE_S)
        except asyncio.TimeoutError:
            _LOGGER.warning("synthesis did not stop within %.0f s of shutdown", SHUTDOWN_GRACE_S)
        except Exception as exc:
            _LOGGER.debug("synthesis ended with %s during shutdown", type(exc).__name__)

    # --- events -------------------------------------------------------------------------------

    def _started(self, active: _Active, at: float) -> None:
        if active.ended or active.first_audio_ms is not None:
            return
        active.first_audio_ms = round((at - active.request.received_at) * 1000.0, 1)
        self._set_speaking(True)
        self._emit(
            Event(
                "started",
                active.request.id,
                {"first_audio_ms": active.first_audio_ms, "cached": active.first_cached},
            )
        )

    def _ensure_started(self, active: _Active) -> None:
        # The player thread's started callback is queued on the loop before the playback result,
        # so this only matters if the loop ran them out of order.
        playback = active.playback
        if playback is not None and playback.first_frame_at is not None:
            self._started(active, playback.first_frame_at)

    def _end_finished(self, active: _Active, samples: int, synth_s: float) -> None:
        self._ensure_started(active)
        audio_s = samples / self._player.sample_rate
        rtf = round(synth_s / audio_s, 3) if audio_s > 0 else None
        active.ended = True
        self._emit(
            Event(
                "finished",
                active.request.id,
                {
                    "audio_s": round(audio_s, 3),
                    "synth_s": round(synth_s, 3),
                    "rtf": rtf,
                    "first_audio_ms": active.first_audio_ms,
                    "sentences": active.sentences,
                    "cached": active.sentences > 0 and active.cached == active.sentences,
                },
            )
        )
        log_outcome(
            logging.INFO,
            active.request.id,
            "finished",
            first_audio_ms=active.first_audio_ms,
            rtf=rtf,
            audio_s=round(audio_s, 3),
            synth_s=round(synth_s, 3),
            chars=len(active.request.text),
            client=active.request.client,
        )

    def _end_stopped(self, active: _Active, samples: int, reason: str) -> None:
        self._ensure_started(active)
        active.ended = True
        self._emit_stopped(active.request, samples / self._player.sample_rate, reason, active.first_audio_ms)

    def _emit_stopped(
        self, request: SayRequest, audio_s: float, reason: str, first_audio_ms: float | None = None
    ) -> None:
        self._emit(Event("stopped", request.id, {"audio_s": round(audio_s, 3), "reason": reason}))
        log_outcome(
            logging.INFO,
            request.id,
            "stopped",
            reason=reason,
            first_audio_ms=first_audio_ms,
            audio_s=round(audio_s, 3),
            client=request.client,
        )

    def _end_with_error(self, active: _Active, code: str, message: str) -> None:
        self._ensure_started(active)
        active.ended = True
        self._emit(error_event(active.request.id, code, message))
        log_outcome(
            logging.ERROR,
            active.request.id,
            "error",
            code=code,
            first_audio_ms=active.first_audio_ms,
            client=active.request.client,
            message=repr(message),
        )

    def _set_speaking(self, speaking: bool) -> None:
        if speaking != self._speaking:
            self._speaking = speaking
            if self._on_speaking is not None:
                self._on_speaking(speaking)
