"""The process engineer's view, end to end: a fault injected into a running simulated plant shows
up as a deviation on the live page within a bounded time, through every real stage (simulator ->
edge agent -> broker -> streams spec check -> monitor's Kafka feed -> page in headless Chromium)."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import aiohttp
import psycopg
import pytest

from plantstream.config import Settings
from plantstream.pipeline import Pipeline
from plantstream.testing.browser import CHROMIUM, chromium, open_page, save_screenshot
from plantstream.testing.plugin import free_port, wait_until

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.integration,
    pytest.mark.slow,
    pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="chromium is not installed (apt-get install -y chromium)"),
]

TAG = "reactor.temperature"  # core grade, checked against the PTA batch's process limits
DEADLINE_S = 60.0


def readings_of(dsn: str, tag: str) -> int:
    with psycopg.connect(dsn) as conn:
        row = conn.execute(
            "SELECT count(*) FROM readings r JOIN tags t ON t.id = r.tag_id WHERE t.tag = %s", (tag,)
        ).fetchone()
        return int(row[0]) if row else 0


@pytest.mark.timeout(300)
def test_fault_in_simulator_shows_as_deviation_on_page(
    settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PLANTSTREAM_MONITOR_TOKENS", "engineer-token=owner,visitor-token=public")
    pipe = Pipeline(settings, tmp_path / "run", plants=("chemical",), seed=3, speed=10.0, rate=4.0,
                    sim_ports={"chemical": free_port()})  # fmt: skip
    monitor_port = free_port()
    try:
        pipe.start_all(monitor_port=monitor_port)
        url = f"http://127.0.0.1:{monitor_port}"

        def feed_live() -> bool:
            try:
                with urllib.request.urlopen(f"{url}/healthz", timeout=2) as r:
                    return bool(json.loads(r.read())["kafka"] == "live")
            except OSError:
                pipe.check_alive()
                return False

        wait_until(feed_live, 60, "the monitor's Kafka feed")
        # Streams has its partitions and the sink writes: the whole chain is flowing.
        wait_until(lambda: readings_of(settings.dsn, TAG) > 0, 150, f"{TAG} readings in the database", interval=1.0)

        async def scenario() -> float:
            with chromium() as devtools:
                async with aiohttp.ClientSession() as session:
                    page = await open_page(session, devtools, f"{url}/?token=engineer-token&plant=chemical")
                    selector = json.dumps(f"#deviations li[data-tag={json.dumps(TAG)}].open")
                    assert not await page.js(f"!!document.querySelector({selector})"), "a deviation before the fault"
                    t0 = time.monotonic()
                    fault = [sys.executable, "-m", "plantstream.cli", "sim", "fault", "--endpoint",
                             pipe.sim_endpoint("chemical"), "--tag", TAG, "--kind", "spike", "--duration", "15"]  # fmt: skip
                    out = await asyncio.to_thread(subprocess.run, fault, env=pipe.env(), capture_output=True,
                                                  text=True, timeout=60)  # fmt: skip
                    assert out.returncode == 0, out.stderr
                    await page.until(f"!!document.querySelector({selector})", DEADLINE_S, "the deviation on the page")
                    shown_after = time.monotonic() - t0
                    text = await page.js(f"document.querySelector({selector}).textContent")
                    assert "PTA" in text or "limit" in text, text
                    await save_screenshot(page, tmp_path, "e2e-deviation.png")
                    # A visitor (public tier) never sees this core-grade tag's deviation.
                    visitor = await open_page(session, devtools, f"{url}/?token=visitor-token&plant=chemical")
                    assert (
                        await visitor.js(
                            f"!!document.querySelector({json.dumps(f'#deviations li[data-tag={json.dumps(TAG)}]')})"
                        )
                        is False
                    )
                    assert TAG not in await visitor.js("document.documentElement.outerHTML")
                    return shown_after

        shown_after = asyncio.run(scenario())
        assert shown_after < DEADLINE_S
        print(f"e2e browser: deviation on the page {shown_after:.1f} s after the fault was injected")
    finally:
        pipe.stop()
