"""Doorbells: wake a sleeping rank as soon as a message is sent to it.

MPICH has no wait that sleeps until a message comes: its blocking calls
spin, and on an oversubscribed machine a spinning rank takes the core its
peers need. So ranks sleep in short steps between tests
(:mod:`drizzle_ml.waiting`), and a message sent to a sleeping rank waits for
the end of its step: up to 2 ms for an idle worker, and several steps for a
message large enough to go by rendezvous (both sides take part in it). A
doorbell closes that gap: a rank sleeps on a UDP socket (``select``) and a
sender rings it, one datagram of one byte, right after its MPI send.

A ring carries no data, and no message depends on it: a ring that is lost
(a host behind a firewall) or never sent costs only the step the receiver
would have slept anyway. ``DRIZZLE_DOORBELL=0`` turns doorbells off (ranks
then sleep their steps in full).
"""

from __future__ import annotations

import os
import select
import socket
import time

Address = tuple[str, int]


def enabled() -> bool:
    return os.environ.get("DRIZZLE_DOORBELL", "1") not in ("0", "false", "no", "off")


class Doorbell:
    """This rank's doorbell: sleep on it, ring others' with it.

    ``port`` is 0 when doorbells are off or no socket could be made; the
    doorbell then sleeps with :func:`time.sleep` and rings nobody.
    """

    def __init__(self) -> None:
        self._sock: socket.socket | None = None
        self.port = 0
        self.rings = 0  # datagrams received: how often a peer woke (or would have woken) this rank
        if not enabled():
            return
        try:
            sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        except OSError:
            return
        try:
            sock.bind(("", 0))
            sock.setblocking(False)
        except OSError:
            sock.close()
            return
        self._sock, self.port = sock, sock.getsockname()[1]

    def sleep(self, seconds: float) -> bool:
        """Sleep up to ``seconds``; return True, early, when rung (the rings are then cleared)."""
        if self._sock is None:
            time.sleep(seconds)
            return False
        try:
            ready = select.select((self._sock,), (), (), seconds)[0]
        except (OSError, ValueError):  # closed under us: sleep like a rank without a bell
            time.sleep(seconds)
            return False
        if not ready:
            return False
        try:
            while self._sock.recv(16):
                self.rings += 1
        except OSError:  # BlockingIOError: no more rings
            pass
        return True

    def ring(self, address: Address | None) -> None:
        """Wake the rank whose doorbell is at ``address`` (None: no doorbell there)."""
        if address is None or self._sock is None:
            return
        try:
            self._sock.sendto(b"!", address)
        except OSError:  # a hint only: the receiver wakes at the end of its step anyway
            pass

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None


def bell_address(host: str, port: int) -> Address | None:
    """Where to ring a doorbell announced as ``(host, port)``: loopback on this host, None if unknown."""
    if not port:
        return None
    if host == socket.gethostname():
        return ("127.0.0.1", port)
    try:
        return (socket.gethostbyname(host), port)
    except OSError:
        return None
