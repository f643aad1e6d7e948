"""The recipes Kumo can build, by name."""
from __future__ import annotations

from images.recipes import Recipe
from images.recipes.debian12 import Debian12
from images.recipes.tiny import KumoTiny


def registry() -> dict[str, Recipe]:
    recipes: list[Recipe] = [KumoTiny(), Debian12()]
    return {r.name: r for r in recipes}
