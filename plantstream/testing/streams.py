"""Test helpers for the streams stage (used by its integration tests)."""

from __future__ import annotations

import contextlib
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

from plantstream.config import Settings
from plantstream.producers.kafka import ensure_contract_topics
from plantstream.producers.topics import Topics


@contextlib.contextmanager
def worker_process(
    settings: Settings, settings_env: dict[str, str], workdir: Path, config_yaml: str
) -> Iterator[subprocess.Popen[bytes]]:
    """A `plantstream streams worker` process with ``config_yaml``, on the settings' topics (created
    first); stopped with SIGTERM (SIGKILL after 20 s) afterwards, its log tail echoed to stderr."""
    ensure_contract_topics(settings.kafka_bootstrap, Topics(settings.topic_prefix, settings.partitions))
    cfg = workdir / "streams.yaml"
    cfg.write_text(config_yaml)
    log_path = workdir / "worker.log"
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "plantstream.cli", "streams", "worker", "--config", str(cfg)],
            env={**settings_env, "PLANTSTREAM_LOG_FORMAT": "json"},
            stdout=log,
            stderr=log,
        )
        try:
            yield proc
        finally:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)
    sys.stderr.write(log_path.read_text()[-4000:])
