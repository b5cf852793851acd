"""A headless Chromium driven over the DevTools protocol (websocket-client), for the admin page's browser test."""
from __future__ import annotations

import base64
import itertools
import json
import shutil
import subprocess
import time
import urllib.request
from pathlib import Path

import websocket

from bench.live_hub import poll

# What Chromium answers an evaluation that raced a navigation: no page to ask yet, not a failure.
NAVIGATING = ("Inspected target navigated or closed", "Cannot find context with specified id")
NAVIGATION_WAIT = 10.0
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage", "--window-size=1280,1800",
                  "--remote-debugging-port=0", "--remote-debugging-address=127.0.0.1"]


def chromium_path() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")




class Browser:
    """One Chromium process with one page; ``send`` is a DevTools call, ``js`` evaluates in the page."""

    def __init__(self, profile: Path) -> None:
        self.profile = profile
        self.log = open(profile.parent / "chromium.log", "wb")  # noqa: SIM115 — closed in close()
        self.process = subprocess.Popen([chromium_path(), *CHROMIUM_FLAGS, f"--user-data-dir={profile}", "about:blank"],
                                        stdout=self.log, stderr=subprocess.STDOUT)
        self.ids = itertools.count(1)
        try:
            port = poll(self._devtools_port, what="Chromium's DevTools port")
            page = poll(lambda: self._page_target(port), what="a page target")
            self.ws = websocket.create_connection(page["webSocketDebuggerUrl"], timeout=30, suppress_origin=True)
        except BaseException:
            self.close()
            raise

    def _devtools_port(self) -> int | None:
        if self.process.poll() is not None:
            raise RuntimeError(f"chromium exited with {self.process.returncode}")
        marker = self.profile / "DevToolsActivePort"
        lines = marker.read_text().splitlines() if marker.exists() else []
        return int(lines[0]) if lines and lines[0].isdigit() else None

    @staticmethod
    def _page_target(port: int) -> dict | None:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=5) as response:
            targets = json.loads(response.read())
        return next((t for t in targets if t.get("type") == "page"), None)

    def send(self, method: str, **params) -> dict:
        call_id = next(self.ids)
        self.ws.send(json.dumps({"id": call_id, "method": method, "params": params}))
        while True:  # events arrive in between; skip them
            message = json.loads(self.ws.recv())
            if message.get("id") == call_id:
                if "error" in message:
                    raise RuntimeError(f"{method}: {message['error']}")
                return message.get("result", {})

    def js(self, expression: str):
        """The expression's value in the page; while the page is being replaced (a form just submitted),
        asked again until a page answers (``NAVIGATION_WAIT`` at most)."""
        deadline = time.monotonic() + NAVIGATION_WAIT
        while True:
            try:
                result = self.send("Runtime.evaluate", expression=expression, returnByValue=True)
                break
            except RuntimeError as exc:
                if not any(sign in str(exc) for sign in NAVIGATING) or time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        if "exceptionDetails" in result:
            raise RuntimeError(f"{expression}: {result['exceptionDetails']}")
        return result["result"].get("value")

    def wait_for_page(self, path: str) -> None:
        """Until the page at ``path`` (with its query) has loaded."""
        poll(lambda: self.js("location.pathname + location.search") == path and self.js("document.readyState") == "complete",
             what=f"the page {path}")

    def navigate(self, url: str) -> None:
        self.send("Page.navigate", url=url)

    def click(self, selector: str) -> None:
        """A click, as a user's: the browser submits the form with its own Origin and Sec-Fetch-* headers."""
        self.js(f"document.querySelector({json.dumps(selector)}).click()")

    def type_into(self, selector: str, text: str) -> None:
        self.js(f"document.querySelector({json.dumps(selector)}).focus()")
        self.send("Input.insertText", text=text)

    def screenshot(self, path: Path) -> Path:
        data = self.send("Page.captureScreenshot", format="png", captureBeyondViewport=True)["data"]
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(base64.b64decode(data))
        return path

    def close(self) -> None:
        ws = getattr(self, "ws", None)
        if ws is not None:
            ws.close()
        self.process.terminate()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.log.close()
