"""Final counter values of NAT gateways that left this host (issue 13, the per-GiB gap): the
durable bookkeeping between the dataplane reading a gateway's counter for the last time and the
controller having billed it.

Why: a gateway's named counter (agent.network.nat) dies with its router namespace, and once the
gateway is no longer placed here the live read (Dataplane.nat_counters) stops reporting it. The
bytes it forwarded after the last heartbeat would never be billed. So the dataplane reads the
counter when it stops feeding it (agent.network.apply) and hands the value here; it is persisted
at once (<state_dir>/network/nat-finals.json, atomic) so an agent restart keeps it, and it rides
in the heartbeats' nat_processed as that gateway's cumulative counter, like a live one.

No double count, no loss: a final value is just the counter's last cumulative value, and the
controller bills per (gateway, host) the delta from the last value it recorded
(controller/services/nat_metering.py), so sending the same final again bills nothing. A value
is dropped after DELIVERIES heartbeats the controller answered with 2xx (it records the counters
in the transaction that answers, so one would do; more cover nothing but cost nothing), or after
MAX_AGE seconds (a controller that never asks for counters: keep the file bounded), or when
more than MAX_ENTRIES are kept (oldest first).

A gateway placed here again while its final is pending (rare: it left and came back within a
heartbeat): the final is reported until delivered once, then the live counter replaces it (see
merge()). A new final of a gateway replaces the pending one (it is the later cumulative value).
"""
from __future__ import annotations

import json
import logging
import threading
import time
from pathlib import Path
from typing import Callable, Iterable

from agent.fsutil import atomic_write

log = logging.getLogger(__name__)

#: Heartbeats answered with 2xx that carried a final before it is dropped.
DELIVERIES = 3
#: Seconds a final is kept at most, delivered or not.
MAX_AGE = 7 * 24 * 3600.0
#: Finals kept at most (the oldest go first).
MAX_ENTRIES = 10000


class NatFinals:
    """Pending final counters: {NAT gateway id: bytes}, persisted, thread-safe."""

    def __init__(self, state_dir: Path, clock: Callable[[], float] = time.time):
        self.path = Path(state_dir) / "network" / "nat-finals.json"
        self.clock = clock
        self._lock = threading.Lock()
        #: gateway id -> {"bytes": int, "at": float (recorded), "delivered": int}
        self._items: dict[str, dict] = self._load()

    def _load(self) -> dict[str, dict]:
        try:
            data = json.loads(self.path.read_bytes())
            return {str(k): {"bytes": int(v["bytes"]), "at": float(v["at"]),
                             "delivered": int(v.get("delivered", 0))}
                    for k, v in data.items() if int(v["bytes"]) >= 0}
        except FileNotFoundError:
            return {}
        except (OSError, ValueError, TypeError, KeyError, AttributeError) as e:
            # Unbillable bytes are lost, but a bad file must not stop the agent.
            log.error("NAT final counters %s unreadable (%s): starting empty", self.path, e)
            return {}

    def _save(self) -> None:
        data = json.dumps(self._items, sort_keys=True).encode()
        atomic_write(self.path, lambda f: f.write(data))

    def _expire(self) -> bool:
        now = self.clock()
        old = [k for k, v in self._items.items() if now - v["at"] > MAX_AGE]
        over = len(self._items) - len(old) - MAX_ENTRIES
        if over > 0:
            rest = sorted((v["at"], k) for k, v in self._items.items() if k not in old)
            old += [k for _, k in rest[:over]]
        for k in old:
            v = self._items.pop(k)
            if not v["delivered"]:
                log.warning("NAT gateway %s: final counter %d dropped undelivered", k, v["bytes"])
        return bool(old)

    def record(self, finals: dict[str, int]) -> None:
        """Keep these last values (persisted before this returns: the caller may then destroy
        the counters)."""
        if not finals:
            return
        with self._lock:
            for k, v in finals.items():
                cur = self._items.get(k)
                if cur is not None and cur["bytes"] == int(v):
                    continue  # read again (e.g. after a restart): nothing new
                self._items[k] = {"bytes": int(v), "at": self.clock(), "delivered": 0}
            self._expire()
            self._save()

    def pending(self) -> dict[str, int]:
        with self._lock:
            if self._expire():
                self._save()
            return {k: v["bytes"] for k, v in self._items.items()}

    def merge(self, live: dict[str, int]) -> dict[str, int]:
        """The counters a heartbeat reports: the live ones and the pending finals. A gateway in
        both (placed here again, its counter new): its final until delivered once (so the
        controller sees the last value of the old counter, then the new one as a reset), then
        the live one, and the final is forgotten."""
        out = dict(live)
        with self._lock:
            superseded = []
            for k, v in self._items.items():
                if k not in live:
                    out[k] = v["bytes"]
                elif not v["delivered"]:
                    out[k] = v["bytes"]
                else:
                    superseded.append(k)
            for k in superseded:
                del self._items[k]
            if superseded:
                self._save()
        return out

    def delivered(self, sent: Iterable[tuple[str, int]]) -> None:
        """The controller answered (2xx) a heartbeat that carried `sent` ((id, bytes) pairs):
        count one delivery of each final sent with its current value; drop the done ones."""
        with self._lock:
            changed = False
            for k, b in sent:
                cur = self._items.get(k)
                if cur is None or cur["bytes"] != b:
                    continue
                cur["delivered"] += 1
                changed = True
                if cur["delivered"] >= DELIVERIES:
                    del self._items[k]
            if changed:
                self._save()
