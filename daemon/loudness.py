"""Loudness levelling across voices: each voice's speech is brought to one target level.

Voices cloned from different reference recordings come out at different levels (a quiet
reference gives quiet speech). The leveller learns, per voice, the RMS level of its voiced
frames over everything that voice has said (an exponential average with a time constant of
`MEMORY_S` seconds of speech) and multiplies its audio by target / level, within +-`max_gain_db`.
The gain moves smoothly (a linear ramp across each chunk), so it never clicks, and a chunk whose
peaks would clip is scaled down instead. One instance serves one synthesis thread.
"""

from __future__ import annotations

import math

import numpy as np
import numpy.typing as npt

FloatPCM = npt.NDArray[np.float32]

FRAME_S = 0.02  # analysis frame
GATE_DBFS = -50.0  # frames quieter than this are pauses, not speech
MEMORY_S = 20.0  # seconds of speech the per-voice level estimate averages over
PEAK_LIMIT = 0.99


def dbfs(mean_square: float) -> float:
    return 10.0 * math.log10(max(mean_square, 1e-12))


def voiced_level(pcm: npt.NDArray[np.float32], sample_rate: int) -> tuple[float, float]:
    """(mean square of the voiced frames, seconds of voiced frames) of a mono float signal."""
    frame = max(1, int(sample_rate * FRAME_S))
    usable = len(pcm) - len(pcm) % frame
    if usable == 0:
        return 0.0, 0.0
    squares = np.square(pcm[:usable].astype(np.float64)).reshape(-1, frame).mean(axis=1)
    voiced = squares[squares > 10.0 ** (GATE_DBFS / 10.0)]
    if len(voiced) == 0:
        return 0.0, 0.0
    return float(voiced.mean()), len(voiced) * frame / sample_rate


class Leveller:
    """Per-voice gain towards `target_dbfs`; see the module docstring."""

    def __init__(self, target_dbfs: float, max_gain_db: float, sample_rate: int) -> None:
        self.target_dbfs = target_dbfs
        self.max_gain_db = max_gain_db
        self.sample_rate = sample_rate
        self._level: dict[str, float] = {}  # voice -> mean square of its voiced frames
        self._gain: dict[str, float] = {}  # voice -> gain applied at the end of its last chunk

    def gain_db(self, voice: str) -> float:
        """The gain the voice's next chunk starts from, in dB (0 for a voice not heard yet)."""
        return 20.0 * math.log10(self._gain.get(voice, 1.0))

    def process(self, voice: str, pcm: FloatPCM) -> FloatPCM:
        """`pcm` levelled for `voice` (a new array; the input is not changed)."""
        if self.max_gain_db <= 0 or len(pcm) == 0:
            return pcm
        mean_square, seconds = voiced_level(pcm, self.sample_rate)
        if seconds > 0:
            known = self._level.get(voice)
            weight = 1.0 if known is None else min(1.0, seconds / MEMORY_S)
            self._level[voice] = mean_square if known is None else known + weight * (mean_square - known)
        level = self._level.get(voice)
        if level is None:
            target_gain = self._gain.get(voice, 1.0)
        else:
            wanted_db = min(self.max_gain_db, max(-self.max_gain_db, self.target_dbfs - dbfs(level)))
            target_gain = 10.0 ** (wanted_db / 20.0)
        start_gain = self._gain.get(voice, target_gain)
        gains = np.linspace(start_gain, target_gain, len(pcm), dtype=np.float32)
        out: FloatPCM = (pcm * gains).astype(np.float32, copy=False)
        peak = float(np.abs(out).max())
        if peak > PEAK_LIMIT:
            out *= np.float32(PEAK_LIMIT / peak)
        self._gain[voice] = target_gain
        return out
