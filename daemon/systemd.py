"""sd_notify without a dependency: READY=1 / STATUS= / STOPPING=1 / WATCHDOG=1 over $NOTIFY_SOCKET.

Outside systemd (no NOTIFY_SOCKET) every call is a no-op, so the daemon runs the same by hand.

Sends never block: they come from the event loop, and a manager that stops reading its socket
(busy, stuck, or a test harness that went away) would otherwise freeze MQTT, the queue and the
watchdog with it. When the socket is full the message is dropped; the first drop is logged, and
so is the first send that gets through again.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket

_LOGGER = logging.getLogger(__name__)

_dropping = False  # the last send found the socket full; reset by the next one that gets through


def notify(*lines: str) -> bool:
    """Send state lines to systemd in one datagram; True if they were sent, False if not (or dropped)."""
    global _dropping
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return False
    if address.startswith("@"):
        address = "\0" + address[1:]  # abstract socket namespace
    message = "\n".join(lines).encode()
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC | socket.SOCK_NONBLOCK) as sock:
            sock.sendto(message, address)
    except BlockingIOError:
        if not _dropping:
            _dropping = True
            _LOGGER.warning(
                "sd_notify: %s is full (the service manager is not reading it); dropping %r and any "
                "further messages until it drains", os.environ.get("NOTIFY_SOCKET"), message.decode()
            )
        return False
    except OSError as exc:
        _LOGGER.warning("sd_notify to %s failed: %s", os.environ.get("NOTIFY_SOCKET"), exc)
        return False
    if _dropping:
        _dropping = False
        _LOGGER.info("sd_notify: %s accepts messages again", os.environ.get("NOTIFY_SOCKET"))
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
