"""Injected failures for the in-memory fakes (agent/drivers/fake.py, fake_hypervisor.py): a test
asks a fake to raise an error on its next matching call(s), by operation and key."""
from __future__ import annotations


class Faults:
    """Errors tests ask a fake to raise on its next matching call(s)."""

    def __init__(self) -> None:
        self._faults: dict[tuple[str, str | None], tuple[Exception, int]] = {}

    def set(self, op: str, key: str | None, error: Exception, times: int) -> None:
        """Raise `error` on the next `times` calls of `op` for `key` (None: any; -1: forever)."""
        self._faults[(op, key)] = (error, times)

    def clear(self) -> None:
        self._faults.clear()

    def check(self, op: str, key: str | None) -> None:
        for k in ((op, key), (op, None)):
            entry = self._faults.get(k)
            if entry is None:
                continue
            err, times = entry
            if times == 1:
                del self._faults[k]
            elif times > 1:
                self._faults[k] = (err, times - 1)
            raise err  # times < 0: forever
