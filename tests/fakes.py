"""Test doubles for unit tests: a SpeechEngine that yields sine chunks, and a real-time-paced sink."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import numpy as np
import numpy.typing as npt

from daemon.errors import AudioDeviceError
from tts.errors import SynthesisError, UnknownVoice

FAIL = "[fail]"  # text containing this makes the engine raise SynthesisError after one chunk
CRASH = "[crash]"  # ... RuntimeError before any chunk
GHOST_VOICE = "ghost"  # listed in `voices` but unknown to stream(): exercises the engine-side check


class FakeEngine:
    """Yields one `chunk_s` chunk of a 440 Hz sine (amplitude 0.5) per word, sleeping `delay_s` first.

    Honors `cancel` between chunks; records every call's text in `calls` and the number of chunks
    each call yielded in `yielded`.
    """

    def __init__(
        self,
        sample_rate: int = 24000,
        chunk_s: float = 0.05,
        delay_s: float = 0.002,
        voices: tuple[str, ...] = ("default", "alice", GHOST_VOICE),
    ) -> None:
        self.sample_rate = sample_rate
        self.voices = voices
        self.chunk_s = chunk_s
        self.delay_s = delay_s
        self.calls: list[str] = []
        self.yielded: list[int] = []
        self.cancelled: list[bool] = []

    def chunk_samples(self) -> int:
        return int(self.sample_rate * self.chunk_s)

    def expected_samples(self, text: str) -> int:
        return len(text.split()) * self.chunk_samples()

    def stream(
        self, text: str, voice: str | None = None, cancel: threading.Event | None = None
    ) -> Iterator[npt.NDArray[np.float32]]:
        self.calls.append(text)
        self.yielded.append(0)
        self.cancelled.append(False)
        index = len(self.calls) - 1
        if voice == GHOST_VOICE:
            raise UnknownVoice(voice, tuple(v for v in self.voices if v != GHOST_VOICE))
        if CRASH in text:
            raise RuntimeError("engine crashed")
        n = self.chunk_samples()
        for word in range(len(text.split())):
            time.sleep(self.delay_s)
            if cancel is not None and cancel.is_set():
                self.cancelled[index] = True
                return
            if word == 1 and FAIL in text:
                raise SynthesisError("vocoder stage failed")
            t = (np.arange(n) + word * n) / self.sample_rate
            yield (0.5 * np.sin(2 * np.pi * 440.0 * t)).astype(np.float32)
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
