"""The generation rule every full-document PUT of the contract follows (instances, network).

A lower generation than the accepted one is stale; the same generation is a re-send when the
content is equal and a conflict when it is not; a higher one replaces. Callers turn the conflict
into their 409 answer.
"""
from __future__ import annotations

from typing import Any


class GenerationConflict(Exception):
    """code: StaleGeneration or IdempotentParameterMismatch (both answered 409)."""

    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code, self.message = code, message


def is_resend(new: Any, current: Any | None) -> bool:
    """True when `new` equals the accepted `current` (nothing to do); False when it replaces it.
    Raises GenerationConflict when it may not. Both carry a `generation`."""
    if current is None:
        return False
    if new.generation < current.generation:
        raise GenerationConflict("StaleGeneration", f"generation {new.generation} is older than "
                                 f"the accepted {current.generation}")
    if new.generation == current.generation:
        if new == current:
            return True
        raise GenerationConflict("IdempotentParameterMismatch",
                                 f"generation {new.generation} was already accepted with "
                                 "different content")
    return False
