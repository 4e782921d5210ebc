"""The streaming chunk schedule: how many speech tokens each vocoder call takes."""

from __future__ import annotations


class ChunkSchedule:
    """Token counts per chunk, sized from the audio queued ahead of playback.

    The first chunk is small, for first audio. After each chunk the schedule updates a model of the
    player's buffer (playback starts with the first chunk and stalls when the buffer runs dry) and
    of the synthesis rate (seconds per token between chunk emissions, smoothed).
    - Synthesis faster than playback: the next chunk is as large as the buffer covers: n tokens are
      ready in about n * rate seconds, so n = buffer * `headroom` / rate, clamped to `maximum`;
      larger chunks amortise the voice prompt and context that every vocoder call repeats. When
      the buffer cannot cover `minimum` tokens, `minimum` (the shortest stall; the buffer then
      builds up).
    - Synthesis slower than playback: stalls cannot be avoided, only made fewer, so chunks grow
      by `growth` up to `maximum` and do not shrink while it stays slower (or larger if the
      buffer covers more). Sizing these from the buffer would shrink them, and a smaller chunk
      costs more per token (the repeated prompt and context), which slows synthesis further:
      pipelined on a 2-core CPU that settled on 27-token chunks whose vocoding, not T3, set the
      pace.
    Without timings (`emitted` never called) it is geometric: first, minimum, minimum * growth, ...
    `queued_s`: audio already queued ahead of playback when the request starts (the previous
    sentence's tail); it plays while the first chunk is synthesised.
    """

    def __init__(self, first: int, minimum: int, growth: float, maximum: int, headroom: float = 0.5,
                 queued_s: float = 0.0) -> None:
        self.first = first
        self.minimum = minimum
        self.growth = growth
        self.maximum = maximum
        self.headroom = headroom
        self.sizes: list[int] = []  # every size handed out, in order
        self.buffered_s = max(0.0, queued_s)  # audio queued ahead of playback after the last chunk (modelled)
        self._last_at = 0.0
        self._rate: float | None = None  # synthesis seconds per token, smoothed
        self._tokens = 0
        self._audio_s = 0.0

    def next(self) -> int:
        if not self.sizes:
            size = self.first
        elif self._rate is None:  # blind (no timings): geometric
            size = self._grown()
        else:
            fit = int(self.buffered_s * self.headroom / self._rate)
            if self._rate >= self._audio_s / self._tokens:  # slower than playback
                size = min(self.maximum, max(fit, self._grown()))
            else:
                size = min(self.maximum, max(fit, self.minimum))
        self.sizes.append(size)
        return size

    def _grown(self) -> int:
        """The size after the last one when growing: `minimum` after the first chunk, then x `growth`."""
        if len(self.sizes) == 1:
            return min(self.maximum, self.minimum)
        return min(self.maximum, max(self.minimum, self.sizes[-1] + 1, int(self.sizes[-1] * self.growth)))

    def emitted(self, tokens: int, audio_s: float, at: float) -> None:
        """Record a chunk of `tokens` tokens and `audio_s` seconds of audio handed to the player `at`
        seconds after the request started."""
        elapsed = at - self._last_at
        self._last_at = at
        # Playback starts with the first chunk (or plays what was queued before it) and stalls,
        # rather than going negative, when dry.
        self.buffered_s = max(0.0, self.buffered_s - elapsed) + audio_s
        if tokens > 0:
            self._tokens += tokens
            self._audio_s += audio_s
            rate = elapsed / tokens
            self._rate = rate if self._rate is None else 0.5 * (self._rate + rate)
