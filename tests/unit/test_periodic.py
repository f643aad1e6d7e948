"""controller/periodic.py: a failing pass never ends its loop, a pass that left work behind runs
again at once, and Loops stops every task it started."""
from __future__ import annotations

import asyncio
import time

from controller.periodic import Loops, every


def test_failures_are_logged_and_the_loop_goes_on_and_full_passes_rerun_at_once():
    # Waits on progress, not on a fixed sleep, so a loaded runner cannot starve it. "At once"
    # is told apart by the interval: passes 2 -> 3 -> 4 chained take far less than one 2 s
    # sleep, where sleeping between them would take two.
    interval = 2.0
    calls: list[float] = []

    def work():
        calls.append(time.monotonic())
        if len(calls) == 1:
            raise RuntimeError("first pass fails")
        return len(calls) < 4  # passes 2 and 3 leave work behind

    async def main():
        loops = Loops()
        loops.start("t", every(interval, work, "test pass", again=bool))
        deadline = time.monotonic() + 30
        while len(calls) < 4 and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        await loops.stop()
        return loops

    loops = asyncio.run(main())
    assert len(calls) == 4, calls  # the failure did not end the loop; pass 5 is 2 s away
    assert calls[1] - calls[0] >= interval  # after the failure: the normal sleep
    assert calls[3] - calls[1] < interval  # 2 -> 3 -> 4 without sleeping
    assert loops.tasks == []


def test_stop_cancels_every_task_it_started():
    async def main():
        loops = Loops()
        loops.start("a", every(10, lambda: None, "a"))
        loops.start("b", every(10, lambda: None, "b"))
        tasks = list(loops.tasks)
        await asyncio.sleep(0.01)
        await loops.stop()
        return tasks

    assert all(t.cancelled() for t in asyncio.run(main()))
