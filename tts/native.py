"""This package's C kernels (`tts/*.c`), built with the machine's own compiler, once per process.

Each is compiled at first use in a temporary directory (about half a second; nothing on disk to go
stale) with `-O3 -march=native` for this CPU's vector width (the portable build where the compiler
lacks that flag), and loaded with ctypes, which drops the GIL for each call. Debian's gcc is part
of `scripts/setup` (PyAudio builds with it); `$CC` is honoured. Without a compiler, or where the
build fails, `library` returns None, the caller runs its torch path, and the log says so once.
"""

from __future__ import annotations

import ctypes
import logging
import os
import shlex
import shutil
import subprocess
import tempfile
import threading
from pathlib import Path

log = logging.getLogger(__name__)

_libraries: dict[str, ctypes.CDLL | None] = {}  # source name -> its library (None: could not build)
_lock = threading.Lock()


def library(source: str, purpose: str) -> ctypes.CDLL | None:
    """The library built from `tts/<source>` in this process, or None (warned once per source).

    `purpose` names what falls back to torch in that warning ("decode attention", ...). Once
    tried, a lookup takes no lock: HiFT's Snakes ask on every call (72 per chunk).
    """
    if source in _libraries:
        return _libraries[source]
    with _lock:
        if source not in _libraries:
            try:
                with tempfile.TemporaryDirectory(prefix="chatterd-native-") as tmp:
                    # Loaded before the directory goes: the mapped library outlives its file.
                    _libraries[source] = ctypes.CDLL(str(_compile(Path(__file__).with_name(source), Path(tmp))))
            except (OSError, subprocess.SubprocessError) as exc:
                log.warning("%s runs in torch (slower on a CPU): the C kernel could not be built (%s): %s",
                            purpose, source, exc)
                _libraries[source] = None
        return _libraries[source]


def _compile(source: Path, directory: Path) -> Path:
    found = shutil.which("cc") or shutil.which("gcc")
    compiler = shlex.split(os.environ.get("CC", "")) or ([found] if found else [])
    if not compiler:
        raise OSError("no C compiler (cc or gcc; $CC) on PATH")
    out = directory / source.with_suffix(".so").name
    base = [*compiler, "-O3", "-std=c11", "-shared", "-fPIC", "-o", str(out), str(source), "-lm"]
    # -march=native for this machine's vector width; a compiler that lacks it gets the portable build.
    for command in (base + ["-march=native"], base):
        done = subprocess.run(command, capture_output=True, text=True, timeout=120)
        if done.returncode == 0:
            log.debug("built %s: %s", out.name, " ".join(command))
            return out
    raise OSError(f"{' '.join(compiler)} failed: {done.stderr.strip()[-500:]}")
