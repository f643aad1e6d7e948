"""Fixtures the console's browser test modules share: one headless Chromium per module
(`browser`) and a watched page in a fresh context per test (`page`; console_browser_support.
browser_page: a dialog or a script error fails the test). A module that signs its pages in, or
needs other page options, defines its own `page` on top of `browser`."""
from __future__ import annotations

import pytest


@pytest.fixture(scope="module")
def browser():
    pytest.importorskip("playwright.sync_api")
    from tests.functional.console_browser_support import chromium
    with chromium() as b:
        yield b


@pytest.fixture
def page(browser):
    from tests.functional.console_browser_support import browser_page
    with browser_page(browser) as pg:
        yield pg
