"""The phrase cache: synthesised sentences kept on disk as 16-bit mono WAV files.

Home automation repeats the same announcements all day; a repeated sentence is read from disk
and played at once instead of being synthesised again. An entry's key is a hash of the
normalised sentence, the voice name, the language and the engine's `identity()` (a digest of
everything else that shapes the audio: family, checkpoint files, synthesis settings, voice
recordings), so changing any of them never plays stale audio. The cache is bounded by `max_bytes`; the least
recently used entries (file modification time, refreshed on every hit) are evicted first.

Writes go to a temporary file renamed into place, so a crash never leaves a torn entry. Only the
synthesis thread calls `get`/`put`; a lock makes the index safe anyway.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
import threading
import wave
from pathlib import Path

import numpy as np
import numpy.typing as npt

from daemon.player import output_stage, to_int16

_LOGGER = logging.getLogger(__name__)

FloatPCM = npt.NDArray[np.float32]

class PhraseCache:
    """Sentence audio on disk under `directory`; see the module docstring."""

    def __init__(self, directory: Path, max_bytes: int, sample_rate: int, identity: str) -> None:
        self.directory = directory
        self.max_bytes = max_bytes
        self.sample_rate = sample_rate
        self._identity = identity
        self._lock = threading.Lock()
        directory.mkdir(parents=True, exist_ok=True)
        self._index: dict[str, tuple[int, float]] = {}  # key -> (bytes, last use)
        for path in directory.glob("*.wav"):
            stat = path.stat()
            self._index[path.stem] = (stat.st_size, stat.st_mtime)
        with self._lock:
            self._evict()
        _LOGGER.info(
            "phrase cache %s: %d phrases, %.1f MB of %.1f MB",
            directory,
            len(self._index),
            self.size_bytes / 1e6,
            max_bytes / 1e6,
        )

    @property
    def size_bytes(self) -> int:
        return sum(size for size, _ in self._index.values())

    def __len__(self) -> int:
        return len(self._index)

    def key(self, text: str, voice: str, language: str | None = None) -> str:
        """The entry name of a normalised sentence spoken by `voice` in `language` (None = the default)."""
        blob = json.dumps([self._identity, voice, language, text], ensure_ascii=False)
        return hashlib.sha256(blob.encode("utf-8")).hexdigest()[:40]

    def __contains__(self, key: str) -> bool:
        """Whether `key` has an entry (that `get` may still find unreadable)."""
        with self._lock:
            return key in self._index

    def get(self, key: str) -> FloatPCM | None:
        """The cached audio (float32 mono), or None; a hit becomes the most recently used entry."""
        path = self._path(key)
        with self._lock:
            if key not in self._index:
                return None
            try:
                with wave.open(str(path), "rb") as wav:
                    if wav.getframerate() != self.sample_rate or wav.getsampwidth() != 2:
                        raise ValueError("unexpected format")
                    frames = wav.readframes(wav.getnframes())
                os.utime(path)
            except (OSError, EOFError, ValueError, wave.Error) as exc:
                _LOGGER.warning("phrase cache: dropping unreadable %s: %s", path.name, exc)
                self._remove(key)
                return None
            self._index[key] = (self._index[key][0], path.stat().st_mtime)
        pcm: FloatPCM = np.frombuffer(frames, dtype="<i2").astype(np.float32) / np.float32(32767.0)
        return pcm

    def put(self, key: str, pcm: FloatPCM) -> None:
        """Store a phrase's audio (what was played), then evict beyond the size bound.

        It goes through the output stage first, as on its way out: unclipped samples beyond
        [-1, 1] (levelling off) would wrap around in 16 bits, and a replay would differ from the
        first playing."""
        data = to_int16(output_stage(pcm)).astype("<i2").tobytes()
        try:
            fd, tmp = tempfile.mkstemp(dir=self.directory, suffix=".tmp")
            with os.fdopen(fd, "wb") as handle, wave.open(handle, "wb") as wav:
                wav.setnchannels(1)
                wav.setsampwidth(2)
                wav.setframerate(self.sample_rate)
                wav.writeframes(data)
            os.replace(tmp, self._path(key))
        except OSError as exc:
            _LOGGER.warning("phrase cache: cannot store a phrase in %s: %s", self.directory, exc)
            return
        stat = self._path(key).stat()
        with self._lock:
            self._index[key] = (stat.st_size, stat.st_mtime)
            self._evict()

    def _evict(self) -> None:
        total = self.size_bytes
        for key, (size, _) in sorted(self._index.items(), key=lambda item: item[1][1]):
            if total <= self.max_bytes:
                break
            self._remove(key)
            total -= size

    def _remove(self, key: str) -> None:
        self._index.pop(key, None)
        try:
            self._path(key).unlink()
        except FileNotFoundError:
            pass

    def _path(self, key: str) -> Path:
        return self.directory / f"{key}.wav"
