"""The page in real headless Chromium, driven over the Chrome DevTools Protocol (aiohttp websocket).

The whole chain is real: ``plantstream monitor`` as a subprocess, PostgreSQL loaded by the sink,
aggregates and a deviation produced to the broker while the page is open.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from plantstream.config import Settings
from plantstream.contract import Aggregate, Deviation, now_us
from plantstream.producers import codec
from plantstream.producers.kafka import ensure_contract_topics, make_producer, produce
from plantstream.producers.topics import Topics
from plantstream.testing.browser import CHROMIUM, open_page, save_screenshot
from plantstream.testing.browser import chromium as launch_chromium
from plantstream.testing.monitor import CASTER, OWNER, PUBLIC, TAGS, TOKENS_ENV
from plantstream.testing.plugin import free_port, wait_until

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="chromium is not installed (apt-get install -y chromium)"),
]

CORE_TAG = "caster1.casting_speed"
# (index in testdata.TAGS, (tag, equipment, base, amplitude)) - the same curves as the loaded history.
LIVE = [(k, (t[1], t[2], t[6], t[7])) for k, t in enumerate(TAGS) if t[1] in (CORE_TAG, "caster1.cooling_water_flow")]


@pytest.fixture
def chromium() -> Iterator[int]:
    with launch_chromium() as port:
        yield port


class Feeder(threading.Thread):
    """Produces windows for two tags every 250 ms, continuing the loaded history's curves in real
    time (so the trend is continuous), with a short excursion of the core tag every 20 s."""

    def __init__(self, settings: Settings, t0_us: int) -> None:
        super().__init__(daemon=True)
        self.t0_us = t0_us
        self.topics = Topics(settings.topic_prefix, settings.partitions)
        self.producer = make_producer(settings.kafka_bootstrap)
        self.stop = threading.Event()

    def run(self) -> None:
        i = 0
        start = (now_us() // 1_000_000) * 1_000_000
        while not self.stop.is_set():
            aggs = []
            for k, (tag, eq, base, amp) in LIVE:
                v = base + amp * ((i * 7 + k * 3) % 11 - 5) / 5
                aggs.append(
                    Aggregate("steel", eq, tag, "1s", start + i * 1_000_000, 10, 0, v, v, v, v, 0.0, v, "", "H240117")
                )
            produce(self.producer, self.topics.aggregates, codec.encode_aggregates(aggs), key=f"steel/{CASTER}/strand")
            self.producer.poll(0)
            i += 1
            self.stop.wait(0.25)
        self.producer.flush(5)

    def deviation(self, ident: str) -> None:
        dev = {
            "id": ident,
            "kind": "process",
            "status": "open",
            "plant": "steel",
            "equipment": f"{CASTER}/strand",
            "tag": CORE_TAG,
            "lot": "H240117",
            "spec": "EN10025-2:S355J2",
            "property": "casting_speed",
            "limit_min": 0.9,
            "limit_max": 1.6,
            "unit": "m/min",
            "start_us": now_us(),
            "end_us": None,
            "peak": 1.74,
        }
        produce(
            self.producer,
            self.topics.deviations,
            codec.encode_deviation(Deviation.from_map(dev)),
            key=f"steel/{CASTER}/strand",
        )
        self.producer.flush(5)


@pytest.fixture
def monitor_url(loaded_db: Any, settings: Settings, settings_env: dict[str, str]) -> Iterator[str]:
    ensure_contract_topics(settings.kafka_bootstrap, Topics(settings.topic_prefix, settings.partitions))
    port = free_port()
    env = {**settings_env, "PLANTSTREAM_MONITOR_TOKENS": TOKENS_ENV}
    proc = subprocess.Popen(
        [sys.executable, "-m", "plantstream.cli", "monitor", "--port", str(port)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"

    def live() -> bool:
        try:
            with urllib.request.urlopen(f"{url}/healthz", timeout=2) as r:
                return bool(json.loads(r.read())["kafka"] == "live")
        except OSError:
            assert proc.poll() is None, f"monitor exited with {proc.returncode}"
            return False

    try:
        wait_until(live, 30, "the monitor with its Kafka feed live")
        yield url
    finally:
        proc.terminate()
        proc.wait(15)


@pytest.mark.timeout(120)
def test_page_live_values_deviation_and_withholding(
    chromium: int, monitor_url: str, loaded_db: Any, settings: Settings, tmp_path: Path
) -> None:
    feeder = Feeder(settings, loaded_db[1])
    feeder.start()

    async def run() -> None:
        async with aiohttp.ClientSession() as session:
            owner = await open_page(session, chromium, f"{monitor_url}/?token={OWNER}&plant=steel")
            assert await owner.js("document.querySelector('#tier').textContent") == "owner"
            # Tree: all three plants; the table of the first plant lists the core tag.
            plants = await owner.js("[...document.querySelectorAll('.tree .plant > .node')].map(n => n.dataset.plant)")
            assert sorted(plants) == ["chemical", "fiber", "steel"]
            row = f"document.querySelector('tr[data-key=\"steel/{CORE_TAG}\"]')"
            assert await owner.js(f"!!{row}")
            # Live values change in the table (fed by the SSE stream from Kafka).
            first = await owner.until(
                f"{row}.querySelector('.val').textContent !== '—' && {row}.querySelector('.val').textContent",
                15,
                "a live value",
            )
            await owner.until(
                f"{row}.querySelector('.val').textContent !== {json.dumps(first)}", 10, "the live value to change"
            )
            assert await owner.js(f"{row}.className") == "q-good"
            # The trend of the spec-checked tag has the lot's process limits as its band.
            chart = f"document.querySelector('.chart[data-key=\"steel/{CORE_TAG}\"]')"
            await owner.until(f"{chart} && {chart}.dataset.hi === '1.6'", 10, "the spec band on the trend")
            assert await owner.js(f"{chart}.dataset.lo") == "0.9"
            # A tag without live data turns stale (not shown as a fresh good value).
            await owner.until(
                "document.querySelector('tr[data-key=\"steel/caster1.mould_level\"]').className === 'q-stale'",
                5,
                "a stale row",
            )
            # A deviation produced now appears on the page within a bounded time.
            ident = f"browser-{settings.topic_prefix}"
            t0 = time.monotonic()
            await asyncio.to_thread(feeder.deviation, ident)
            await owner.until(
                f"!!document.querySelector('#deviations li[data-id=\"{ident}\"]')", 10, "the deviation on the page"
            )
            shown_after = time.monotonic() - t0
            assert await owner.js(
                f"document.querySelector('#deviations li[data-id=\"{ident}\"]').classList.contains('open')"
            )
            # Let a few more points land, then keep a screenshot for humans.
            xs = f"__monitor.charts.get('steel/{CORE_TAG}').xs"
            assert await owner.js(f"{xs}.length") > 300  # seeded from server-side downsampled history
            newest = await owner.js(f"{xs}[{xs}.length - 1]")
            await owner.until(f"{xs}[{xs}.length - 1] >= {newest + 5}", 10, "more live points on the trend")
            await save_screenshot(owner, tmp_path, "monitor.png")

            # The public tier: the core tag exists nowhere on its page, not even via the live stream.
            public = await open_page(session, chromium, f"{monitor_url}/?token={PUBLIC}&plant=steel")
            assert await public.js("document.querySelector('#tier').textContent") == "public"
            general = "document.querySelector('tr[data-key=\"steel/caster1.cooling_water_flow\"] .val').textContent"
            await public.until(f"{general} !== '—'", 15, "a live general-grade value on the public page")
            assert await public.js(f"__monitor.tags.has('steel/{CORE_TAG}')") is False
            assert await public.js(f"__monitor.latest.has('steel/{CORE_TAG}')") is False
            assert await public.js(f"!!document.querySelector('#deviations li[data-id=\"{ident}\"]')") is False
            assert CORE_TAG not in await public.js("document.documentElement.outerHTML")
            assert shown_after < 10

    try:
        asyncio.run(run())
    finally:
        feeder.stop.set()
        feeder.join(10)
