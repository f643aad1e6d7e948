"""Kumo's all-in-one lab: simulated hosts as network namespaces on one machine, each with its own
libvirtd, joined by a fabric namespace, with an "internet" namespace that dead-ends; plus the
controller and one agent per host when their code exists.

    from lab import Lab
    lab = Lab("/var/lib/kumo/lab", prefix="kumo")
    lab.up(hosts=2); print(lab.status().to_text()); lab.down()
"""

from lab.core import DEFAULT_LISTEN, DEFAULT_PREFIX, DEFAULT_STATE_DIR, Lab
from lab.errors import LabError
from lab.report import HostStatus, LabStatus, ProcStatus

__all__ = [
    "DEFAULT_LISTEN", "DEFAULT_PREFIX", "DEFAULT_STATE_DIR",
    "HostStatus", "Lab", "LabError", "LabStatus", "ProcStatus",
]  # fmt: skip
