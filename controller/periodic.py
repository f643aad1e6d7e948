"""The controller's background loops: a pass in a worker thread every so often, its failures
logged and never ending the loop, and the set of loops the app's lifespan starts and stops.

The passes themselves (Auto Scaling groups, alarms, metric maintenance) live in
controller/services/; they are plain functions of (db, settings[, now]) that tests call by hand.
"""
from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable

log = logging.getLogger(__name__)


async def every(interval_s: float, work: Callable[[], object], what: str,
                again: Callable[[object], bool] = lambda result: False) -> None:
    """Run `work` in a thread, then sleep interval_s, forever; at once again (yielding to the
    loop) while `again(result)` says the pass left work behind."""
    while True:
        try:
            result = await asyncio.to_thread(work)
            if again(result):
                await asyncio.sleep(0)
                continue
        except Exception:
            log.exception("%s failed", what)
        await asyncio.sleep(interval_s)


class Loops:
    """Named background tasks, started together and cancelled together (newest first)."""

    def __init__(self) -> None:
        self.tasks: list[asyncio.Task] = []

    def start(self, name: str, loop: Awaitable[None]) -> None:
        self.tasks.append(asyncio.create_task(loop, name=name))

    async def stop(self) -> None:
        for task in reversed(self.tasks):
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self.tasks.clear()
