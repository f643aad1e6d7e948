"""Builder error types: every failure names the build step that failed."""

from __future__ import annotations


class BuildError(Exception):
    """A build step failed. ``step`` is a short stable name (e.g. ``fetch-kernel``, ``mkfs-boot``)."""

    code = "ImageBuildFailed"

    def __init__(self, step: str, message: str) -> None:
        self.step = step
        self.message = message
        super().__init__(f"image build step '{step}' failed: {message}")


class UnknownRecipe(BuildError):
    """The requested recipe name does not exist."""

    code = "InvalidImageRecipe"

    def __init__(self, name: str, known: list[str]) -> None:
        super().__init__("select-recipe", f"unknown recipe {name!r}; known: {', '.join(known)}")
        self.name = name
