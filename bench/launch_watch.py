"""What bench/bench_launch.py sees on a lab host while a guest starts: a watcher thread that
timestamps (time.time()) the files, the libvirt domain and the ready marker of one boot, Kumo's
or the plain baseline's alike, so both are timed by the same code at the same 10 ms resolution.
"""
from __future__ import annotations

import threading
import time
from pathlib import Path

MARKER = "KUMO-READY"
WATCH_EVERY = 0.01


class HostWatcher(threading.Thread):
    """Timestamps of what appears on a lab host for one domain: `files` (name -> path) as they
    appear, the domain defined and then running (its live XML is kept), the ready marker on
    `console`."""

    def __init__(self, uri: str, domain: str, console: Path, files: dict[str, Path]):
        super().__init__(daemon=True)
        self.uri, self.domain, self.console, self.files = uri, domain, console, files
        self.seen: dict[str, float] = {}
        self.xml = ""
        self.stop = threading.Event()

    def run(self) -> None:
        import libvirt
        libvirt.registerErrorHandler(lambda *_: None, None)
        conn = libvirt.open(self.uri)
        offset, tail = 0, ""
        try:
            while not self.stop.is_set():
                now = time.time()
                for name, path in self.files.items():
                    if name not in self.seen and path.exists():
                        self.seen[name] = now
                if "domain running (libvirt)" not in self.seen:
                    try:
                        dom = conn.lookupByName(self.domain)
                        self.seen.setdefault("domain defined (libvirt)", now)
                        if dom.state()[0] == libvirt.VIR_DOMAIN_RUNNING:
                            self.seen["domain running (libvirt)"] = now
                            self.xml = dom.XMLDesc(0)
                    except libvirt.libvirtError:
                        pass
                if MARKER not in tail and self.console.exists():
                    with open(self.console, "rb") as f:
                        f.seek(offset)
                        data = f.read()
                    offset += len(data)
                    tail = (tail + data.decode(errors="replace"))[-4096:]
                    if MARKER in tail:
                        self.seen["ready marker on console"] = now
                time.sleep(WATCH_EVERY)
        finally:
            conn.close()

    def finish(self) -> dict[str, float]:
        self.stop.set()
        self.join(5)
        return dict(self.seen)
