"""The durable buffer: order, caps, sequence persistence, and no loss of acknowledged data on kill -9."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from plantstream.contract import Origin
from plantstream.edge.batcher import Batcher
from plantstream.edge.buffer import Buffer, Entry
from plantstream.producers.codec import decode_readings


def _entry(i: int, size: int = 10, source: str = "s1") -> Entry:
    return Entry("t.raw", f"k{i}".encode(), i.to_bytes(4, "big") + b"x" * size, source, count=1)


def test_buffer_reads_in_append_order_and_deletes_only_given_ids(tmp_path: Path) -> None:
    with Buffer(tmp_path / "b.db") as buf:
        for start in range(0, 30, 10):
            buf.append([_entry(i) for i in range(start, start + 10)])
        rows = buf.read(0, 100)
        assert [int.from_bytes(r.entry.value[:4], "big") for r in rows] == list(range(30))
        assert buf.delete([rows[0].id, rows[5].id]) == 2
        again = buf.read(0, 100)
        assert [int.from_bytes(r.entry.value[:4], "big") for r in again] == [i for i in range(30) if i not in (0, 5)]
        assert [r.id for r in buf.read(rows[10].id, 5)] == [r.id for r in rows[11:16]]
        assert buf.depth().readings == 28


def test_headers_round_trip(tmp_path: Path) -> None:
    with Buffer(tmp_path / "b.db") as buf:
        buf.append([Entry("t.dl", None, b"\xff raw", "m", 0, [("plantstream-reason", b"bad json")])])
        (row,) = buf.read()
        assert row.entry.headers == [("plantstream-reason", b"bad json")]
        assert row.entry.key is None and row.entry.value == b"\xff raw"


def test_max_bytes_drops_oldest_and_counts_across_reopen(tmp_path: Path) -> None:
    path = tmp_path / "b.db"
    one = _entry(0, size=1000).size
    with Buffer(path, max_bytes=one * 10) as buf:
        buf.append([_entry(i, size=1000) for i in range(25)])
        depth = buf.depth()
        assert depth.bytes <= one * 10
        kept = [int.from_bytes(r.entry.value[:4], "big") for r in buf.read(0, 100)]
        assert kept == list(range(25 - len(kept), 25)), "the newest survive, the oldest go"
        assert buf.dropped["dropped_max_bytes"] == 25 - len(kept)
    with Buffer(path, max_bytes=one * 10) as buf:
        assert buf.dropped["dropped_max_bytes"] == 25 - len(kept)
        assert buf.depth().entries == len(kept)


def test_max_age_expires_oldest(tmp_path: Path) -> None:
    with Buffer(tmp_path / "b.db", max_age_s=60) as buf:
        buf.append([_entry(i) for i in range(3)])
        created = buf.read()[0].created_us
        assert buf.expire(now_us=created + 30_000_000) == 0
        assert buf.expire(now_us=created + 61_000_000) == 3
        assert buf.depth().entries == 0 and buf.dropped["dropped_max_age"] == 3


def test_seq_strictly_increasing_across_reopen(tmp_path: Path) -> None:
    path = tmp_path / "b.db"
    with Buffer(path) as buf:
        b = Batcher("steel", "t.raw", buf, max_readings=1000, max_delay_s=10)
        b.add("src", Origin.MQTT, [("a/b", "t1", 1, 1.0, "m", 0, None, None, None)] * 5)
        buf.append(entries := b.take(everything=True))
        first = decode_readings(entries[0].value).seq[0]
        assert buf.last_seq("src") == first + 4
        buf.reserve("src", 3)  # reserved but never committed: may leave a gap, never a repeat
    with Buffer(path) as buf:
        assert buf.last_seq("src") == first + 4
        b = Batcher("steel", "t.raw", buf, max_readings=1000, max_delay_s=10)
        b.add("src", Origin.MQTT, [("a/b", "t1", 2, 2.0, "m", 0, None, None, None)] * 2)
        (entry,) = b.take(everything=True)
        assert decode_readings(entry.value).seq == [first + 5, first + 6]


def test_batcher_groups_per_equipment_and_source_and_flushes_on_size(tmp_path: Path) -> None:
    with Buffer(tmp_path / "b.db") as buf:
        b = Batcher("steel", "t.raw", buf, max_readings=3, max_delay_s=60)
        b.add("s1", Origin.OPCUA, [("x/a", f"t{i}", i, float(i), "m", 0, None, None, None) for i in range(4)])
        b.add("s1", Origin.OPCUA, [("x/b", "u", 9, True, "", 2, 0x80000000, 8, None)])
        assert len(b.take()) == 1, "only the full batch is due before max_delay"
        rest = b.take(everything=True)
        batches = sorted((decode_readings(e.value) for e in rest), key=lambda x: x.equipment)
        assert [(x.equipment, x.tag) for x in batches] == [("x/a", ["t3"]), ("x/b", ["u"])]
        assert batches[1].value == [True] and batches[1].status_code == [0x80000000]
        assert batches[1].server_ts_us == [8] and rest[1].key in (b"steel/x/a", b"steel/x/b")


_CHILD = textwrap.dedent(
    """
    import sys
    from plantstream.contract import Origin
    from plantstream.edge.batcher import Batcher
    from plantstream.edge.buffer import Buffer

    buf = Buffer(sys.argv[1], synchronous="normal")
    b = Batcher("steel", "t.raw", buf, max_readings=50, max_delay_s=60)
    i = 0
    while True:
        b.add("src", Origin.MQTT, [("a/b", "t", i + k, float(i + k), "m", 0, None, None, None) for k in range(7)])
        entries = b.take(everything=True)
        buf.append(entries)
        i += 7
        # Acknowledge only after append returned: the contract under test.
        sys.stdout.write(f"{i - 1} {buf.last_seq('src')}\\n")
        sys.stdout.flush()
    """
)


def test_kill_9_loses_nothing_acknowledged(tmp_path: Path) -> None:
    path = tmp_path / "b.db"
    script = tmp_path / "child.py"
    script.write_text(_CHILD)
    acked_ts = -1
    acked_seq = 0
    for _round in range(2):
        proc = subprocess.Popen([sys.executable, str(script), str(path)], stdout=subprocess.PIPE, text=True)
        assert proc.stdout is not None
        try:
            for _ in range(300):
                line = proc.stdout.readline()
                assert line, "child died"
                ts, seq = map(int, line.split())
                assert seq > acked_seq, "seq must keep increasing across kills"
                acked_ts, acked_seq = ts, seq
        finally:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)
        with Buffer(path) as buf:
            stored_ts: set[int] = set()
            stored_seq: list[int] = []
            for row in buf.read(0, 1_000_000):
                batch = decode_readings(row.entry.value)
                stored_ts.update(batch.ts_us)
                stored_seq.extend(batch.seq)
            assert set(range(acked_ts + 1)) <= stored_ts, "an acknowledged reading was lost"
            assert stored_seq == sorted(stored_seq) and len(set(stored_seq)) == len(stored_seq)
            assert buf.last_seq("src") >= acked_seq


def test_drops_at_the_cap_are_logged_once_per_interval(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    one = _entry(0, size=1000).size
    with Buffer(tmp_path / "b.db", max_bytes=one * 5) as buf, caplog.at_level(logging.WARNING):
        for i in range(40):  # every append past the cap drops the oldest entry
            buf.append([_entry(i, size=1000)])
        assert sum(buf.dropped.values()) >= 30
    warnings = [r for r in caplog.records if "buffer full" in r.getMessage()]
    assert len(warnings) == 1, [r.getMessage() for r in warnings]
