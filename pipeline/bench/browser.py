"""Drive the app in the machine's headless Chromium (benchmarks and browser tests): start
`streamlit run app.py` on a free port, open a page, sign in, watch the review canvas."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--no-first-run"]

# A checksum of the review canvas's background (the image with its overlay), found through
# the component's shadow root; null while there is no such canvas or it is still blank.
_BACKGROUND_JS = """
() => {
  let found = null;
  for (const el of document.querySelectorAll('*')) {
    if (!el.shadowRoot) continue;
    const box = el.closest('[data-testid="stElementContainer"]');
    if (box && box.dataset.stale === 'true') continue;  // the previous run's, going away
    const c = el.shadowRoot.querySelector('canvas.dc-background-canvas');
    if (c && c.width) found = c;
  }
  if (!found) return null;
  const d = found.getContext('2d').getImageData(0, 0, found.width, found.height).data;
  let s = 0, lit = 0;
  for (let i = 0; i < d.length; i += 12) { s = (s * 31 + d[i]) % 1000000007; lit += d[i]; }
  return lit ? `${found.width}x${found.height}:${s}` : null;
}
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def streamlit_app(app: Path = REPO / "app.py", env: dict[str, str] | None = None,
                  timeout: float = 90.0, log: Path | None = None) -> Iterator[str]:
    """`streamlit run app` on a free port (environment: this process's, plus `env`);
    yields its URL once it answers its health check, and stops it afterwards."""
    port = free_port()
    out = open(log, "wb") if log else subprocess.DEVNULL  # noqa: SIM115
    proc = subprocess.Popen(
        [sys.executable, "-m", "streamlit", "run", str(app), "--server.port", str(port),
         "--server.headless", "true", "--server.fileWatcherType", "none",
         "--browser.gatherUsageStats", "false"],
        env={**os.environ, **(env or {})}, stdout=out, stderr=subprocess.STDOUT, cwd=REPO)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + timeout
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"streamlit exited with {proc.returncode}"
                                   + (f": see {log}" if log else ""))
            try:
                with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if time.time() > deadline:
                raise TimeoutError(f"streamlit did not answer on {url} in {timeout:.0f} s")
            time.sleep(0.3)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
        if log:
            out.close()


@contextmanager
def chromium_page(width: int = 1440, height: int = 1000):
    """A page in headless Chromium (/usr/bin/chromium through Playwright)."""
    from playwright.sync_api import sync_playwright

    if not CHROMIUM.exists():
        raise FileNotFoundError(f"{CHROMIUM} is missing: install Debian's chromium")
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            yield browser.new_page(viewport={"width": width, "height": height})
        finally:
            browser.close()


def sign_in(page, url: str, name: str, password: str, timeout_ms: int = 90_000) -> None:
    page.goto(url)
    page.get_by_role("textbox", name="User name").fill(name, timeout=timeout_ms)
    page.get_by_role("textbox", name="Password").fill(password)
    page.get_by_role("button", name="Sign in").click()
    page.get_by_text(f"{name} ·").first.wait_for(timeout=timeout_ms)  # the sidebar


def choose(page, label: str, option: str, tries: int = 4) -> None:
    """Pick an option of a Streamlit selectbox (a react-aria combobox). Its list closes when
    the page re-renders under it (an expander opening, an image arriving): try again."""
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    box = page.get_by_role("combobox", name=label)
    for attempt in range(tries):
        box.click()
        if not page.get_by_role("listbox").is_visible():
            box.press("ArrowDown")
        try:
            page.get_by_role("option", name=option).click(timeout=3_000)
            break
        except PlaywrightTimeout:
            if attempt == tries - 1:
                raise
            page.keyboard.press("Escape")
    page.wait_for_function(
        "([label, option]) => [...document.querySelectorAll('input[role=combobox]')]"
        ".some(i => i.getAttribute('aria-label') === label && i.value === option)",
        arg=[label, option])


def background(page) -> str | None:
    """The review canvas background's checksum now (None: not drawn yet)."""
    return page.evaluate(_BACKGROUND_JS)


def wait_background_change(page, before: str | None, timeout_ms: int = 60_000) -> str:
    """Wait until the canvas shows a drawn background other than `before`; return it."""
    js = (f"(before) => {{ const now = ({_BACKGROUND_JS})(); "
          "return now && now !== before ? now : null; }")
    return page.wait_for_function(js, arg=before, timeout=timeout_ms,
                                  polling="raf").json_value()


_IDLE_JS = """
(quietMs) => {
  const app = document.querySelector('[data-testid="stApp"]');
  const now = performance.now();
  const busy = !app || app.dataset.testScriptState !== 'notRunning';
  if (busy || window.__medloopBusyAt === undefined) {
    window.__medloopBusyAt = now;
    return false;
  }
  return now - window.__medloopBusyAt >= quietMs;
}
"""


def wait_idle(page, quiet_ms: int = 300, timeout_ms: int = 60_000) -> None:
    """Wait until the app has run no script for `quiet_ms` (the canvas reports its
    background's fit once the image is drawn, which reruns the page once more)."""
    page.evaluate("() => { window.__medloopBusyAt = undefined; }")
    page.wait_for_function(_IDLE_JS, arg=quiet_ms, timeout=timeout_ms, polling=50)


def canvas_box(page) -> dict:
    """The drawing canvas's position on the page (x, y, width, height in CSS pixels)."""
    canvas = page.locator("[data-stale='false'] canvas.upper-canvas")
    canvas.wait_for()
    return canvas.bounding_box()


def drag(page, box: dict, start: tuple[float, float], end: tuple[float, float],
         steps: int = 8) -> None:
    """Press at `start`, move to `end`, release (canvas pixels)."""
    page.mouse.move(box["x"] + start[0], box["y"] + start[1])
    page.mouse.down()
    page.mouse.move(box["x"] + end[0], box["y"] + end[1], steps=steps)
    page.mouse.up()
