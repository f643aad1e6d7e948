"""The agent's durable state: accepted specs, per-instance runtime bookkeeping, tombstones.

Layout under `<state_dir>/agent-state/`:
  specs/<id>.json     the last InstanceSpec accepted for the instance (what the host must look like)
  runtime/<id>.json   what the agent itself did (boots, applied reboot nonce, prepared artifacts),
                      so a restarted agent knows a running guest is already right and leaves it alone
  deleted/<id>.json   generation of a deleted instance, so a late, older PUT cannot resurrect it
Every write is atomic (temp file + fsync + rename), so a crash leaves the old or the new file.
"""
from __future__ import annotations

import json
import logging
import threading
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

from agent.contract.v1 import INSTANCE_ID_RE, InstanceSpec
from agent.fsutil import atomic_write

log = logging.getLogger(__name__)


class StateError(Exception):
    """The state directory holds something the agent cannot safely interpret."""


def atomic_write_json(path: Path, data: object) -> None:
    """Write JSON to `path` so readers see either the old or the complete new content."""
    atomic_write(path, lambda f: f.write(json.dumps(data, sort_keys=True).encode()))


def _unlink(path: Path) -> None:
    try:
        path.unlink()
    except FileNotFoundError:
        pass


@dataclass
class Runtime:
    """What the agent has done for one instance. Persisted; unknown keys are ignored on load."""

    #: Power the agent last enacted ("running"/"stopped"); None: never acted. A domain that is
    #: off while this says "running" stopped by itself (drift).
    applied_power: str | None = None
    applied_reboot_nonce: int = 0
    boot_count: int = 0
    boot_started_at: float | None = None
    booted: bool = False
    booted_at: float | None = None
    #: Size of console.log when the current boot started: the ready marker counts only after it.
    console_offset: int = 0
    #: How far readiness scanning got (so each check reads only new bytes).
    console_scan_pos: int = 0
    #: Written (and persisted) just before the agent starts the domain: the console offset of the
    #: boot it is about to begin. If the agent dies between starting the domain and recording the
    #: boot, the next agent finds the domain running with this set and knows the boot is its own,
    #: so readiness still counts the marker the guest printed meanwhile.
    boot_intent_offset: int | None = None
    #: Keys of the inputs each artifact was prepared from, and the resulting paths.
    image_key: str | None = None
    image_path: str | None = None
    disk_key: str | None = None
    disk_path: str | None = None
    seed_key: str | None = None
    seed_path: str | None = None
    defined_key: str | None = None
    #: Volume targets whose detach was asked for and has not finished (a guest that held on):
    #: the definition may still hold them after the guest lets go, so the next pass detaches
    #: them again. Written before each detach.
    detaching: list[str] = field(default_factory=list)
    #: Volume id -> the spec size_bytes its running disk was last seen to have (or grown to).
    volume_sizes: dict[str, int] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, data: dict) -> "Runtime":
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class Backoff:
    """Retry bookkeeping of one instance (memory only: a restarted agent retries at once)."""

    failures: int = 0
    next_attempt: float = 0.0


class StateStore:
    """Accepted specs and runtime records, cached in memory and persisted atomically."""

    def __init__(self, state_dir: Path):
        self.root = Path(state_dir) / "agent-state"
        self._specs_dir = self.root / "specs"
        self._runtime_dir = self.root / "runtime"
        self._deleted_dir = self.root / "deleted"
        for d in (self._specs_dir, self._runtime_dir, self._deleted_dir):
            d.mkdir(parents=True, exist_ok=True)
        self._lock = threading.RLock()
        self._specs: dict[str, InstanceSpec] = {}
        self._runtime: dict[str, Runtime] = {}
        self._load()

    def _load(self) -> None:
        for p in sorted(self._specs_dir.glob("i-*.json")):
            if not INSTANCE_ID_RE.match(p.stem):
                continue
            try:
                spec = InstanceSpec.model_validate_json(p.read_text())
            except ValueError as e:
                # Refuse to start rather than skip it: a skipped spec would make its running
                # guest look like an orphan, and orphans are deleted.
                raise StateError(f"unreadable accepted spec {p}: {e}") from None
            self._specs[spec.instance_id] = spec
        for p in sorted(self._runtime_dir.glob("i-*.json")):
            if p.stem in self._specs:
                try:
                    self._runtime[p.stem] = Runtime.from_dict(json.loads(p.read_text()))
                except (ValueError, TypeError) as e:
                    # Losing bookkeeping is safe: a matching running guest is adopted as is.
                    log.warning("ignoring unreadable runtime record %s: %s", p, e)

    # -- specs ---------------------------------------------------------------------------
    def spec(self, instance_id: str) -> InstanceSpec | None:
        with self._lock:
            return self._specs.get(instance_id)

    def specs(self) -> dict[str, InstanceSpec]:
        with self._lock:
            return dict(self._specs)

    def put_spec(self, spec: InstanceSpec) -> None:
        with self._lock:
            atomic_write_json(self._specs_dir / f"{spec.instance_id}.json",
                              spec.model_dump(mode="json"))
            self._specs[spec.instance_id] = spec
            _unlink(self._deleted_dir / f"{spec.instance_id}.json")

    def remove_spec(self, instance_id: str) -> InstanceSpec | None:
        """Forget the instance; remember its generation as a tombstone. Returns the old spec."""
        with self._lock:
            old = self._specs.pop(instance_id, None)
            if old is not None:
                atomic_write_json(self._deleted_dir / f"{instance_id}.json",
                                  {"generation": old.generation})
            _unlink(self._specs_dir / f"{instance_id}.json")
            self._runtime.pop(instance_id, None)
            _unlink(self._runtime_dir / f"{instance_id}.json")
            return old

    def deleted_generation(self, instance_id: str) -> int | None:
        """Generation the instance had when it was deleted here, if it was."""
        p = self._deleted_dir / f"{instance_id}.json"
        try:
            return int(json.loads(p.read_text())["generation"])
        except (FileNotFoundError, ValueError, KeyError, TypeError):
            return None

    # -- runtime -------------------------------------------------------------------------
    def runtime(self, instance_id: str) -> Runtime:
        """The instance's runtime record (a fresh one when none exists). Mutate, then save."""
        with self._lock:
            rt = self._runtime.get(instance_id)
            if rt is None:
                rt = self._runtime[instance_id] = Runtime()
            return rt

    def has_runtime(self, instance_id: str) -> bool:
        with self._lock:
            return instance_id in self._runtime

    def save_runtime(self, instance_id: str) -> None:
        with self._lock:
            rt = self._runtime.get(instance_id)
            if rt is None or instance_id not in self._specs:
                return  # deleted meanwhile: never resurrect its record
            atomic_write_json(self._runtime_dir / f"{instance_id}.json", rt.to_dict())
