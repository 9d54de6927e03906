"""Local ports: the one helper that finds a free one, and the check that one is taken.

Used wherever a port of 0 means "pick one": the brokers and their TLS listeners, the
gateway's CoAP endpoint (UDP and TCP on one number), metrics endpoints started as child
processes. A free port is free for both TCP and UDP, so any of them can use it.
"""

from __future__ import annotations

import socket


def free_port(host: str = "127.0.0.1", count: int = 1) -> int:
    """A port that is free for both TCP and UDP on ``host`` right now, and with
    ``count``, the ``count - 1`` ports after it too (worker ``i`` of a pool on ``port + i``)."""
    for _ in range(50):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as tcp:
            tcp.bind((host, 0))
            port = int(tcp.getsockname()[1])
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
                try:
                    udp.bind((host, port))
                except OSError:
                    continue
        if all(not port_in_use(host, port + step) for step in range(1, count)):
            return port
    raise OSError(f"no run of {count} ports on {host} is free for both TCP and UDP")


def port_in_use(host: str, port: int) -> bool:
    """Whether a TCP listener could not bind ``host:port`` now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError:
            return True
    return False
