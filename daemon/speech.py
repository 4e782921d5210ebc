"""The speech core's worker: one request at a time from the queue, and how each request ends.

Threads and the event loop:
* `submit`, `stop`, `stop_all`, `cancel` and `run` belong to the event loop and never block it.
* Synthesis (`daemon.utterance.Synthesizer`) runs on one dedicated thread, the engine's
  (`daemon.engine.EngineThread`, which also loaded and warmed it up): the engine is not
  reentrant, so the next request starts only once the previous generator has returned.
* Chunks go straight from that thread into the request's destination (the Player's queue, or a
  Wyoming connection's); the destination's own thread or task sends them out.

Admission (rate limits, voices and languages, dedupe, the priority queue) is `daemon.admission`.
Every accepted request (`queued` event) ends in exactly one of `finished`, `stopped`, `dropped` or
`error`; requests rejected before queueing get a lone `error` or `dropped`. Each end is logged as
one key=value line (`log_outcome`): id, outcome, latency, RTF, durations.

Engine faults (an exception, MemoryError or a CUDA out-of-memory error) fail that request only
(`error` with the code `daemon.engine.error_code` gives it): its generator is closed at once so
the engine releases its lock and per-request buffers, and the next request is synthesised
normally. A request with `interrupt: true` cuts the current one (`stopped`, reason `interrupted`).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import gc
import logging
from collections.abc import Callable
from typing import TypeVar

from daemon.admission import Admission, EmitFn, log_outcome
from daemon.config import SpeechConfig
from daemon.engine import EngineThread, SpeechEngine, error_code, is_out_of_memory
from daemon.errors import AudioDeviceError
from daemon.events import ErrorCode, Finished, Started, Stopped, error_event
from daemon.loudness import Leveller
from daemon.messages import SayRequest
from daemon.phrase_cache import PhraseCache
from daemon.player import Player
from daemon.utterance import AudioOut, Synthesizer, Utterance
from tts.errors import TTSError

__all__ = ["EmitFn", "SpeechEngine", "SpeechService", "log_outcome"]

_LOGGER = logging.getLogger(__name__)

# How long shutdown waits for a cancelled synthesis to notice its cancel event.
SHUTDOWN_GRACE_S = 5.0

T = TypeVar("T")


def _shielded(future: concurrent.futures.Future[T]) -> asyncio.Future[T]:
    """Await a thread's future without letting a cancelled waiter cancel it (wrap_future would)."""
    return asyncio.shield(asyncio.wrap_future(future))


class SpeechService:
    """Admission + queue + worker; events go to `emit`, speaking state changes to `on_speaking` (on the loop).

    `speaking` means "the local speaker is playing": requests whose audio goes to a client do
    not turn it on.
    """

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
        engine_thread: EngineThread | None = None,
    ) -> None:
        self._engine = engine
        self._player = player
        self._emit = emit
        self._on_speaking = on_speaking
        # The voice of requests that name none; `<base>/voice/set` may change it at run time.
        self.default_voice = default_voice
        self._admission = Admission(engine, config, emit, self.voice_of)
        self._queue = self._admission.queue
        self._synthesizer = Synthesizer(engine, config.max_sentence_chars, self.voice_of, cache, leveller,
                                        group_sentences=config.group_sentences)
        self._wakeup = asyncio.Event()
        self._current: Utterance | None = None
        self._speaking = False
        # One thread: the engine is not reentrant; the one that loaded it, if given (EngineThread).
        self._engine_thread = engine_thread or EngineThread()

    # --- control, called on the event loop ------------------------------------------------------

    def submit(self, request: SayRequest) -> bool:
        """Queue a request (emits `queued`) or reject it (emits `error`/`dropped`); True if queued."""
        current = self._current.request if self._current is not None else None
        if not self._admission.admit(request, current):
            return False
        if request.interrupt and self._current is not None:
            self._cancel(self._current, "interrupted")
        self._wakeup.set()
        return True

    def check(self, voice: str | None, language: str | None) -> tuple[ErrorCode, str] | None:
        """Why a request with this voice and language would be rejected (None: it would not)."""
        return self._admission.check_voice_and_language(voice, language)

    def stop_all(self, reason: str = "stop") -> None:
        """Cut the current request and drop every queued one; each gets `stopped`."""
        for request in self._queue.clear():
            self._emit_stopped(request, 0.0, reason)
        if self._current is not None:
            self._cancel(self._current, reason)

    def stop(self, request_id: str) -> bool:
        """Cancel one request, queued or speaking; an unknown id gets an `unknown_id` error."""
        if self.cancel(request_id, "stop"):
            return True
        self._emit(
            error_event(request_id, ErrorCode.UNKNOWN_ID, f"no queued or speaking request has id {request_id!r}")
        )
        _LOGGER.warning("stop: no queued or speaking request has id %r", request_id)
        return False

    def cancel(self, request_id: str, reason: str) -> bool:
        """Cut or unqueue one request (`stopped` with `reason`); False if no open request has that id."""
        current = self._current
        if current is not None and current.request.id == request_id and not current.ended:
            self._cancel(current, reason)
            return True
        request = self._queue.remove(request_id)
        if request is not None:
            self._emit_stopped(request, 0.0, reason)
            return True
        return False

    @property
    def queued(self) -> int:
        return len(self._queue)

    def voice_of(self, request: SayRequest) -> str:
        return request.voice or self.default_voice

    def _cancel(self, utterance: Utterance, reason: str) -> None:
        if utterance.stop_reason is None:
            utterance.stop_reason = reason
        utterance.cancel.set()  # the engine stops between chunks
        if utterance.out is not None:
            utterance.out.stop()  # the destination drops what it has not sent yet

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
                        self._end_with_error(self._current, ErrorCode.INTERNAL_ERROR, f"internal error: {exc}")
                finally:
                    self._current = None
        finally:
            for queued in self._queue.clear():
                self._emit_stopped(queued, 0.0, "shutdown")
            self._set_speaking(False)
            self._engine_thread.shutdown()

    async def _speak(self, request: SayRequest) -> None:
        loop = asyncio.get_running_loop()
        utterance = Utterance(request)
        self._current = utterance

        def on_first_audio(at: float) -> None:  # the destination's thread
            loop.call_soon_threadsafe(self._started, utterance, at)

        destination = request.destination if request.destination is not None else self._player
        if request.destination is not None:
            self._set_speaking(False)  # the speaker is quiet while a client's request is synthesised
        try:
            out = destination.play(request.id, request.volume, on_first_audio)
        except AudioDeviceError as exc:
            self._end_with_error(utterance, ErrorCode.AUDIO_FAILED, str(exc))
            return
        utterance.out = out
        synth = loop.run_in_executor(self._engine_thread.executor, self._synthesizer.speak, utterance, out)
        try:
            await self._finish(utterance, out, synth)
        except asyncio.CancelledError:
            self._cancel(utterance, "shutdown")
            await self._settle_after_shutdown(utterance, out, synth)
            raise

    async def _finish(self, utterance: Utterance, out: AudioOut, synth: asyncio.Future[float]) -> None:
        # The destination resolves first in every case: after end(), stop(), or a failure.
        try:
            result = await _shielded(out.result)
        except AudioDeviceError as exc:
            utterance.cancel.set()
            await self._drain(synth)
            self._end_with_error(utterance, ErrorCode.AUDIO_FAILED, str(exc))
            return
        if utterance.stop_reason is not None and result.stopped:
            # Report the cut at once; the engine may take a moment to see its cancel event.
            self._end_stopped(utterance, result.samples, utterance.stop_reason)
            await self._drain(synth)
            return
        try:
            synth_s = await asyncio.shield(synth)
        except Exception as exc:
            code, message = error_code(exc)
            if is_out_of_memory(exc):
                gc.collect()  # the failed request's tensors are unreachable now; give them back
            elif not isinstance(exc, TTSError):  # not one of the engine's own: a bug worth a traceback
                _LOGGER.exception("request %s: engine raised %s", utterance.request.id, type(exc).__name__)
            self._end_with_error(utterance, code, message)
        else:
            self._end_finished(utterance, result.samples, synth_s, result.stall_s)

    async def _drain(self, synth: asyncio.Future[float]) -> None:
        """Wait for a cancelled or failed synthesis to return (the next request needs the engine)."""
        try:
            await asyncio.shield(synth)
        except Exception as exc:
            _LOGGER.debug("synthesis ended with %s after its request ended", type(exc).__name__)

    async def _settle_after_shutdown(self, utterance: Utterance, out: AudioOut, synth: asyncio.Future[float]) -> None:
        try:
            result = await asyncio.wait_for(_shielded(out.result), SHUTDOWN_GRACE_S)
            samples = result.samples
        except (asyncio.TimeoutError, AudioDeviceError):
            samples = out.samples
        if not utterance.ended:
            self._end_stopped(utterance, samples, "shutdown")
        try:
            await asyncio.wait_for(asyncio.shield(synth), SHUTDOWN_GRACE_S)
        except asyncio.TimeoutError:
            _LOGGER.warning("synthesis did not stop within %.0f s of shutdown", SHUTDOWN_GRACE_S)
        except Exception as exc:
            _LOGGER.debug("synthesis ended with %s during shutdown", type(exc).__name__)

    # --- outcomes -------------------------------------------------------------------------------

    def _started(self, utterance: Utterance, at: float) -> None:
        if utterance.ended or utterance.first_audio_ms is not None:
            return
        utterance.first_audio_ms = round((at - utterance.request.received_at) * 1000.0, 1)
        if utterance.request.destination is None:
            self._set_speaking(True)
        request_id = utterance.request.id
        self._emit(Started(request_id, first_audio_ms=utterance.first_audio_ms, cached=utterance.first_cached))

    def _ensure_started(self, utterance: Utterance) -> None:
        # The destination's started callback is queued on the loop before its result, so this only
        # matters if the loop ran them out of order.
        out = utterance.out
        if out is not None and out.first_frame_at is not None:
            self._started(utterance, out.first_frame_at)

    def _end_finished(self, utterance: Utterance, samples: int, synth_s: float, stall_s: float) -> None:
        self._ensure_started(utterance)
        audio_s = samples / self._engine.sample_rate
        rtf = round(synth_s / audio_s, 3) if audio_s > 0 else None
        utterance.ended = True
        request = utterance.request
        self._emit(
            Finished(
                request.id,
                audio_s=round(audio_s, 3),
                synth_s=round(synth_s, 3),
                rtf=rtf,
                first_audio_ms=utterance.first_audio_ms,
                sentences=utterance.sentences,
                cached=utterance.sentences > 0 and utterance.cached == utterance.sentences,
                stall_s=stall_s,
            )
        )
        log_outcome(
            logging.INFO,
            request.id,
            "finished",
            first_audio_ms=utterance.first_audio_ms,
            rtf=rtf,
            audio_s=round(audio_s, 3),
            synth_s=round(synth_s, 3),
            stall_s=stall_s or None,
            chars=len(request.text),
            source=request.source if request.source != "mqtt" else None,
            client=request.client,
        )

    def _end_stopped(self, utterance: Utterance, samples: int, reason: str) -> None:
        self._ensure_started(utterance)
        utterance.ended = True
        audio_s = samples / self._engine.sample_rate
        self._emit_stopped(utterance.request, audio_s, reason, utterance.first_audio_ms)

    def _emit_stopped(
        self, request: SayRequest, audio_s: float, reason: str, first_audio_ms: float | None = None
    ) -> None:
        self._emit(Stopped(request.id, audio_s=round(audio_s, 3), reason=reason))
        log_outcome(
            logging.INFO,
            request.id,
            "stopped",
            reason=reason,
            first_audio_ms=first_audio_ms,
            audio_s=round(audio_s, 3),
            client=request.client,
        )

    def _end_with_error(self, utterance: Utterance, code: ErrorCode, message: str) -> None:
        self._ensure_started(utterance)
        utterance.ended = True
        self._emit(error_event(utterance.request.id, code, message))
        log_outcome(
            logging.ERROR,
            utterance.request.id,
            "error",
            code=code.value,
            first_audio_ms=utterance.first_audio_ms,
            client=utterance.request.client,
            message=repr(message),
        )

    def _set_speaking(self, speaking: bool) -> None:
        if speaking != self._speaking:
            self._speaking = speaking
            if self._on_speaking is not None:
                self._on_speaking(speaking)
