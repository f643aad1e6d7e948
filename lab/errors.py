"""The lab's one error type: a stable code plus a human message."""

from __future__ import annotations


class LabError(Exception):
    def __init__(self, code: str, message: str):
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
