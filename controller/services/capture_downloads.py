"""Background downloads of captured root disks (CreateImage's copying phase).

Why: a captured image is as big as the instance's root disk, and the capture worker
(services/image_capture.py advance) runs inside the reconciler's tick; a download there would
hold every instance's reconcile for its whole transfer time. So the copying phase hands each
transfer to a small pool of threads and collects the result on a later pass. A download that is
done within WAIT_S is still collected in the pass that started it, so small images (and tests)
go through in one pass.

Downloads are keyed by (image store, image id): two controllers in one process (tests) never
see each other's. The state is in memory only: after a controller restart the copying phase
finds no download and starts it again, and the dead one's partial upload file is removed by
sweep_partial_uploads (the reconciler's tick), once nothing in this process writes it.
"""
from __future__ import annotations

import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Callable, TypeVar

T = TypeVar("T")

#: Concurrent transfers (each a stream from one agent into the image store).
WORKERS = 2
#: How long the pass that starts (or polls) a download waits for it before moving on.
WAIT_S = 0.5
#: An upload-*.part file untouched for this long belongs to no live download.
PARTIAL_UPLOAD_AGE_S = 3600.0


class Downloads:
    """Futures of the running downloads by key, on one small thread pool."""

    def __init__(self, workers: int = WORKERS) -> None:
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="capture-dl")
        self._lock = threading.Lock()
        self._running: dict[tuple[str, str], Future] = {}

    def poll(self, key: tuple[str, str], start: Callable[[], T],
             wait: float = WAIT_S) -> Future | None:
        """The download under `key`, started with `start` when there is none: its finished
        Future (collected: the next poll starts afresh), or None while it still runs."""
        with self._lock:
            fut = self._running.get(key)
            if fut is None:
                fut = self._running[key] = self._pool.submit(start)
        try:
            fut.exception(timeout=wait)
        except TimeoutError:
            return None
        with self._lock:
            if self._running.get(key) is fut:
                del self._running[key]
        return fut

    def running(self) -> int:
        with self._lock:
            return sum(1 for f in self._running.values() if not f.done())


#: The process's downloads (controllers in one process share the pool, not the keys).
DOWNLOADS = Downloads()


def sweep_partial_uploads(store: Path, now: float | None = None,
                          age: float = PARTIAL_UPLOAD_AGE_S) -> int:
    """Remove upload-*.part files in the image store nobody has written for `age` seconds
    (left by a download or an import a controller restart cut short). Returns how many."""
    if not store.is_dir():
        return 0
    now = time.time() if now is None else now
    n = 0
    for part in store.glob("upload-*.part"):
        try:
            if now - part.stat().st_mtime > age:
                part.unlink()
                n += 1
        except FileNotFoundError:
            continue
    return n
