"""A registry-only HTTP proxy for tests that install software inside lab namespaces
(tests/lab/test_deploy_debian_lab.py): it listens on 127.0.0.1:PROXY_PORT *inside* given lab
network namespaces (a socket keeps the namespace it was made in) and connects out, from the
machine's own namespace, to Debian's mirror and PyPI only. apt uses it as an http proxy (GET in
absolute form), pip as an https proxy (CONNECT). Anything else is answered 403 and recorded.
"""

from __future__ import annotations

import ctypes
import os
import select
import socket
import threading

#: The only hosts the proxy connects to: Debian's mirror and PyPI.
REGISTRY_HOSTS = ("deb.debian.org", "pypi.org", "files.pythonhosted.org")
PROXY_PORT = 3128
CLONE_NEWNET = 0x40000000

_libc = ctypes.CDLL(None, use_errno=True)


def _setns(fd: int) -> None:
    if _libc.setns(fd, CLONE_NEWNET) != 0:
        raise OSError(ctypes.get_errno(), "setns")


class RegistryProxy:
    """An HTTP proxy (GET in absolute form for apt, CONNECT for pip's https) listening on
    127.0.0.1:PROXY_PORT inside given lab namespaces and connecting out, from the machine's
    namespace, to REGISTRY_HOSTS only (anything else: 403)."""

    def __init__(self) -> None:
        self.listeners: list[socket.socket] = []
        self.refused: list[str] = []
        self._stop = threading.Event()

    def listen_in(self, netns: str) -> None:
        own = os.open("/proc/self/ns/net", os.O_RDONLY)
        target = os.open(f"/run/netns/{netns}", os.O_RDONLY)
        try:
            _setns(target)  # this thread only; the socket keeps the namespace it was made in
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind(("127.0.0.1", PROXY_PORT))
            s.listen(64)
        finally:
            _setns(own)
            os.close(own)
            os.close(target)
        self.listeners.append(s)
        threading.Thread(target=self._accept, args=(s,), daemon=True).start()

    def close(self) -> None:
        self._stop.set()
        for s in self.listeners:
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            s.close()

    def _accept(self, s: socket.socket) -> None:
        while not self._stop.is_set():
            try:
                c, _ = s.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(c,), daemon=True).start()

    def _serve(self, c: socket.socket) -> None:
        try:
            c.settimeout(60)
            head = b""
            while b"\r\n\r\n" not in head and len(head) < 65536:
                chunk = c.recv(65536)
                if not chunk:
                    return
                head += chunk
            line = head.split(b"\r\n", 1)[0].decode("latin-1")
            method, target, _ = line.split(" ", 2)
            if method == "CONNECT":
                host, _, port = target.rpartition(":")
                port = int(port)
            else:
                rest = target.split("://", 1)[1]
                hostport = rest.split("/", 1)[0]
                host, _, p = hostport.partition(":")
                port = int(p or 80)
            if host not in REGISTRY_HOSTS or port not in (80, 443):
                self.refused.append(target)
                c.sendall(b"HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\n\r\n")
                return
            up = socket.create_connection((host, port), timeout=60)
            with up:
                if method == "CONNECT":
                    c.sendall(b"HTTP/1.1 200 Connection established\r\n\r\n")
                    rest = head.split(b"\r\n\r\n", 1)[1]
                    if rest:
                        up.sendall(rest)
                else:
                    up.sendall(head)  # HTTP/1.1 servers accept the absolute form
                _pipe(c, up)
        except (OSError, ValueError, IndexError):
            return
        finally:
            c.close()


def _pipe(a: socket.socket, b: socket.socket) -> None:
    a.settimeout(None)
    b.settimeout(None)
    socks = [a, b]
    while True:
        r, _, _ = select.select(socks, [], [], 120)
        if not r:
            return
        for s in r:
            data = s.recv(65536)
            if not data:
                return
            (b if s is a else a).sendall(data)
