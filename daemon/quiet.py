"""Keep the C libraries under PortAudio from writing over chatterd's own start-up output.

PortAudio's device probing makes ALSA and JACK print straight to file descriptor 2 (two screens
of `ALSA lib ... Unknown PCM` and `jack server is not running` on a machine without a sound
card, or without JACK). Unless logging is at DEBUG, `native_quiet()` silences them around the
probing: ALSA through its own error hook (`snd_lib_error_set_handler`, the messages go to the
debug log instead), and the rest by pointing fd 2 at /dev/null for the duration. chatterd's
own errors are raised as exceptions and reported after the block, so none of them is hidden.

The fd redirect covers the whole process while it lasts: it is only used on the thread that
starts the daemon, before other threads log (`redirect_fd=False` elsewhere, e.g. a reopen on the
player thread keeps only the ALSA hook).
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import logging
import os
import sys
from collections.abc import Iterator

_LOGGER = logging.getLogger(__name__)

# void (*snd_lib_error_handler_t)(const char *file, int line, const char *function, int err,
#                                  const char *fmt, ...): the variadic tail is not read.
_HANDLER = ctypes.CFUNCTYPE(None, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p)


def _alsa_message(file: bytes | None, line: int, function: bytes | None, err: int, fmt: bytes | None) -> None:
    _LOGGER.debug("ALSA %s:%d (%s): %s", (file or b"?").decode(errors="replace"), line,
                  (function or b"?").decode(errors="replace"), (fmt or b"").decode(errors="replace"))


_alsa_hook = _HANDLER(_alsa_message)  # kept referenced: ALSA holds the pointer for good
_alsa_hooked = False


def hook_alsa_errors() -> bool:
    """Route ALSA's error messages to the debug log for the rest of the process; False without libasound."""
    global _alsa_hooked
    if _alsa_hooked:
        return True
    name = ctypes.util.find_library("asound")
    if name is None:
        return False
    try:
        asound = ctypes.CDLL(name)
        asound.snd_lib_error_set_handler(_alsa_hook)
    except (OSError, AttributeError) as exc:
        _LOGGER.debug("cannot hook ALSA's error messages: %s", exc)
        return False
    _alsa_hooked = True
    return True


def verbose() -> bool:
    """True when the user asked to see everything (log level DEBUG)."""
    return logging.getLogger().isEnabledFor(logging.DEBUG)


@contextlib.contextmanager
def native_quiet(redirect_fd: bool = True) -> Iterator[None]:
    """Silence ALSA/JACK chatter on fd 2 inside the block, unless the log level is DEBUG."""
    if verbose():
        yield
        return
    hook_alsa_errors()
    if not redirect_fd:
        yield
        return
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        try:
            os.dup2(devnull, 2)
        finally:
            os.close(devnull)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


# Packages whose warnings are chatterd's own and always shown.
OWN_PACKAGES = ("daemon", "tts", "bench")
DEPRECATIONS = (DeprecationWarning, PendingDeprecationWarning, FutureWarning)


def filter_third_party_deprecations() -> None:
    """Hide deprecation warnings raised from other packages' modules (diffusers, torch, ...).

    They speak to those packages' callers about future releases (chatterd pins its versions), and
    would land in the journal of every start. Warnings from chatterd's own modules, and any other
    category, still show; at log level DEBUG nothing is hidden.
    """
    if verbose():
        return
    import warnings

    not_ours = r"^(?!(" + "|".join(OWN_PACKAGES) + r")(\.|$))"
    for category in DEPRECATIONS:
        warnings.filterwarnings("ignore", category=category, module=not_ours)
