"""Test doubles for unit tests: a SpeechEngine that yields sine chunks, and a real-time-paced sink."""
# FakeEngine follows daemon.engine.SpeechEngine: voices, languages, default_language, family,
# identity(), stream(text, voice, language, cancel, queued_s=), warm_up(progress=).

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import numpy.typing as npt

from daemon.errors import AudioDeviceError
from tts.errors import SynthesisError, UnknownVoice, UnsupportedLanguage

FAIL = "[fail]"  # text containing this makes the engine raise SynthesisError after one chunk
CRASH = "[crash]"  # ... RuntimeError before any chunk
GHOST_VOICE = "ghost"  # listed in `voices` but unknown to stream(): exercises the engine-side check


class FakeEngine:
    """Yields one `chunk_s` chunk of a 440 Hz sine (amplitude 0.5) per word, sleeping `delay_s` first.

    Honors `cancel` between chunks; records every call's text in `calls`, its voice in `voices_used`,
    its language in `languages_used`, the audio it was told was still queued in `queued_s`, the
    next text it was told of in `thens`,
    the number of chunks each call yielded in `yielded`, and when each call returned (or raised)
    in `returned_at` (time.monotonic()); `running` is True while a call is in progress.
    `first_delay_s` is slept once per call before the first chunk (a model's time to first audio);
    `amplitudes` gives a voice its own sine amplitude (loudness differences between voices).
    """

    def __init__(
        self,
        sample_rate: int = 24000,
        chunk_s: float = 0.05,
        delay_s: float = 0.002,
        voices: tuple[str, ...] = ("default", "alice", GHOST_VOICE),
        first_delay_s: float = 0.0,
        amplitudes: dict[str, float] | None = None,
        languages: tuple[str, ...] = ("en",),
        family: str = "turbo",
    ) -> None:
        self.sample_rate = sample_rate
        self.voices = voices
        self.languages = languages
        self.default_language = languages[0]
        self.model = family
        self.languages_used: list[str | None] = []
        self.chunk_s = chunk_s
        self.delay_s = delay_s
        self.calls: list[str] = []
        self.yielded: list[int] = []
        self.cancelled: list[bool] = []
        self.voices_used: list[str | None] = []
        self.queued_s: list[float] = []
        self.thens: list[str | None] = []  # the `then` of each call
        self.returned_at: list[float] = []
        self.running = False
        self.first_delay_s = first_delay_s
        self.amplitudes = amplitudes or {}
        self.warmed = 0

    WARM_UP_GRAPHS = ("decode step", "vocoder chunk")

    def warm_up(self, progress: Callable[[int, int, str], None] | None = None) -> float:
        """Nothing to compile; counts the calls (`warmed`) and reports two "graphs" to `progress`."""
        self.warmed += 1
        for done, what in enumerate(self.WARM_UP_GRAPHS, 1):
            if progress is not None:
                progress(done, len(self.WARM_UP_GRAPHS), what)
        return 0.0

    def identity(self) -> str:
        return f"fake:{self.model}:{self.sample_rate}:{self.chunk_s}:{','.join(self.voices)}"

    def chunk_samples(self) -> int:
        return int(self.sample_rate * self.chunk_s)

    def expected_samples(self, text: str) -> int:
        return len(text.split()) * self.chunk_samples()

    def stream(
        self, text: str, voice: str | None = None, language: str | None = None,
        cancel: threading.Event | None = None, *, queued_s: float = 0.0, then: str | None = None,
    ) -> Iterator[npt.NDArray[np.float32]]:
        self.calls.append(text)
        self.thens.append(then)
        self.queued_s.append(queued_s)
        self.voices_used.append(voice)
        self.languages_used.append(language)
        if language is not None and language not in self.languages:
            raise UnsupportedLanguage(language, self.languages, self.model)
        self.yielded.append(0)
        self.cancelled.append(False)
        self.running = True
        try:
            yield from self._stream(text, voice, cancel, len(self.calls) - 1)
        finally:
            self.running = False
            self.returned_at.append(time.monotonic())

    def _stream(
        self, text: str, voice: str | None, cancel: threading.Event | None, index: int
    ) -> Iterator[npt.NDArray[np.float32]]:
        if voice == GHOST_VOICE:
            raise UnknownVoice(voice, tuple(v for v in self.voices if v != GHOST_VOICE))
        if CRASH in text:
            raise RuntimeError("engine crashed")
        n = self.chunk_samples()
        amplitude = self.amplitudes.get(voice or "default", 0.5)
        time.sleep(self.first_delay_s)
        for word in range(len(text.split())):
            time.sleep(self.delay_s)
            if cancel is not None and cancel.is_set():
                self.cancelled[index] = True
                return
            if word == 1 and FAIL in text:
                raise SynthesisError("vocoder stage failed")
            t = (np.arange(n) + word * n) / self.sample_rate
            yield (amplitude * np.sin(2 * np.pi * 440.0 * t)).astype(np.float32)
            self.yielded[index] += 1


class PacedSink:
    """Collects what is written, taking as long as playing it would (times `pace`)."""

    def __init__(self, sample_rate: int = 24000, pace: float = 1.0) -> None:
        self.sample_rate = sample_rate
        self.pace = pace
        self.written: list[npt.NDArray[np.float32]] = []
        self.closed = False
        self.fail = False  # set True to make writes raise AudioDeviceError

    def write(self, pcm: npt.NDArray[np.float32]) -> None:
        if self.fail:
            raise AudioDeviceError("device unplugged")
        time.sleep(len(pcm) / self.sample_rate * self.pace)
        self.written.append(pcm.copy())

    def samples(self) -> npt.NDArray[np.float32]:
        return np.concatenate(self.written) if self.written else np.zeros(0, np.float32)

    def close(self) -> None:
        self.closed = True


class FaultyEngine:
    """Wraps any engine and injects a fault into the requests whose text contains `marker`.

    The fault (an exception instance, e.g. MemoryError()) is raised after `after_chunks` chunks
    of the wrapped engine's real stream, which is closed first, as a failing engine would leave
    it. Everything else passes through; `injected` counts the faults raised.
    """

    def __init__(self, inner: Any, marker: str, fault: BaseException, after_chunks: int = 1) -> None:
        self.inner = inner
        self.marker = marker
        self.fault = fault
        self.after_chunks = after_chunks
        self.injected = 0

    @property
    def sample_rate(self) -> int:
        return int(self.inner.sample_rate)

    @property
    def voices(self) -> tuple[str, ...]:
        return tuple(self.inner.voices)

    @property
    def languages(self) -> tuple[str, ...]:
        return tuple(self.inner.languages)

    @property
    def default_language(self) -> str:
        return str(self.inner.default_language)

    @property
    def model(self) -> str:
        return str(self.inner.model)

    def identity(self) -> str:
        return str(self.inner.identity())

    def warm_up(self, progress: Callable[[int, int, str], None] | None = None) -> float:
        return float(self.inner.warm_up(progress=progress))

    def stream(
        self, text: str, voice: str | None = None, language: str | None = None,
        cancel: threading.Event | None = None, *, queued_s: float = 0.0, then: str | None = None,
    ) -> Iterator[npt.NDArray[np.float32]]:
        chunks = self.inner.stream(text, voice, language, cancel, queued_s=queued_s, then=then)
        if self.marker not in text:
            yield from chunks
            return
        try:
            for index, chunk in enumerate(chunks):
                if index == self.after_chunks:
                    break
                yield chunk
        finally:
            chunks.close()
        self.injected += 1
        raise self.fault
