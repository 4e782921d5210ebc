"""Shared fixtures: a real Mosquitto broker, a headless ALSA capture device, a fake engine.

Reuse them from any test module (pytest finds them here):

* `mosquitto` -> `Broker`: a private `mosquitto` on a free loopback port, anonymous access, no
  persistence, fresh per test (no retained messages leak between tests). `broker.host`,
  `broker.port`; `broker.stop()` / `broker.start()` restart it on the same port (outage tests).
  `Broker(workdir, persistence=True, extra_config=...)` builds variants (sessions kept across
  restarts; password files, TLS listeners): files the broker reads go in `broker.state_dir`,
  which belongs to the user mosquitto runs as (started as root, it drops to `mosquitto`).
* `alsa_capture` -> `AlsaCapture`: an ALSA config in a per-test `XDG_CONFIG_HOME` whose default
  PCM converts anything to S16_LE 24000 Hz mono and writes it raw to `capture.raw_path` (the
  `null` slave discards it afterwards; no sound card needed, and writes are not paced).
  The fixture also sets XDG_CONFIG_HOME in this process (PortAudio reads the ALSA config when a
  `PyAudio()` is created, so create the sink after the fixture). For a subprocess pass
  `env=capture.env`. After the audio stream is closed, `capture.samples()` returns the int16
  samples played (`read_raw_int16(path)` does the same for any raw file).
* `require_tool(name, package)` / `require_module(name, install)`: skip a test whose tool or
  module is missing, with the reason; in CI (`CI=true`) the same call fails the test instead, so
  a CI image that lost mosquitto cannot pass by skipping everything that needs it.
* `fake_engine` -> `tests.fakes.FakeEngine` (unit tests only; the end-to-end tests use the real,
  random-weight model: `checkpoint_dir`, `engine` and `t3_fp32` come from tests/model_fixtures.py).
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest
from fakes import FakeEngine
from model_fixtures import checkpoint_dir, engine  # noqa: F401  (session fixtures for model tests)

CAPTURE_RATE = 24000

ASOUNDRC = """\
pcm.!default {{
    type plug
    slave {{
        pcm "tts_capture"
        format S16_LE
        rate {rate}
        channels 1
    }}
}}
pcm.tts_capture {{
    type file
    slave.pcm "null"
    file "{path}"
    format "raw"
}}
"""


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() in ("1", "true", "yes")


def _missing(reason: str) -> None:
    if in_ci():
        pytest.fail(f"{reason} (CI=true: a missing tool fails the run instead of skipping)", pytrace=False)
    pytest.skip(reason)


def require_tool(name: str, package: str | None = None) -> str:
    """The path of executable `name`; skips the test without it (fails it in CI)."""
    path = shutil.which(name)
    if path is None:
        _missing(f"{name} is not installed (Debian package {package or name})")
    assert path is not None
    return path


def require_module(name: str, install: str) -> None:
    """Skips the test when Python module `name` cannot be imported (fails it in CI); `install` says how."""
    if importlib.util.find_spec(name) is None:
        _missing(f"Python module {name} is not installed ({install})")


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def read_raw_int16(path: Path) -> npt.NDArray[np.int16]:
    """Samples of a raw S16_LE mono capture file (empty if the file does not exist)."""
    if not path.exists():
        return np.zeros(0, dtype=np.int16)
    return np.frombuffer(path.read_bytes(), dtype="<i2").astype(np.int16)


class Broker:
    """A mosquitto process on 127.0.0.1:port; see the module docstring."""

    def __init__(
        self,
        workdir: Path,
        persistence: bool = False,
        extra_config: str = "allow_anonymous true\n",
        state_dir: Path | None = None,
    ) -> None:
        self.host = "127.0.0.1"
        self.port = free_port()
        self.state_dir = state_dir if state_dir is not None else workdir
        lines = [f"listener {self.port} 127.0.0.1"]
        if persistence:
            lines += ["persistence true", f"persistence_location {self.state_dir}/", "autosave_interval 1"]
        else:
            lines.append("persistence false")
        self.config = workdir / "mosquitto.conf"
        self.config.write_text("\n".join(lines) + "\n" + extra_config)
        self.log = workdir / "mosquitto.log"
        self._process: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 10.0) -> None:
        with self.log.open("ab") as log:
            self._process = subprocess.Popen(
                ["mosquitto", "-c", str(self.config)], stdout=log, stderr=subprocess.STDOUT
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                raise RuntimeError(f"mosquitto exited: {self.log.read_text(errors='replace')}")
            try:
                socket.create_connection((self.host, self.port), timeout=0.2).close()
                return
            except OSError:
                time.sleep(0.02)
        raise RuntimeError(f"mosquitto did not accept connections on port {self.port} within {timeout} s")

    def stop(self) -> None:
        if self._process is not None and self._process.poll() is None:
            self._process.terminate()
            try:
                self._process.wait(5)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()
        self._process = None


@pytest.fixture
def broker_state_dir() -> Iterator[Path]:
    """A folder the broker can read and write after dropping root (pytest's tmp is root-only)."""
    path = Path(tempfile.mkdtemp(prefix="chatterd-mosquitto-"))
    if os.geteuid() == 0:
        shutil.chown(path, "mosquitto", "mosquitto")
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def give_to_broker(path: Path) -> None:
    """Make a file in `broker_state_dir` readable by mosquitto's own user."""
    if os.geteuid() == 0:
        shutil.chown(path, "mosquitto", "mosquitto")


@pytest.fixture
def mosquitto(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Broker]:
    """A running, private mosquitto broker (see Broker)."""
    require_tool("mosquitto")
    broker = Broker(tmp_path_factory.mktemp("mosquitto"))
    broker.start()
    try:
        yield broker
    finally:
        broker.stop()


@dataclass(frozen=True)
class AlsaCapture:
    """A headless ALSA default device that records to `raw_path` (see the module docstring)."""

    config_home: Path  # the XDG_CONFIG_HOME holding alsa/asoundrc
    raw_path: Path
    env: dict[str, str]  # os.environ plus XDG_CONFIG_HOME, for subprocesses
    rate: int = CAPTURE_RATE

    def samples(self) -> npt.NDArray[np.int16]:
        return read_raw_int16(self.raw_path)


@pytest.fixture
def alsa_capture(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> AlsaCapture:
    """ALSA's default PCM captured to a raw file; XDG_CONFIG_HOME is set in-process too."""
    root = tmp_path_factory.mktemp("alsa")
    config_home = root / "config"
    (config_home / "alsa").mkdir(parents=True)
    raw_path = root / "capture.raw"
    (config_home / "alsa" / "asoundrc").write_text(ASOUNDRC.format(rate=CAPTURE_RATE, path=raw_path))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(config_home))
    env = {**os.environ, "XDG_CONFIG_HOME": str(config_home)}
    return AlsaCapture(config_home=config_home, raw_path=raw_path, env=env)


@pytest.fixture
def fake_engine() -> FakeEngine:
    return FakeEngine()
