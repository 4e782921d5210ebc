"""The engine's exceptions; callers never need torch's or huggingface_hub's.

* TTSError
  + CheckpointError   weights missing, incomplete, unreadable, or not downloadable (offline)
  + UnknownVoice      a request names a voice the engine does not know
  + SynthesisError    synthesis of one request failed (the engine stays usable)
"""

from __future__ import annotations


class TTSError(Exception):
    """Base of the engine's errors."""


class CheckpointError(TTSError):
    """The checkpoint cannot be found, fetched or loaded; the message says what to do."""


class UnknownVoice(TTSError):
    """The requested voice is not configured; `known` lists the names that are."""

    def __init__(self, name: str, known: tuple[str, ...]) -> None:
        super().__init__(f"unknown voice {name!r}; known voices: {', '.join(known)}")
        self.name = name
        self.known = known


class SynthesisError(TTSError):
    """Synthesis of one request failed; the message names the stage."""
