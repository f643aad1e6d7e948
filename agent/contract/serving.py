"""How either side serves one ASGI app on several uvicorn listeners in one process: the
controller (`python -m controller`: API, agent TLS listener, agent unix socket) and the agent
or the storage node (agent/serving.py: a listener plus a host-local unix socket), and how
either side claims a unix socket path (clear_stale_socket).

It lives beside transport.py and tls.py in the contract package because the controller may
import nothing else of agent/ (docs: architecture), and both ends must stop the same safe way.

Signals: plain `signal.signal` handlers, never `loop.add_signal_handler`. The latter makes the
event loop's wakeup fd the signal channel, and a child forked by the process (pyroute2 forks
helpers into network namespaces and ends them with SIGTERM) shares that fd: the child's copy
of the handler wrote its SIGTERM into the parent's loop, which then shut down.
"""
from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import stat
from collections.abc import Sequence

import uvicorn


def clear_stale_socket(path: str) -> None:
    """Remove a socket file left by a previous process, but never a live one (a second process
    started on the same path would silently take the first one's clients) or a non-socket:
    both stop the start with a message instead."""
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(mode):
        raise SystemExit(f"{path} exists and is not a socket")
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        s.connect(path)
    except (ConnectionRefusedError, FileNotFoundError):
        os.unlink(path)
        return
    finally:
        s.close()
    raise SystemExit(f"another process is listening on {path}")


class _Server(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self):
        yield  # serve_all owns the process's signal handling


def serve_all(configs: Sequence[uvicorn.Config],
              sockets: Sequence[list[socket.socket] | None] | None = None) -> int:
    """Run several uvicorn servers of one app in one event loop until SIGTERM/SIGINT; the
    process's exit status.

    The first config should be the one with lifespan "on" (one reconcile loop per process).
    `sockets[i]`, when given, are already-listening sockets server i serves instead of binding
    its config's address (e.g. an inherited descriptor whose family uvicorn's `fd=` would get
    wrong). One SIGTERM/SIGINT stops all servers gracefully (a second SIGINT forces the exit);
    when one stops for any other reason (a failed bind or lifespan start), so do the others.
    Returns 0 after a requested stop or when every server had started, else 1."""
    servers = [_Server(c) for c in configs]
    socks = list(sockets or [])
    socks += [None] * (len(servers) - len(socks))
    stopped = {"by_signal": False}

    def stop(sig: int, _frame=None) -> None:
        stopped["by_signal"] = True
        for s in servers:
            if s.should_exit and sig == signal.SIGINT:
                s.force_exit = True
            s.should_exit = True

    async def one(server: _Server, server_sockets) -> None:
        try:
            await server.serve(sockets=server_sockets)
        finally:
            for s in servers:
                s.should_exit = True

    async def run() -> None:
        # Kept after the servers stop: a second signal during the caller's clean-up (closing
        # the database, removing socket files) must not kill the process half-way.
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, stop)
        await asyncio.gather(*(one(s, k) for s, k in zip(servers, socks)))

    asyncio.run(run())
    return 0 if stopped["by_signal"] or all(s.started for s in servers) else 1
