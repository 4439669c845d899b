"""Same key, different value (migration 0009): the first value stays in readings, the other is
kept in reading_conflicts and counted, never dropped silently; replays add nothing."""

from __future__ import annotations

import dataclasses

import psycopg
import pytest

from plantstream.contract import Quality
from plantstream.sinks.timescaledb.migrate import migrate
from plantstream.sinks.timescaledb.sink import PostgresSink
from plantstream.testing.sinks import checksums, reading_records, readings

pytestmark = pytest.mark.integration


def _conflicts(dsn: str) -> list[tuple[object, ...]]:
    with psycopg.connect(dsn) as conn:
        return list(
            conn.execute(
                "SELECT t.tag, c.incoming_seq, c.stored, c.incoming FROM reading_conflicts c "
                "JOIN tags t ON t.id = c.tag_id ORDER BY c.time, c.incoming_seq"
            ).fetchall()
        )


def test_a_corrected_value_is_kept_aside_and_counted(fresh_db: str) -> None:
    migrate(fresh_db)
    first = readings(40, tags=2)
    # A source re-sends 3 samples corrected (new value), 1 downgraded (same value, bad), 1 unchanged.
    corrected = [dataclasses.replace(r, value=float(r.value) + 100.0, seq=r.seq + 1000) for r in first[:3]]
    downgraded = [dataclasses.replace(first[3], quality=Quality.BAD, seq=first[3].seq + 1000)]
    same = [dataclasses.replace(first[4], seq=first[4].seq + 1000)]
    sink = PostgresSink(fresh_db)
    sink.connect()
    try:
        sink.write(reading_records(first))
        assert sink.flush() == []
        before = checksums(fresh_db)
        sink.write(reading_records(corrected + downgraded + same))
        assert sink.flush() == []
        assert sink.last.value_conflicts == 4 and sink.value_conflicts == 4
        assert checksums(fresh_db)["readings"] == before["readings"]  # the first values stay
        rows = _conflicts(fresh_db)
        # Replays of both the originals and the corrections add nothing.
        sink.write(reading_records(first + corrected + downgraded + same))
        assert sink.flush() == []
        assert sink.value_conflicts == 4 and _conflicts(fresh_db) == rows
    finally:
        sink.close()
    assert [(tag, seq) for tag, seq, _s, _i in rows] == [(r.tag, r.seq) for r in corrected + downgraded]
    for (_tag, _seq, stored, incoming), old, new in zip(rows, first[:4], corrected + downgraded, strict=True):
        assert stored == {"value": old.value, "quality": 0, "seq": old.seq}
        assert incoming == {"value": new.value, "quality": int(new.quality), "seq": new.seq}
