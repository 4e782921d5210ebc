"""What the daemon needs from a TTS engine, and how the engine's failures become error codes.

`tts.engine.StreamingTTS` provides `SpeechEngine`; tests use `tests.fakes.FakeEngine`. The
daemon never imports torch: engine failures are recognised by their `tts.errors` type (and an
out-of-memory error also by the name of torch's class, anywhere in the cause chain).
"""

from __future__ import annotations

import concurrent.futures
import threading
from collections.abc import Callable, Iterator
from typing import Protocol, TypeVar

import numpy as np
import numpy.typing as npt

from daemon.events import ErrorCode
from tts.errors import (
    CheckpointError,
    DeviceError,
    LanguageUnavailable,
    OutOfMemory,
    SynthesisError,
    UnknownVoice,
    UnsupportedLanguage,
    VoiceError,
)


class SpeechEngine(Protocol):
    """The engine as the speech core and the front-ends see it."""

    @property
    def sample_rate(self) -> int: ...

    @property
    def voices(self) -> tuple[str, ...]:
        """Known voice names, "default" included."""
        ...

    @property
    def languages(self) -> tuple[str, ...]:
        """ISO codes of the languages the loaded model speaks."""
        ...

    @property
    def default_language(self) -> str:
        """The language of a request that names none (tts.language)."""
        ...

    @property
    def model(self) -> str:
        """The loaded family member's name: "turbo", "original" or "multilingual"."""
        ...

    def identity(self) -> str:
        """A stable digest of everything that changes the audio (model, checkpoint, settings, voices)."""
        ...

    def stream(
        self,
        text: str,
        voice: str | None = None,
        language: str | None = None,
        cancel: threading.Event | None = None,
        *,
        queued_s: float = 0.0,
        then: str | None = None,
    ) -> Iterator[npt.NDArray[np.float32]]:
        """Yield float32 mono PCM chunks while synthesis continues; stop early once `cancel` is set.

        `language` None = `default_language`. `queued_s`: audio of the same request still queued
        for playback (earlier sentences); the engine may size its chunks by it. `then`: the text
        this request speaks next (same voice and language), which the engine may start on early.
        Raises the `tts.errors` types mapped by `error_code`.
        """
        ...


class WarmableEngine(SpeechEngine, Protocol):
    def warm_up(self, progress: Callable[[int, int, str], None] | None = None) -> float:
        """Compile and run every shape the hot path uses; returns the seconds it took.

        `progress(done, total, what)` after each warmed graph or shape."""
        ...


T = TypeVar("T")


class EngineThread:
    """The one thread the daemon runs its engine on: loading, warm-up and every synthesis.

    Why one thread: torch's CPU kernels run on OpenMP (GNU libgomp in torch's wheels), and each
    thread that runs a multi-threaded operator keeps its own team of OpenMP workers for life. Once
    the process holds more workers than it has CPUs (the main thread's from loading plus a serving
    thread's is already too many on two cores), libgomp makes every idle worker give up spinning
    after 100 spins instead of ~300,000, so each parallel region wakes its team through the kernel:
    a model loaded on the main thread and served from another synthesised its first chunk 30-50%
    slower on a 2-core CPU (prefill, T3 steps, flow and HiFT alike; `chatterd bench threads`).
    The engine's own T3 thread (pipelined decoding) comes and goes with each request and, on two
    cores, runs single-threaded, so it adds no workers (tts.engine).
    """

    def __init__(self) -> None:
        self.executor = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="chatterd-engine")

    def call(self, fn: Callable[..., T], *args: object) -> T:
        """Run `fn(*args)` on the engine thread and wait for it (start-up, before the event loop)."""
        return self.executor.submit(fn, *args).result()

    def shutdown(self) -> None:
        self.executor.shutdown(wait=False, cancel_futures=True)


def is_out_of_memory(exc: BaseException) -> bool:
    """OutOfMemory, MemoryError or torch's OutOfMemoryError (also as a cause), without importing torch."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, (OutOfMemory, MemoryError)) or type(seen).__name__ == "OutOfMemoryError":
            return True
        seen = seen.__cause__
    return False


# Most specific first: the first isinstance match wins.
_CODES: tuple[tuple[type[BaseException], ErrorCode], ...] = (
    (UnknownVoice, ErrorCode.UNKNOWN_VOICE),
    (VoiceError, ErrorCode.VOICE_FAILED),
    (UnsupportedLanguage, ErrorCode.UNSUPPORTED_LANGUAGE),
    (LanguageUnavailable, ErrorCode.LANGUAGE_UNAVAILABLE),
    (SynthesisError, ErrorCode.SYNTHESIS_FAILED),
    (DeviceError, ErrorCode.SYNTHESIS_FAILED),
    (CheckpointError, ErrorCode.SYNTHESIS_FAILED),
)


def error_code(exc: BaseException) -> tuple[ErrorCode, str]:
    """The error code and message of a request whose synthesis raised `exc`."""
    if is_out_of_memory(exc):
        return ErrorCode.OUT_OF_MEMORY, f"synthesis ran out of memory: {exc}"
    for kind, code in _CODES:
        if isinstance(exc, kind):
            if code is ErrorCode.SYNTHESIS_FAILED:
                return code, f"synthesis failed: {exc}"
            return code, str(exc)
    return ErrorCode.SYNTHESIS_FAILED, f"synthesis failed: {type(exc).__name__}: {exc}"
