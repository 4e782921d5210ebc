"""systemd integration: the unit passes `systemd-analyze verify`; sd_notify reaches a real
AF_UNIX datagram socket (path and abstract); READY=1 comes only after warm-up and the MQTT
connection, and WATCHDOG=1 at half the configured interval, from the event loop."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml
from conftest import Broker, require_tool
from fakes import FakeEngine, PacedSink
from harness import BASE, collecting, make_config, running

from daemon import systemd

REPO = Path(__file__).resolve().parent.parent
UNIT = REPO / "systemd" / "chatterd.service"
WATCHDOG_USEC = 400_000  # pings every 0.2 s


def _verify(unit_text: str, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    # verify checks that ExecStart's binary exists: point it at this checkout's console script.
    unit = tmp_path / "chatterd.service"
    unit.write_text(unit_text.replace("/opt/chatterd/.venv/bin/chatterd", str(REPO / ".venv/bin/chatterd")))
    command = ["systemd-analyze", "verify", str(unit)]
    return subprocess.run(command, capture_output=True, text=True, timeout=60)


def test_unit_passes_systemd_analyze_verify(tmp_path: Path) -> None:
    require_tool("systemd-analyze", "systemd")
    result = _verify(UNIT.read_text(), tmp_path)
    # verify only warns (exit 0) about unknown keys and bad values: any output is a failure.
    assert (result.returncode, result.stdout + result.stderr) == (0, "")
    broken = _verify(UNIT.read_text().replace("Type=notify", "Type=notifyy"), tmp_path)
    assert "Failed to parse service type" in broken.stderr  # the check above can fail


def test_unit_is_notify_with_watchdog_and_hardening_that_keeps_audio_and_gpu() -> None:
    lines = {line.strip() for line in UNIT.read_text().splitlines() if line.strip() and line[0] != "#"}
    for required in (
        "Type=notify",
        "WatchdogSec=30",
        "Restart=on-failure",
        "DevicePolicy=closed",
        "DeviceAllow=char-alsa rw",
        "DeviceAllow=char-nvidia* rw",
        "SupplementaryGroups=audio video",
        "ProtectSystem=strict",
        "NoNewPrivileges=yes",
        "StateDirectory=chatterd",
        "CacheDirectory=chatterd",
        "Environment=HF_HOME=/var/cache/chatterd/huggingface",
    ):
        assert required in lines, required
    keys = {line.split("=", 1)[0] for line in lines if "=" in line}
    # PrivateDevices hides /dev/snd and /dev/nvidia*; MemoryDenyWriteExecute breaks JIT compilers.
    assert not keys & {"PrivateDevices", "MemoryDenyWriteExecute"}


@pytest.fixture
def notify_socket(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[socket.socket]:
    path = tmp_path / "notify.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(str(path))
        sock.settimeout(5)
        monkeypatch.setenv("NOTIFY_SOCKET", str(path))
        yield sock


def test_notify_sends_one_datagram_of_lines(notify_socket: socket.socket) -> None:
    assert systemd.notify("READY=1", "STATUS=ready on chatterd/x")
    assert notify_socket.recv(4096) == b"READY=1\nSTATUS=ready on chatterd/x"


def test_notify_reaches_an_abstract_socket(monkeypatch: pytest.MonkeyPatch) -> None:
    name = f"chatterd-test-{os.getpid()}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind("\0" + name)
        sock.settimeout(5)
        monkeypatch.setenv("NOTIFY_SOCKET", "@" + name)
        assert systemd.notify("WATCHDOG=1")
        assert sock.recv(4096) == b"WATCHDOG=1"


def test_notify_outside_systemd_is_a_no_op(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    assert not systemd.notify("READY=1")


def test_watchdog_interval_follows_systemd_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WATCHDOG_USEC", "30000000")
    monkeypatch.delenv("WATCHDOG_PID", raising=False)
    assert systemd.watchdog_interval() == 30.0
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid() + 1))  # meant for another process
    assert systemd.watchdog_interval() is None
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid()))
    assert systemd.watchdog_interval() == 30.0


async def test_watchdog_pings_stop_while_the_event_loop_is_blocked(notify_socket: socket.socket) -> None:
    notify_socket.setblocking(False)
    task = asyncio.create_task(systemd.watchdog(0.1))  # a ping every 0.05 s
    await asyncio.sleep(0.3)
    time.sleep(0.5)  # a hung event loop
    before = _drain(notify_socket)
    await asyncio.sleep(0)  # the loop runs again: at most the one overdue ping
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    pings = before + _drain(notify_socket)
    # ~6 pings in the first 0.3 s, none during the 0.5 s block (10 would be due), one after it.
    assert 4 <= len(pings) <= 8 and set(pings) == {b"WATCHDOG=1"}


def _drain(sock: socket.socket) -> list[bytes]:
    out = []
    while True:
        try:
            out.append(sock.recv(4096))
        except BlockingIOError:
            return out


# --- readiness: `serve` in a subprocess, with a fake engine, against a broker that starts late ----

SERVE_SCRIPT = """
import sys, time
sys.path.insert(0, {tests!r})
from fakes import FakeEngine
from daemon import systemd
from daemon.app import serve, setup_logging
from daemon.config import load_config

class SlowWarmUp(FakeEngine):
    def warm_up(self, progress=None):
        time.sleep(0.5)
        super().warm_up(progress)
        systemd.notify("X_TEST_WARM_UP_DONE=1")  # marks the moment on the same socket
        return 0.5

config = load_config({config!r})
setup_logging(config.log)
serve(config, lambda tts: SlowWarmUp())
"""


@dataclass
class Datagram:
    at: float
    lines: list[str]


def _receive(
    sock: socket.socket, log: list[Datagram], until: str, timeout: float, count: int = 1
) -> Datagram:
    """Read datagrams into `log` until `count` lines in all of it start with `until`; the last one."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        sock.settimeout(max(0.01, deadline - time.monotonic()))
        try:
            data = sock.recv(4096)
        except TimeoutError:
            break
        datagram = Datagram(time.monotonic(), data.decode().split("\n"))
        log.append(datagram)
        seen = sum(line.startswith(until) for d in log for line in d.lines)
        if seen >= count and any(line.startswith(until) for line in datagram.lines):
            return datagram
    raise AssertionError(f"not {count} x {until!r} within {timeout} s; got {[d.lines for d in log]}")


def test_ready_only_after_warm_up_and_mqtt_then_watchdog_pings(tmp_path: Path) -> None:
    broker = Broker(tmp_path)  # not started yet: the daemon has to wait for it
    config = tmp_path / "chatterd.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "mqtt": {"host": broker.host, "port": broker.port, "site": "ready", "reconnect_min_s": 0.2,
                         "reconnect_max_s": 0.4},
                "audio": {"output": f"wav:{tmp_path / 'out.wav'}"},
            }
        )
    )
    script = SERVE_SCRIPT.format(tests=str(REPO / "tests"), config=str(config))
    sock_path = tmp_path / "notify.sock"
    log: list[Datagram] = []
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(str(sock_path))
        env = {**os.environ, "NOTIFY_SOCKET": str(sock_path), "WATCHDOG_USEC": str(WATCHDOG_USEC)}
        env.pop("WATCHDOG_PID", None)
        process = subprocess.Popen([sys.executable, "-c", script], env=env, stderr=subprocess.PIPE, text=True)
        try:
            warmed = _receive(sock, log, "X_TEST_WARM_UP_DONE=1", 60)
            # The event loop runs (watchdog pings) and the broker is down: two failed attempts.
            _receive(sock, log, "STATUS=reconnecting: MQTT broker 127.0.0.1", 10, count=2)
            _receive(sock, log, "WATCHDOG=1", 5)
            assert not any("READY=1" in d.lines for d in log), "READY=1 before the broker was reachable"
            broker.start()
            ready = _receive(sock, log, "READY=1", 15)
            assert ready.at > warmed.at
            assert any(line.startswith("STATUS=ready on chatterd/ready") for line in ready.lines)
            # The start phases, in order, each slow one announcing its time budget first.
            flat = [line for d in log for line in d.lines]
            order = [
                next(i for i, line in enumerate(flat) if line.startswith(prefix))
                for prefix in ("EXTEND_TIMEOUT_USEC=", "STATUS=loading", "STATUS=warming up",
                               "STATUS=warming up: 1/2", "STATUS=warming up: 2/2", "X_TEST_WARM_UP_DONE=1",
                               "STATUS=connecting to MQTT", "STATUS=reconnecting",
                               "READY=1")
            ]
            assert order == sorted(order), flat
            assert flat.count("READY=1") == 1
            # Watchdog: every WATCHDOG_USEC / 2 from the event loop.
            already = len(log)
            _receive(sock, log, "WATCHDOG=1", 5, count=sum("WATCHDOG=1" in d.lines for d in log) + 8)
            pings = [d.at for d in log[already:] if "WATCHDOG=1" in d.lines]
            gaps = [b - a for a, b in zip(pings, pings[1:], strict=False)]
            assert max(gaps) < WATCHDOG_USEC / 1e6, gaps  # never late enough to trip systemd
            assert sum(gaps) / len(gaps) == pytest.approx(WATCHDOG_USEC / 2e6, rel=0.3)
            process.send_signal(signal.SIGTERM)
            _receive(sock, log, "STOPPING=1", 15)
            assert process.wait(30) == 0
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()
            broker.stop()
        assert process.stderr is not None
        with process.stderr:
            stderr = process.stderr.read()
    assert "ready: speaking requests from chatterd/ready/say" in stderr
    assert "warm-up: graph 1 of 2 (decode step)" in stderr and "warm-up: graph 2 of 2 (vocoder chunk)" in stderr


# --- a manager that stops reading: the event loop must not block on its socket ------------------


def _fill(path: Path) -> int:
    """Send datagrams to `path` until its receive queue is full; how many it took."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_NONBLOCK) as sender:
        for sent in range(100_000):
            try:
                sender.sendto(b"X_TEST_FILLER=1", str(path))
            except BlockingIOError:
                return sent
    raise AssertionError("the notify socket never filled up")


@pytest.mark.timeout(30)  # a blocking send would never return
def test_notify_to_a_full_socket_drops_the_message_at_once_and_logs_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="daemon.systemd")
    path = tmp_path / "stuck.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as stuck:  # bound, never read
        stuck.bind(str(path))
        monkeypatch.setenv("NOTIFY_SOCKET", str(path))
        assert _fill(path) > 0
        started = time.monotonic()
        assert not any([systemd.notify("WATCHDOG=1") for _ in range(50)])
        assert time.monotonic() - started < 1.0  # a blocking send would hang here for good
        dropped = [r for r in caplog.records if "is full" in r.getMessage()]
        assert len(dropped) == 1, [r.getMessage() for r in caplog.records]
        stuck.setblocking(False)
        while True:  # the manager catches up
            try:
                stuck.recv(4096)
            except BlockingIOError:
                break
        assert systemd.notify("STATUS=back")
        assert stuck.recv(4096) == b"STATUS=back"
        assert any("accepts messages again" in r.getMessage() for r in caplog.records)


@pytest.mark.timeout(60)  # on a blocking send the loop would freeze in unix_wait_for_peer
async def test_requests_are_spoken_while_the_notify_socket_is_never_read(
    mosquitto: Broker, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "stuck.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as stuck:  # bound, never read
        stuck.bind(str(path))
        monkeypatch.setenv("NOTIFY_SOCKET", str(path))
        monkeypatch.setenv("WATCHDOG_USEC", "20000")  # a ping every 10 ms on top of the status lines
        monkeypatch.delenv("WATCHDOG_PID", raising=False)
        _fill(path)
        config = make_config(mosquitto, tmp_path, rate_limit_per_s=0)
        engine = FakeEngine()
        async with collecting(mosquitto) as ear, running(config, engine, PacedSink(pace=0.0)):
            await ear.wait_for(lambda r: r.topic == f"{BASE}/status" and r.payload == b"online")
            for i in range(5):
                await ear.say(f"Request number {i} is spoken.", f"stuck-{i}")
            for i in range(5):
                assert (await ear.end_of(f"stuck-{i}"))["event"] == "finished"
    assert len(engine.calls) == 5
