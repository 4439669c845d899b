"""Any contract message as plain JSON-able data: what ``plantstream topics tail --json`` prints,
for people and for tools in other languages.

One Kafka record gives one or more objects (a reading batch gives one object per reading). Each
carries ``topic``, ``partition``, ``offset``, ``key`` and ``type`` (reading, aggregate, deviation,
context, tag); a record that is not a decodable plantstream message (a dead letter, a stranger's
bytes) gives one object with ``type: "undecodable"``, the codec's ``error``, the value as ``value_b64`` and the record's headers
(the dead-letter reason lives there). Enum fields are their names in lower case; times stay
integer Unix microseconds (``ts_us``, ``start_us``) as on the wire.
"""

from __future__ import annotations

import base64
import dataclasses
import math
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from plantstream.producers import codec
from plantstream.producers.codec import CodecError, Kind


def _plain(v: Any) -> Any:
    # JSON has no NaN or infinity: a bad reading's NaN value becomes null (its quality says why).
    if isinstance(v, float) and not math.isfinite(v):
        return None
    return v


def _text(b: bytes | str | None) -> str | None:
    if b is None or isinstance(b, str):
        return b
    return b.decode("utf-8", "backslashreplace")


def record_objects(
    value: bytes | None,
    *,
    topic: str = "",
    partition: int = 0,
    offset: int = 0,
    key: bytes | str | None = None,
    headers: Sequence[tuple[str, bytes | str | None]] | Mapping[str, bytes | str | None] | None = None,
) -> Iterator[dict[str, Any]]:
    meta: dict[str, Any] = {"topic": topic, "partition": partition, "offset": offset, "key": _text(key)}
    try:
        if value is None:
            raise CodecError("empty record (tombstone)")
        kind = codec.peek_kind(value)
        if kind is Kind.READINGS:
            batch = codec.decode_readings(value)
            for r in batch.readings():
                row = {f.name: getattr(r, f.name) for f in dataclasses.fields(r)}
                row.update(quality=r.quality.name.lower(), origin=r.origin.name.lower(), value=_plain(r.value))
                yield {**row, **meta, "type": "reading"}
        elif kind is Kind.AGGREGATES:
            for a in codec.decode_aggregates(value):
                yield {**{k: _plain(v) for k, v in dataclasses.asdict(a).items()}, **meta, "type": "aggregate"}
        elif kind is Kind.DEVIATION:
            yield {**{k: _plain(v) for k, v in codec.decode_deviation_map(value).items()}, **meta, "type": "deviation"}
        elif kind is Kind.CONTEXT:
            yield {**codec.context_to_dict(codec.decode_context(value)), **meta, "type": "context"}
        else:
            m = codec.decode_tag_meta(value)
            yield {**dataclasses.asdict(m), "grade": m.grade.value, **meta, "type": "tag"}
    except CodecError as exc:
        yield {
            **meta,
            "type": "undecodable",
            "error": exc.reason,
            "value_b64": base64.b64encode(value or b"").decode(),
            "headers": {k: _text(v) for k, v in (headers.items() if isinstance(headers, Mapping) else headers or [])},
        }
