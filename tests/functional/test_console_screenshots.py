"""docs/screenshots/make.py, the command that regenerates the console's screenshots, still works
(a smoke run: one page at the phone width into a scratch directory)."""
from __future__ import annotations

import importlib.util
import struct
from pathlib import Path

import pytest

pytestmark = [pytest.mark.browser, pytest.mark.slow]

MAKE = Path(__file__).resolve().parents[2] / "docs" / "screenshots" / "make.py"


def test_screenshot_command_smoke(tmp_path):
    spec = importlib.util.spec_from_file_location("kumo_screenshots", MAKE)
    make = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(make)
    assert make.main(["--out", str(tmp_path), "--only", "signin", "dashboard",
                      "--widths", "390"]) == 0
    for name in ("signin-390.png", "dashboard-390.png"):
        data = (tmp_path / name).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n"
        width, height = struct.unpack(">II", data[16:24])  # the IHDR chunk
        assert width == 390 and height >= 600
