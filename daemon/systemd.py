"""sd_notify without a dependency: READY=1 / STATUS= / STOPPING=1 / WATCHDOG=1 over $NOTIFY_SOCKET.

Outside systemd (no NOTIFY_SOCKET) every call is a no-op, so the daemon runs the same by hand.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket

_LOGGER = logging.getLogger(__name__)


def notify(*lines: str) -> bool:
    """Send state lines to systemd; True if they were sent."""
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return False
    if address.startswith("@"):
        address = "\0" + address[1:]  # abstract socket namespace
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.connect(address)
            sock.sendall("\n".join(lines).encode())
    except OSError as exc:
        _LOGGER.warning("sd_notify to %s failed: %s", os.environ.get("NOTIFY_SOCKET"), exc)
        return False
    return True


def watchdog_interval() -> float | None:
    """Seconds between required WATCHDOG=1 pings, or None when systemd's watchdog is off for us."""
    usec = os.environ.get("WATCHDOG_USEC")
    pid = os.environ.get("WATCHDOG_PID")
    if not usec or (pid and pid != str(os.getpid())):
        return None
    try:
        seconds = int(usec) / 1e6
    except ValueError:
        return None
    return seconds if seconds > 0 else None


async def watchdog(interval: float) -> None:
    """Ping at half the interval from the event loop: a blocked loop stops the pings and gets us restarted."""
    while True:
        notify("WATCHDOG=1")
        await asyncio.sleep(interval / 2)
