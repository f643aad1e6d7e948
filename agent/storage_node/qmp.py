"""A minimal, synchronous QMP client over a unix socket (QEMU Machine Protocol): connect, read
the greeting, negotiate capabilities, then one command at a time. Events arriving in between
are kept in `events` (a caller waiting for one polls a query instead: simpler, and a missed
event costs nothing). Arguments travel as JSON built with `json.dumps`, never as text.
"""
from __future__ import annotations

import json
import socket
from typing import Any, Optional


class QmpError(Exception):
    """A QMP command failed: `qmp_class` is QEMU's error class (GenericError, DeviceNotFound,
    ...), `desc` its message. code: QmpCommandFailed, or QmpUnavailable when the daemon could
    not be reached or broke the connection (retryable)."""

    def __init__(self, message: str, *, code: str = "QmpCommandFailed",
                 qmp_class: str = "", desc: str = ""):
        super().__init__(message)
        self.code, self.qmp_class, self.desc = code, qmp_class, desc
        self.retryable = code == "QmpUnavailable"


class QmpClient:
    """One QMP connection. Use as a context manager, or call close()."""

    def __init__(self, path: str, timeout: float = 10.0):
        self.path, self.timeout = path, timeout
        self.events: list[dict] = []
        self._next_id = 0
        self._sock: Optional[socket.socket] = None
        self._buf = b""

    def __enter__(self) -> "QmpClient":
        self.connect()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def connect(self) -> dict:
        """Connect and leave capabilities negotiation; the greeting's QMP section."""
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(self.timeout)
        try:
            s.connect(self.path)
        except OSError as e:
            s.close()
            raise QmpError(f"cannot connect to QMP at {self.path}: {e}",
                           code="QmpUnavailable") from None
        self._sock, self._buf = s, b""
        greeting = self._read()
        if "QMP" not in greeting:
            self.close()
            raise QmpError(f"no QMP greeting at {self.path}: {greeting!r}", code="QmpUnavailable")
        self.execute("qmp_capabilities")
        return greeting["QMP"]

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def execute(self, command: str, arguments: Optional[dict] = None) -> Any:
        """Run one command; its "return" value, or QmpError."""
        if self._sock is None:
            raise QmpError("QMP client is not connected", code="QmpUnavailable")
        self._next_id += 1
        msg: dict = {"execute": command, "id": self._next_id}
        if arguments:
            msg["arguments"] = arguments
        try:
            self._sock.sendall(json.dumps(msg).encode() + b"\n")
        except OSError as e:
            self.close()
            raise QmpError(f"QMP {command}: {e}", code="QmpUnavailable") from None
        while True:
            reply = self._read()
            if "event" in reply:
                self.events.append(reply)
                continue
            if reply.get("id") != self._next_id:
                continue  # a reply to an earlier, abandoned command
            if "error" in reply:
                err = reply["error"]
                cls, desc = str(err.get("class", "")), str(err.get("desc", ""))
                raise QmpError(f"QMP {command}: {cls}: {desc}", qmp_class=cls, desc=desc)
            return reply.get("return")

    def _read(self) -> dict:
        while b"\n" not in self._buf:
            try:
                chunk = self._sock.recv(65536)
            except OSError as e:
                self.close()
                raise QmpError(f"QMP read from {self.path}: {e}", code="QmpUnavailable") from None
            if not chunk:
                self.close()
                raise QmpError(f"QMP at {self.path} closed the connection", code="QmpUnavailable")
            self._buf += chunk
        line, self._buf = self._buf.split(b"\n", 1)
        try:
            value = json.loads(line)
        except json.JSONDecodeError as e:
            raise QmpError(f"QMP sent no JSON: {e}", code="QmpUnavailable") from None
        if not isinstance(value, dict):
            raise QmpError(f"QMP sent {value!r}", code="QmpUnavailable")
        return value
