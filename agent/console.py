"""Reading an instance's serial console log (the GET /v1/instances/{id}/console endpoint)."""
from __future__ import annotations

from pathlib import Path

#: Upper bound of what one request returns, so a huge log cannot exhaust memory.
MAX_CONSOLE_BYTES = 4 << 20


def read_tail(console_log: Path, tail_bytes: int | None) -> str:
    """The console text (its last `tail_bytes` bytes if given), decoded with replacement."""
    want = MAX_CONSOLE_BYTES if tail_bytes is None else min(tail_bytes, MAX_CONSOLE_BYTES)
    try:
        with open(console_log, "rb") as f:
            f.seek(0, 2)
            f.seek(max(0, f.tell() - want))
            data = f.read()
    except FileNotFoundError:
        return ""
    return data.decode("utf-8", errors="replace")
