"""The pure stream processor: decoded inputs in, outputs out. No Kafka, no clocks of its own.

One :class:`Processor` per source partition (its windows, dedup marks and excursions belong to
that partition's keys); one :class:`SharedContext` per worker (tag rules and lot context are
needed by every partition: a lot started on a parent equipment stamps children that hash to
other partitions, and tag metadata is keyed by tag, not equipment).

Failure behaviour: nothing here raises on input. Undecodable records become :class:`DeadLetter`
outputs with the reason; tag metadata whose unit or datatype cannot be compiled is dead-lettered
and readings of that tag pass through with quality UNCERTAIN and a reason.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from plantstream.contract import (
    READING_COLUMN_NAMES,
    Aggregate,
    ContextEvent,
    ContextKind,
    Deviation,
    DeviationKind,
    DeviationStatus,
    TagMeta,
)
from plantstream.domain.units import Converter, UnitError, compile_converter
from plantstream.domain.validate import BAD, RuleError, TagRule, Validator, compile_rule
from plantstream.producers.codec import (
    CodecError,
    ReadingBatch,
    decode_context,
    decode_readings,
    decode_tag_meta,
)
from plantstream.streams.logic.dedup import Deduplicator
from plantstream.streams.logic.lot_tags import LotTagSpec, LotTagTracker
from plantstream.streams.logic.lots import LotTracker
from plantstream.streams.logic.specs import SpecChecker, SpecRegistry, deviation_id
from plantstream.streams.logic.windows import ACCEPTED, LATE, MINUTE_US, SECOND_US, WindowEngine

log = logging.getLogger(__name__)

LATE_REASON = "late: its aggregation window had closed"
# Reading columns (contract.READING_COLUMNS) this stage rewrites per row: the unit normalized, the
# value converted, quality and reason from validation, the lot stamped. The others are carried
# over as they came, so a new contract column passes through without a change here.
STAMPED = ("unit", "value", "quality", "lot", "reason")
CARRIED = tuple(name for name in READING_COLUMN_NAMES if name not in STAMPED)


@dataclass(frozen=True, slots=True)
class ProcessorConfig:
    allowed_lateness_s: float = 2.0
    idle_timeout_s: float = 90.0
    dedup_max_streams: int = 200_000
    lot_history: int = 256
    lot_tags: tuple[LotTagSpec, ...] = ()
    dedup_max_spans: int = 8192
    dedup_max_spans_total: int = 2_000_000
    # Receiving clock window: a source time further than this behind/ahead of ``now_us`` is
    # kept, flagged BAD, and moves no watermark. None: unchecked (the pure processor has no
    # clock; the worker's StreamsConfig sets 7 days / 10 minutes).
    clock_past_s: float | None = None
    clock_future_s: float | None = None


@dataclass(slots=True)
class DeadLetter:
    """A record that could not be processed: the original bytes and why."""

    value: bytes | None
    reason: str
    origin: str  # topic/partition/offset
    key: bytes | None = None
    headers: Sequence[tuple[str, bytes | None]] = ()


@dataclass(slots=True)
class Output:
    clean: list[ReadingBatch] = field(default_factory=list)
    aggregates: list[Aggregate] = field(default_factory=list)
    deviations: list[Deviation] = field(default_factory=list)
    deadletters: list[DeadLetter] = field(default_factory=list)
    context: list[ContextEvent] = field(default_factory=list)  # lot events derived from lot tags
    readings_in: int = 0
    duplicates: int = 0
    late: int = 0
    clock_rejected: int = 0  # readings outside the receiving clock window (flagged BAD)

    def extend(self, other: Output) -> None:
        self.clean += other.clean
        self.aggregates += other.aggregates
        self.deviations += other.deviations
        self.deadletters += other.deadletters
        self.context += other.context
        self.readings_in += other.readings_in
        self.duplicates += other.duplicates
        self.late += other.late
        self.clock_rejected += other.clock_rejected

    def __bool__(self) -> bool:
        return bool(self.clean or self.aggregates or self.deviations or self.deadletters or self.context)


class SharedContext:
    """Worker-wide state: compiled tag rules, lot context, spec registry."""

    def __init__(self, registry: SpecRegistry | None = None, lot_history: int = 256) -> None:
        self.rules: dict[tuple[str, str], TagRule] = {}
        self.rule_errors: dict[tuple[str, str], str] = {}
        self.lots = LotTracker(history=lot_history)
        self.registry = registry
        self.version = 0  # bumps when rules change (processors drop their per-tag caches)

    def register_tag(self, meta: TagMeta) -> str | None:
        """Compile and install ``meta``; returns the error (and keeps the tag unruled) if unusable."""
        key = (meta.plant, meta.tag)
        self.version += 1
        try:
            rule = compile_rule(meta)
        except RuleError as exc:
            self.rules.pop(key, None)
            self.rule_errors[key] = str(exc)
            return str(exc)
        self.rules[key] = rule
        self.rule_errors.pop(key, None)
        return None

    def tag_record(self, value: bytes | None, origin: str, key: bytes | None = None) -> list[DeadLetter]:
        """Decode and register one record of the tags topic (None value = compaction tombstone)."""
        if value is None:
            return []
        try:
            meta = decode_tag_meta(value)
        except CodecError as exc:
            return [DeadLetter(value, exc.reason, origin, key)]
        err = self.register_tag(meta)
        return [DeadLetter(value, f"tag metadata rejected: {err}", origin, key)] if err else []

    def apply_context(self, ev: ContextEvent) -> bool:
        return bool(self.lots.apply(ev))


@dataclass(slots=True)
class _TagCache:
    rule: TagRule | None
    conv: Converter | None
    unit: str  # unit of the clean reading
    numeric: bool
    prop: str


class Processor:
    """Processes one partition's readings (and lab results routed to it)."""

    def __init__(self, shared: SharedContext, config: ProcessorConfig | None = None, partition: int = 0) -> None:
        self.shared = shared
        self.config = config or ProcessorConfig()
        self.partition = partition
        self.dedup = Deduplicator(
            self.config.dedup_max_streams, self.config.dedup_max_spans, self.config.dedup_max_spans_total
        )
        self.validator = Validator()
        self.windows = WindowEngine(
            int(self.config.allowed_lateness_s * 1e6), int(self.config.idle_timeout_s * 1e6), lot_of=shared.lots.lot_at
        )
        self.specs = SpecChecker(shared.lots, shared.registry)
        # Per partition: a lot tag's readings share their equipment's partition, and the tracker's
        # only local state (per-tag high-water marks) must go when the partition is revoked.
        self.lot_tags = LotTagTracker(self.config.lot_tags, shared.lots)
        self._lot_tag_names: dict[str, frozenset[str]] = {}
        self._cache: dict[tuple[str, str, str], _TagCache] = {}
        self._cache_version = -1
        self.next_offset: int | None = None
        self.readings_in = 0
        self.late = 0

    # --- raw records ---------------------------------------------------------------------------

    def process_raw(
        self,
        value: bytes | None,
        origin: str,
        offset: int,
        now_us: int,
        key: bytes | None = None,
        headers: Sequence[tuple[str, bytes | None]] = (),
    ) -> Output:
        """Decode one raw-topic record and process it; undecodable -> a dead letter, never raises."""
        try:
            if value is None:
                raise CodecError("empty record (no value)")
            batch = decode_readings(value)
        except CodecError as exc:
            self._advance(offset)
            return Output(deadletters=[DeadLetter(value, exc.reason, origin, key, headers)])
        try:
            return self.process_batch(batch, offset, now_us)
        except Exception as exc:  # a bug must not stop the partition; the record is kept for replay
            log.exception("batch processing failed", extra={"kv": {"origin": origin}})
            self._advance(offset)
            return Output(deadletters=[DeadLetter(value, f"processing failed: {exc!r}", origin, key, headers)])

    def _advance(self, offset: int) -> None:
        if self.next_offset is None or offset + 1 > self.next_offset:
            self.next_offset = offset + 1

    def _tag(self, plant: str, tag: str, unit: str) -> _TagCache:
        if self._cache_version != self.shared.version:
            self._cache.clear()
            self._cache_version = self.shared.version
        key = (plant, tag, unit)
        tc = self._cache.get(key)
        if tc is not None:
            return tc
        rule = self.shared.rules.get((plant, tag))
        conv: Converter | None
        try:
            conv = compile_converter(unit)
        except UnitError:
            conv = None
        if rule is not None:
            numeric = rule.meta.datatype in ("float", "int", "bool")
            out_unit = rule.canonical if conv is not None and rule.meta.datatype in ("float", "int") else unit
            if (plant, tag) in self.shared.rule_errors:
                conv = None
            tc = _TagCache(rule, conv, out_unit, numeric, rule.meta.spec_property)
        else:
            bad_meta = (plant, tag) in self.shared.rule_errors
            tc = _TagCache(
                None,
                None if bad_meta else conv,
                conv.canonical if conv is not None and not bad_meta else unit,
                True,
                "",
            )
        if len(self._cache) > 500_000:
            self._cache.clear()
        self._cache[key] = tc
        return tc

    def process_batch(self, batch: ReadingBatch, offset: int, now_us: int) -> Output:
        """Validate, normalize, dedup, stamp and window one batch (see module doc)."""
        out = Output()
        n = len(batch)
        self._advance(offset)
        if n == 0:
            return out
        plant, eq = batch.plant, batch.equipment
        out.readings_in = n
        self.readings_in += n
        tss = batch.ts_us
        cfg = self.config
        ts_lo = now_us - int(cfg.clock_past_s * 1e6) if cfg.clock_past_s is not None else None
        ts_hi = now_us + int(cfg.clock_future_s * 1e6) if cfg.clock_future_s is not None else None
        ts_min, ts_max = min(tss), max(tss)
        clock_bad: frozenset[int] | None = None
        if (ts_lo is not None and ts_min < ts_lo) or (ts_hi is not None and ts_max > ts_hi):
            lo_ = ts_lo if ts_lo is not None else -(2**63)
            hi_ = ts_hi if ts_hi is not None else 2**63
            clock_bad = frozenset(i for i in range(n) if not lo_ <= tss[i] <= hi_)
        keep = self.dedup.filter(plant, eq, batch.source, batch.seq, tss, ts_hi)
        rows: Sequence[int] = range(n) if keep is None else keep
        out.duplicates = n - len(rows)
        if not rows:
            return out
        if self.lot_tags:
            # Before stamping: readings of this batch after a lot change carry the new lot. A
            # reading outside the clock window must not move a lot tag's time mark.
            self._derive_lots(batch, rows if clock_bad is None else [i for i in rows if i not in clock_bad], out)
        lots = self.shared.lots
        uniform, batch_lot = lots.uniform(plant, eq, ts_min, ts_max)
        clean = ReadingBatch(plant, eq, batch.origin, batch.source)
        # The columns this stage rewrites are built row by row below (STAMPED); every other
        # column of the contract is carried over for the kept rows after the loop.
        c_unit, c_val, c_q, c_lot, c_reason = clean.unit, clean.value, clean.quality, clean.lot, clean.reason
        tags, units, vals, quals, reasons = batch.tag, batch.unit, batch.value, batch.quality, batch.reason
        check = self.validator.check
        wadd = self.windows.add
        wstate = self.windows.state
        states: dict[str, Any] = {}
        late: dict[tuple[str, int], list[int]] = {}
        devs = out.deviations
        tagc = self._tag
        for i in rows:
            tag = tags[i]
            unit = units[i]
            t = tss[i]
            tc = tagc(plant, tag, unit)
            v, q, r = check(tc.rule, tc.conv, plant, tag, vals[i], t, quals[i], reasons[i])
            lot = batch_lot if uniform else lots.lot_at(plant, eq, t)
            if clock_bad is not None and i in clock_bad:
                # Kept and flagged, never windowed: one year-9999 reading would otherwise move the
                # tag's watermark for good (checkpointed) and make every later reading late.
                q = BAD
                why = _clock_reason(t, now_us, ts_lo, ts_hi)
                r = why if not r else f"{r}; {why}"
                out.clock_rejected += 1
            elif tc.numeric:
                st = states.get(tag)
                if st is None:
                    st = states[tag] = wstate(plant, tag, eq, tc.unit)
                wv = None if q == BAD or type(v) is str else float(v)
                res = wadd(st, t, wv, offset, now_us)
                if res != ACCEPTED and res == LATE:
                    r = LATE_REASON if not r else f"{r}; {LATE_REASON}"
                    lk = (tag, t - t % SECOND_US)
                    rec = late.get(lk)
                    if rec is None:
                        late[lk] = [1, t, t]
                    else:
                        rec[0] += 1
                        rec[1] = min(rec[1], t)
                        rec[2] = max(rec[2], t)
                if tc.prop and wv is not None:
                    found = self.specs.check(plant, eq, tag, tc.prop, tc.unit, t, wv, lot)
                    if found:
                        devs += found
            c_unit.append(tc.unit)
            c_val.append(v)
            c_q.append(q)
            c_lot.append(lot)
            c_reason.append(r)
        for name in CARRIED:
            col = getattr(batch, name)
            setattr(clean, name, col[:] if keep is None else list(map(col.__getitem__, rows)))
        out.clean.append(clean)
        if late:
            out.late = sum(x[0] for x in late.values())
            self.late += out.late
            for (tag, wstart), (count, lo, hi) in sorted(late.items()):
                devs.append(
                    Deviation(
                        id=deviation_id("late", plant, tag, wstart, offset),
                        kind=DeviationKind.LATE_DATA,
                        status=DeviationStatus.CLOSED,
                        plant=plant,
                        equipment=eq,
                        start_us=lo,
                        end_us=hi,
                        lot=lots.lot_at(plant, eq, lo),
                        tag=tag,
                        details={"window_start_us": wstart, "count": count, "reason": "late", "source": batch.source},
                    )
                )
        out.aggregates = self.windows.collect()
        return out

    def _derive_lots(self, batch: ReadingBatch, rows: Sequence[int], out: Output) -> None:
        plant = batch.plant
        names = self._lot_tag_names.get(plant)
        if names is None:
            names = self._lot_tag_names[plant] = frozenset(t for p, t in self.lot_tags.specs if p == plant)
        if not names:
            return
        tags, tss, vals, quals = batch.tag, batch.ts_us, batch.value, batch.quality
        observe = self.lot_tags.observe
        for i in rows:
            if tags[i] in names:
                out.context += observe(plant, batch.equipment, tags[i], tss[i], vals[i], quals[i])

    # --- context, time, checkpoints ------------------------------------------------------------

    def process_context(self, ev: ContextEvent, emit_lab: bool = True) -> Output:
        """Apply a context event to the lot context; lab results become deviations when
        ``emit_lab`` (only the processor owning the context partition should emit them)."""
        self.shared.apply_context(ev)
        out = Output()
        if emit_lab and ev.kind is ContextKind.LAB_RESULT:
            out.deviations = self.specs.lab_result(ev)
        return out

    def tick(self, now_us: int) -> Output:
        """Idle-timeout closing; call about once a second with processing time."""
        return Output(aggregates=self.windows.tick(now_us))

    def flush(self) -> Output:
        """Close all windows and excursions (end of a bounded run)."""
        return Output(aggregates=self.windows.flush(), deviations=self.specs.close_all())

    def safe_offset(self) -> int | None:
        """Offset to commit: the oldest offset still contributing to an open window, else the next
        unprocessed offset (None before the first record)."""
        oldest = self.windows.safe_offset()
        return oldest if oldest is not None else self.next_offset

    def checkpoint(self) -> dict[str, Any]:
        """State a restart needs besides re-reading from :meth:`safe_offset` (JSON-able)."""
        cp: dict[str, Any] = {
            "version": 1,
            "offset": self.safe_offset(),
            "horizons": [[p, t, h] for (p, t), h in sorted(self.windows.checkpoint().items())],
        }
        if self.lot_tags:
            cp["lot_tags"] = self.lot_tags.checkpoint()
        return cp

    def restore(self, cp: dict[str, Any], now_us: int | None = None) -> int:
        """Apply a checkpoint; with ``now_us`` and a clock window, a horizon or lot-tag time mark
        ahead of the window (written before the window existed, by a year-9999 reading) is
        dropped: restored, it would make every later reading a replay or ignored. Returns how
        many were dropped."""
        if cp.get("version") != 1:
            raise ValueError(f"unknown checkpoint version {cp.get('version')!r}")
        future = self.config.clock_future_s
        limit = now_us + int(future * 1e6) if now_us is not None and future is not None else None
        horizons = {(p, t): int(h) for p, t, h in cp.get("horizons", [])}
        marks = cp.get("lot_tags", [])
        dropped = 0
        if limit is not None:
            n = len(horizons)
            horizons = {k: h for k, h in horizons.items() if h <= limit + MINUTE_US}
            dropped = n - len(horizons)
            kept = [m for m in marks if not (isinstance(m, list) and m and type(m[-1]) is int and m[-1] > limit)]
            dropped += len(marks) - len(kept)
            marks = kept
        self.lot_tags.restore(marks)
        self.windows.restore(horizons)
        return dropped


def _clock_reason(t: int, now_us: int, lo: int | None, hi: int | None) -> str:
    if hi is not None and t > hi:
        return f"clock: source time {t} us is {(t - now_us) / 1e6:.0f} s ahead of the receiving clock (limit {(hi - now_us) / 1e6:.0f} s)"
    assert lo is not None
    return f"clock: source time {t} us is {(now_us - t) / 1e6:.0f} s behind the receiving clock (limit {(now_us - lo) / 1e6:.0f} s)"


def decode_context_record(value: bytes | None, origin: str, key: bytes | None = None) -> ContextEvent | DeadLetter:
    try:
        if value is None:
            raise CodecError("empty record (no value)")
        ev: ContextEvent = decode_context(value)
        return ev
    except CodecError as exc:
        return DeadLetter(value, exc.reason, origin, key)
