"""Real headless Chromium for browser tests, driven over the Chrome DevTools Protocol with aiohttp's
websocket client (no browser download: Debian's ``chromium`` package)."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp

from plantstream.paths import project_root
from plantstream.testing.plugin import free_port, wait_until

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"


class Cdp:
    """A minimal DevTools client: one page target, commands awaited by id."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self.ws = ws
        self.n = 0
        self.pending: dict[int, asyncio.Future[Any]] = {}
        self.reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        async for msg in self.ws:
            data = json.loads(msg.data)
            fut = self.pending.pop(data.get("id", -1), None)
            if fut is not None and not fut.done():
                if "error" in data:
                    fut.set_exception(RuntimeError(str(data["error"])))
                else:
                    fut.set_result(data.get("result", {}))

    async def send(self, method: str, **params: Any) -> Any:
        self.n += 1
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self.pending[self.n] = fut
        await self.ws.send_json({"id": self.n, "method": method, "params": params})
        return await asyncio.wait_for(fut, 20)

    async def js(self, expr: str) -> Any:
        res = await self.send("Runtime.evaluate", expression=expr, returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in res:
            raise AssertionError(f"page script failed: {res['exceptionDetails']}")
        return res["result"].get("value")

    async def until(self, expr: str, timeout: float, what: str) -> Any:
        deadline = time.monotonic() + timeout
        last = None
        while time.monotonic() < deadline:
            last = await self.js(expr)
            if last:
                return last
            await asyncio.sleep(0.2)
        raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what} (last: {last!r})")


@contextlib.contextmanager
def chromium() -> Iterator[int]:
    """Headless Chromium (Debian's package) with its DevTools endpoint on a free loopback port."""
    port = free_port()
    with tempfile.TemporaryDirectory(prefix="ps-chromium-") as profile:
        proc = subprocess.Popen(
            [
                CHROMIUM,
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-dev-shm-usage",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--no-first-run",
                "--hide-scrollbars",
                f"--user-data-dir={profile}",
                f"--remote-debugging-port={port}",
                "--remote-debugging-address=127.0.0.1",
                "about:blank",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            # Its own process group: the renderer and utility children must be gone too before the
            # profile directory is removed (they write into it after the main process exits).
            start_new_session=True,
        )
        try:

            def up() -> bool:
                try:
                    with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/version", timeout=2):
                        return True
                except OSError:
                    assert proc.poll() is None, f"chromium exited with {proc.returncode}"
                    return False

            wait_until(up, 30, "chromium's DevTools endpoint")
            yield port
        finally:
            _signal_group(proc.pid, signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(10)
            _signal_group(proc.pid, signal.SIGKILL)  # whatever of the group is left
            proc.wait()
            # Until the group is gone (bounded: an unreaped zombie still counts as a member).
            deadline = time.monotonic() + 5
            while _signal_group(proc.pid, 0) and time.monotonic() < deadline:
                time.sleep(0.05)


def _signal_group(pgid: int, sig: int) -> bool:
    """Send ``sig`` to a process group; False when no process of it is left."""
    try:
        os.killpg(pgid, sig)
    except ProcessLookupError:
        return False
    return True


async def open_page(session: aiohttp.ClientSession, devtools: int, url: str) -> Cdp:
    async with session.put(f"http://127.0.0.1:{devtools}/json/new?about:blank") as r:
        target = await r.json(content_type=None)
    ws = await session.ws_connect(target["webSocketDebuggerUrl"], max_msg_size=64 * 1024 * 1024)
    cdp = Cdp(ws)
    await cdp.send("Page.enable")
    await cdp.send("Runtime.enable")
    await cdp.send("Emulation.setDeviceMetricsOverride", width=1600, height=1000, deviceScaleFactor=1, mobile=False)
    await cdp.send("Page.navigate", url=url)
    await cdp.until("document.body && document.body.dataset.ready === '1'", 20, f"page ready at {url}")
    return cdp


async def save_screenshot(page: Cdp, tmp_dir: Path, artifact: str) -> bytes:
    """Capture the page as PNG into the test's tmp dir and ``.state/artifacts/<artifact>`` (for humans)."""
    shot = await page.send("Page.captureScreenshot", format="png")
    png = base64.b64decode(shot["data"])
    (tmp_dir / artifact).write_bytes(png)
    artifacts = project_root() / ".state" / "artifacts"
    artifacts.mkdir(parents=True, exist_ok=True)
    (artifacts / artifact).write_bytes(png)
    return png
