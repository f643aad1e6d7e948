"""controller/periodic.py: a failing pass never ends its loop, a pass that left work behind runs
again at once, and Loops stops every task it started."""
from __future__ import annotations

import asyncio

from controller.periodic import Loops, every


def test_failures_are_logged_and_the_loop_goes_on_and_full_passes_rerun_at_once():
    calls = []

    def work():
        calls.append(len(calls))
        if len(calls) == 1:
            raise RuntimeError("first pass fails")
        return len(calls) < 4  # passes 2 and 3 leave work behind

    async def main():
        loops = Loops()
        loops.start("t", every(0.05, work, "test pass", again=bool))
        await asyncio.sleep(0.12)  # fail, sleep 0.05, 2 -> 3 -> 4 at once, sleep 0.05, 5
        await loops.stop()
        return loops

    loops = asyncio.run(main())
    assert calls[:4] == [0, 1, 2, 3] and 4 <= len(calls) <= 6, calls
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
