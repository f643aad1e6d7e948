"""Guest readiness: the image's ready marker on the serial console, after the current boot began.

The console log is append-only across boots; the runtime record keeps the byte offset where the
current boot started (taken just before start/reboot) and how far scanning got, so each check
reads only the new bytes and a marker printed by an earlier boot never counts.
"""
from __future__ import annotations

from pathlib import Path

from agent.state import Runtime

#: Never read more than this per check (a chatty guest must not stall the loop).
MAX_CHUNK = 1 << 20


def check_ready(rt: Runtime, console_log: Path, marker: str | None, now: float) -> bool:
    """Scan new console bytes for `marker`; mark the runtime booted when found. True if changed."""
    if rt.booted or not marker:
        return False
    needle = marker.encode()
    try:
        size = console_log.stat().st_size
    except FileNotFoundError:
        return False
    if size < rt.console_offset:
        # The log was truncated or replaced (e.g. rotated by an operator): start over.
        rt.console_offset = rt.console_scan_pos = 0
    # Re-read the last len(marker)-1 bytes so a marker split across two checks is still found.
    start = max(rt.console_offset, rt.console_scan_pos - (len(needle) - 1))
    if start >= size:
        return False
    with open(console_log, "rb") as f:
        f.seek(start)
        chunk = f.read(min(size - start, MAX_CHUNK))
    rt.console_scan_pos = start + len(chunk)
    if needle in chunk:
        rt.booted, rt.booted_at = True, now
        return True
    return False

