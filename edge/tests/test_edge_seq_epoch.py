"""Issue 15 item 3: a new buffer starts a new sequence epoch above every earlier buffer's seqs."""

from __future__ import annotations

import time
from pathlib import Path

from plantstream.edge.buffer import Buffer


def test_new_buffer_starts_a_new_seq_epoch_above_a_lost_one(tmp_path: Path) -> None:
    before_ns = time.time_ns()
    with Buffer(tmp_path / "old.db") as buf:
        first_old = buf.reserve("src", 1)
        buf.reserve("src", 10_000)  # a busy epoch ...
        buf.append([])
        last_old = buf.last_seq("src")
    assert first_old > before_ns, "the epoch starts at the clock, not at 1"
    with Buffer(tmp_path / "new.db") as buf:  # ... whose buffer was lost: a new one, same source
        assert buf.reserve("src", 1) > last_old
        assert buf.reserve("other", 1) > before_ns, "every source of a new buffer gets an epoch"


def test_reopened_buffer_keeps_its_epoch(tmp_path: Path) -> None:
    with Buffer(tmp_path / "b.db") as buf:
        buf.reserve("src", 10)
        buf.append([])
        last = buf.last_seq("src")
    with Buffer(tmp_path / "b.db") as buf:
        assert buf.reserve("src", 1) == last + 1, "an existing buffer continues its counter"
