"""The engine's exceptions; callers never need torch's or huggingface_hub's.

* TTSError
  + CheckpointError       weights missing, incomplete, unreadable, or not downloadable (offline)
  + DeviceError           the configured compute device (or dtype on it) cannot be used
  + VoiceError            a voice cannot be prepared (unreadable, too short for the family, ...)
    + UnknownVoice        a request names a voice the engine does not know
  + UnsupportedLanguage   a request names a language the loaded family does not speak
  + LanguageUnavailable   a supported language whose text front-end is missing (names what to install)
  + SynthesisError        synthesis of one request failed (the engine stays usable)
    + OutOfMemory         the device ran out of memory during one request (the engine stays usable)

The daemon maps each type to one error code; it recognises them by type, never by name.
"""

from __future__ import annotations


class TTSError(Exception):
    """Base of the engine's errors."""


class CheckpointError(TTSError):
    """The checkpoint cannot be found, fetched or loaded; the message says what to do."""


class DeviceError(TTSError):
    """The compute device named by tts.device (or the dtype asked for on it) is not usable here."""


class VoiceError(TTSError):
    """A voice cannot be prepared or used; the message names the voice and why."""


class UnknownVoice(VoiceError):
    """The requested voice is not configured; `known` lists the names that are."""

    def __init__(self, name: str, known: tuple[str, ...]) -> None:
        super().__init__(f"unknown voice {name!r}; known voices: {', '.join(known)}")
        self.name = name
        self.known = known


class UnsupportedLanguage(TTSError):
    """The requested language is not one the loaded family speaks; `supported` lists those it does."""

    def __init__(self, language: str, supported: tuple[str, ...], family: str) -> None:
        super().__init__(
            f"unsupported language {language!r} for the {family} model; supported: {', '.join(supported)}"
        )
        self.language = language
        self.supported = supported
        self.family = family


class LanguageUnavailable(TTSError):
    """A supported language cannot be spoken on this machine: its text front-end is missing.

    The message names what to install or fetch; the other languages keep working.
    """

    def __init__(self, language: str, message: str) -> None:
        super().__init__(message)
        self.language = language


class SynthesisError(TTSError):
    """Synthesis of one request failed; the message names the stage."""


class OutOfMemory(SynthesisError):
    """The device ran out of memory during one request; its caches were released."""
