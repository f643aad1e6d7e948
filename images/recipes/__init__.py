"""The contract every recipe follows (context, output, recipe hash); the registry of recipes is
images/recipes/registry.py, so the recipes can import this package without a circle."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Protocol

PKG_DIR = Path(__file__).resolve().parent.parent  # images/


@dataclass
class BuildContext:
    """What a recipe gets: a private work dir (deleted afterwards) and a logger."""

    work: Path
    log: Callable[[str], None]


@dataclass
class RecipeOutput:
    """What a recipe returns: a finished qcow2 inside the work dir plus manifest details."""

    qcow2: Path
    virtual_size: int
    kernel_version: str = ""
    root_device: str = ""
    packages: dict[str, str] = field(default_factory=dict)


class Recipe(Protocol):
    name: str
    version: str
    min_ram_mib: int
    ready_marker: str
    sources: tuple[str, ...]  # paths relative to images/ whose content defines the recipe

    def build(self, ctx: BuildContext) -> RecipeOutput: ...


# Shared builder code that changes how every image comes out.
COMMON_SOURCES = ("disk.py", "debs.py", "kmod.py")


def recipe_hash(recipe: Recipe) -> str:
    """sha256 over the recipe's name, version and source files (directories walked in order)."""
    h = hashlib.sha256()
    h.update(f"{recipe.name}\0{recipe.version}\0".encode())
    for rel in sorted(set(COMMON_SOURCES + tuple(recipe.sources))):
        p = PKG_DIR / rel
        files = sorted(x for x in p.rglob("*") if x.is_file() and "__pycache__" not in x.parts) \
            if p.is_dir() else [p]
        for f in files:
            h.update(str(f.relative_to(PKG_DIR)).encode() + b"\0")
            h.update(f.read_bytes())
            h.update(b"\0")
    return h.hexdigest()

