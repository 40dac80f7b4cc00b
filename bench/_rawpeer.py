"""The far end of the raw socket baselines: a plain Python process on a plain socket.

Usage: ``python _rawpeer.py {tcp,unix} ADDRESS {echo,sink,sinksum} SIZE``

It connects to ADDRESS (``HOST:PORT`` or a socket path) and serves until end of file:

- ``echo``: read exactly SIZE bytes, send them back (W1 ping-pong);
- ``sink``: read exactly SIZE bytes into one preallocated buffer, reply with an 8-byte ack (W3);
- ``sinksum``: as ``sink``, but the ack is the float64 sum of what was received (numpy).

Every blocking call has a kernel-level timeout (``SO_RCVTIMEO``/``SO_SNDTIMEO``), which costs
nothing per call, unlike a Python socket timeout (that polls before each recv).
"""

from __future__ import annotations

import socket
import struct
import sys

IDLE_TIMEOUT_S = 60


def set_kernel_timeouts(sock: socket.socket, seconds: int) -> None:
    """Bound every recv/send on a blocking socket without Python's per-call poll."""
    tv = struct.pack("ll", seconds, 0)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, tv)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, tv)


def recv_exactly(sock: socket.socket, view: memoryview) -> bool:
    """Fill ``view``; False on end of file before the first byte, raise if it comes later."""
    got = 0
    size = len(view)
    while got < size:
        n = sock.recv_into(view[got:], size - got)
        if not n:
            if got == 0:
                return False
            raise ConnectionError(f"end of file after {got} of {size} bytes")
        got += n
    return True


def connect(family: str, address: str) -> socket.socket:
    if family == "tcp":
        host, port = address.rsplit(":", 1)
        sock = socket.create_connection((host, int(port)), timeout=IDLE_TIMEOUT_S)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    else:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(IDLE_TIMEOUT_S)
        sock.connect(address)
    sock.settimeout(None)
    set_kernel_timeouts(sock, IDLE_TIMEOUT_S)
    return sock


def main(argv: list[str]) -> int:
    family, address, mode, size_text = argv
    size = int(size_text)
    buf = bytearray(size)
    view = memoryview(buf)
    with connect(family, address) as sock:
        if mode == "echo":
            while recv_exactly(sock, view):
                sock.sendall(view)
        elif mode == "sink":
            ack = b"\0" * 8
            while recv_exactly(sock, view):
                sock.sendall(ack)
        elif mode == "sinksum":
            import numpy as np

            arr = np.frombuffer(buf, dtype=np.float64)
            while recv_exactly(sock, view):
                sock.sendall(struct.pack("d", float(arr.sum())))
        else:
            raise SystemExit(f"unknown mode {mode!r}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
