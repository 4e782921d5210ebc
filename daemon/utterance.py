"""The synthesis-thread side of one request: sentences -> phrase cache or engine -> levelling -> destination.

A request is spoken sentence by sentence (`tts.text.split_sentences`; with `group_sentences` the
sentences after the first share engine calls, `tts.text.group_sentences`) into one `AudioOut`: while
the destination plays (or sends) sentence n, this thread already produces sentence n+1 (and the
engine, told the next sentence, decodes its tokens while it vocodes this one), and the request
still gets one `started` and one `finished`. A stop or cancel is seen between chunks and
between sentences, so the engine is free again within one chunk. With a phrase cache, a sentence
heard before comes from disk instead of the engine (`cached` in `started`/`finished`).

Where the audio goes is the request's `destination`: the local `Player` (None on the request),
or a Wyoming connection. Both hand out `AudioOut`s with the same contract, so nothing here or in
the worker knows which front-end a request came from. Audio leaves this module as float32 in
the engine's range; the destination clips it once, in `daemon.player.output_stage`.
"""

from __future__ import annotations

import concurrent.futures
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np
import numpy.typing as npt

from daemon.engine import SpeechEngine
from daemon.loudness import Leveller
from daemon.messages import SayRequest
from daemon.phrase_cache import PhraseCache
from daemon.player import PlaybackResult
from tts.text import group_sentences, normalize, split_sentences

FloatPCM = npt.NDArray[np.float32]


class AudioOut(Protocol):
    """One request's audio on its way out (daemon.player.Playback is one). Any thread may call
    feed/end/stop; `result` resolves once everything fed has gone out (after end) or was cut
    (after stop), or holds an AudioDeviceError."""

    result: concurrent.futures.Future[PlaybackResult]
    first_frame_at: float | None  # time.monotonic() when the first frame went out
    samples: int  # samples gone out so far

    def feed(self, pcm: npt.ArrayLike) -> None: ...
    def end(self) -> None: ...
    def stop(self) -> None: ...

    @property
    def queued_seconds(self) -> float:
        """Audio fed but not yet played (the engine sizes its chunks by it)."""
        ...


class Destination(Protocol):
    """Where a request's audio goes: the local Player, or a Wyoming connection."""

    def play(
        self, request_id: str, volume: float = 1.0, on_first_audio: Callable[[float], None] | None = None
    ) -> AudioOut:
        """A new AudioOut; `on_first_audio(monotonic_time)` runs (on any thread) after the first frame."""
        ...


@dataclass(eq=False)
class Utterance:
    """The request being spoken, and what the worker and the synthesis thread know about it so far."""

    request: SayRequest
    cancel: threading.Event = field(default_factory=threading.Event)
    out: AudioOut | None = None
    stop_reason: str | None = None  # set by stop/stop_all/interrupt/shutdown/disconnect
    first_audio_ms: float | None = None
    ended: bool = False  # its end event has been emitted
    sentences: int = 0  # sentences handed to the destination so far
    cached: int = 0  # ... of which came from the phrase cache
    first_cached: bool = False  # the first sentence came from the phrase cache


class Synthesizer:
    """Speaks an Utterance into its AudioOut; runs on the one synthesis thread (see the module docstring)."""

    def __init__(
        self,
        engine: SpeechEngine,
        max_sentence_chars: int,
        voice_of: Callable[[SayRequest], str],
        cache: PhraseCache | None = None,
        leveller: Leveller | None = None,
        *,
        group_sentences: bool,
    ) -> None:
        self._engine = engine
        self._max_sentence_chars = max_sentence_chars
        self._group_sentences = group_sentences  # tts.text.group_sentences after the split
        self._voice_of = voice_of
        self._cache = cache
        self._leveller = leveller

    def speak(self, utterance: Utterance, out: AudioOut) -> float:
        """Speak the request sentence by sentence into `out`; returns the synthesis wall time.

        Chunks are handed over as they come, so the next sentence is synthesised while the
        previous one plays.
        """
        started = time.perf_counter()
        request = utterance.request
        voice = self._voice_of(request)
        sentences = split_sentences(request.text, self._max_sentence_chars, request.language) or [request.text]
        if self._group_sentences:
            sentences = group_sentences(sentences, self._max_sentence_chars, request.language)
        try:
            for index, sentence in enumerate(sentences):
                if utterance.cancel.is_set():
                    break
                following = sentences[index + 1] if index + 1 < len(sentences) else None
                self._sentence(utterance, out, sentence, voice, following)
        except BaseException:
            out.stop()  # cut the audio of a failed request; the worker reports the error
            raise
        synth_s = time.perf_counter() - started
        out.end()
        return synth_s

    def _sentence(self, utterance: Utterance, out: AudioOut, sentence: str, voice: str, following: str | None) -> None:
        """Speak one sentence (group); `following` is the request's next one, which the engine may
        start decoding while it finishes this one (unless the phrase cache has it)."""
        cache = self._cache
        language = utterance.request.language
        key = cache.key(normalize(sentence), voice, language) if cache is not None else None
        if cache is not None and following is not None and cache.key(normalize(following), voice, language) in cache:
            following = None
        if cache is not None and key is not None:
            audio = cache.get(key)
            if audio is not None:
                utterance.first_cached = utterance.first_cached or utterance.sentences == 0
                utterance.sentences += 1
                utterance.cached += 1
                out.feed(audio)
                return
        utterance.sentences += 1
        parts: list[FloatPCM] = []
        chunks = self._engine.stream(sentence, voice, language, utterance.cancel, queued_s=out.queued_seconds,
                                     then=following)
        try:
            for chunk in chunks:
                if utterance.cancel.is_set():
                    return
                if self._leveller is not None:
                    chunk = self._leveller.process(voice, chunk)
                out.feed(chunk)
                if key is not None:
                    parts.append(chunk)
        finally:
            close = getattr(chunks, "close", None)
            if close is not None:
                close()  # a generator left early releases the engine now, not when collected
        if cache is not None and key is not None and parts and not utterance.cancel.is_set():
            cache.put(key, np.concatenate(parts))
