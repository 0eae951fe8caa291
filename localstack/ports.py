"""Free local TCP ports: pick them, check them, wait for them to be released."""

from __future__ import annotations

import socket
import time

__all__ = ["PortBusyError", "free_port", "free_ports", "port_is_free", "port_is_open", "wait_port_free"]

HOST = "127.0.0.1"


class PortBusyError(RuntimeError):
    """A port we want to listen on is held by another process."""


def free_port(host: str = HOST) -> int:
    """Return a TCP port that nothing listens on now (the kernel picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def free_ports(count: int, host: str = HOST) -> list[int]:
    """Return ``count`` distinct free ports (all sockets held open while picking)."""
    sockets: list[socket.socket] = []
    try:
        for _ in range(count):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sockets.append(sock)
            sock.bind((host, 0))
        return [int(sock.getsockname()[1]) for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def port_is_free(port: int, host: str = HOST) -> bool:
    """True if a server could listen on ``port`` now (TIME_WAIT leftovers do not count)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
        return True


def port_is_open(port: int, host: str = HOST, timeout: float = 0.5) -> bool:
    """True if something accepts TCP connections on ``port``."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def wait_port_free(port: int, timeout: float = 10.0, host: str = HOST) -> None:
    """Wait until ``port`` can be listened on, or raise :class:`PortBusyError`."""
    deadline = time.monotonic() + timeout
    while not port_is_free(port, host):
        if time.monotonic() >= deadline:
            raise PortBusyError(
                f"port {port} busy: another process listens on {host}:{port} "
                f"(find it with `ss -ltnp 'sport = :{port}'`, stop it, or let the stack pick a free port)"
            )
        time.sleep(0.1)
