"""chatterd's daemon-side exceptions.

* ChatterdError
  + ConfigError        the config file is unreadable, or a key is unknown, mistyped or out of range
  + AudioDeviceError   the audio output cannot be opened or written
  + BadRequest         a payload or Wyoming event cannot be turned into a speech request (carries an error code)
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from daemon.events import ErrorCode


class ChatterdError(Exception):
    """Base of every error chatterd raises on purpose."""


class ConfigError(ChatterdError):
    """The configuration is unreadable or invalid; the message names the file and key."""


class AudioDeviceError(ChatterdError):
    """The audio output cannot be opened or written."""


class BadRequest(ChatterdError):
    """A message payload is not a valid request; `code` is the machine-readable reason."""

    def __init__(self, code: ErrorCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
