"""An instance's desired-spec generation: bumping it is how any change reaches the host (the
reconciler pushes every instance whose generation its agent has not acknowledged). A module of
its own so that services below lifecycle (elastic IPs, hosts) can ask for a push too."""
from __future__ import annotations

from controller.models import Instance


def bump(inst: Instance) -> None:
    """The desired spec changed: the reconciler pushes the new generation."""
    inst.generation = max(inst.generation, inst.acked_generation) + 1
