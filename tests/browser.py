"""Browser-test start-up: Streamlit and headless Chromium for tests marked `browser`.

The work is done by `pipeline.bench.browser` (the review benchmark drives the app the same
way); this adds what a test needs: a clear failure when Chromium or Playwright is missing.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from pipeline.bench.browser import (  # noqa: F401  (re-exported for tests)
    CHROMIUM,
    background,
    canvas_box,
    choose,
    chromium_page,
    drag,
    sign_in,
    streamlit_app,
    wait_background_change,
    wait_idle,
)

REPO = Path(__file__).resolve().parents[1]
ARTIFACTS = REPO / "test-artifacts"


def require_browser() -> None:
    """Fail (not skip) when the browser stack is missing: the bootstrap installs it."""
    pytest.importorskip("playwright")
    if not CHROMIUM.exists():
        pytest.fail("Debian chromium missing: run the tests through scripts/bootstrap.sh test")
