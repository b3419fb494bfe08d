"""A socket guard: loopback and Unix sockets only; anything else is logged and refused."""
from __future__ import annotations

import errno
import ipaddress
import os
import socket
import traceback

LOCAL_NAMES = {"localhost", "localhost.localdomain", "ip6-localhost", ""}
_installed: list[str] = []


def is_loopback(host) -> bool:
    if host is None:
        return True
    host = host.decode() if isinstance(host, bytes) else str(host)
    if host.lower() in LOCAL_NAMES or host == socket.gethostname():
        return True
    try:
        return ipaddress.ip_address(host.split("%")[0]).is_loopback
    except ValueError:
        return False


def install(log_path: str) -> None:
    """Patch socket so that non-loopback connections and lookups are refused and logged."""
    if _installed:
        _installed[0] = log_path
        return
    _installed.append(log_path)
    original_connect, original_connect_ex = socket.socket.connect, socket.socket.connect_ex
    original_sendto, original_getaddrinfo = socket.socket.sendto, socket.getaddrinfo

    def refuse(what: str) -> OSError:
        with open(_installed[0], "a", encoding="utf-8") as log:
            stack = "".join(traceback.format_stack(limit=8)[:-2])
            log.write(f"pid {os.getpid()}: {what}\n{stack}\n")
        return OSError(errno.ENETUNREACH, f"network access is not allowed in the tests: {what}")

    def remote(sock, address) -> bool:
        return sock.family in (socket.AF_INET, socket.AF_INET6) and not is_loopback(address[0])

    def connect(self, address):
        if remote(self, address):
            raise refuse(f"connect to {address}")
        return original_connect(self, address)

    def connect_ex(self, address):
        if remote(self, address):
            raise refuse(f"connect to {address}")
        return original_connect_ex(self, address)

    def sendto(self, data, *args):
        address = args[-1]
        if remote(self, address):
            raise refuse(f"sendto {address}")
        return original_sendto(self, data, *args)

    def getaddrinfo(host, *args, **kwargs):
        if not is_loopback(host):
            raise refuse(f"name lookup of {host}")
        return original_getaddrinfo(host, *args, **kwargs)

    socket.socket.connect, socket.socket.connect_ex = connect, connect_ex
    socket.socket.sendto, socket.getaddrinfo = sendto, getaddrinfo
