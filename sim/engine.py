"""Deterministic plant simulation: counter-based noise, signals, lots, lab results and faults.

Every value is a pure function of ``(seed, sample index)``: noise comes from a counter-based hash
(splitmix64), not from a stateful generator, so any sample can be recomputed on its own, a run
can be replayed exactly, and a test can look at sample 10 000 without producing the 9 999 before
it. Sim time of sample ``k`` is ``k * step_us`` (``step_us`` = speed / rate); lots follow a fixed
schedule in sim time. :class:`SimClock` maps sample indices to epoch timestamps that never pass the
wall clock. No I/O here; ``server.py`` serves a :class:`PlantModel` over real protocols.
"""

from __future__ import annotations

import enum
import hashlib
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Literal, TypedDict

from plantstream.contract import ContextEvent, ContextKind, Value
from plantstream.domain.materials import MATERIALS, PropertyLimit, lab_limits, process_limit
from plantstream.sim.catalog import SimTag

MASK64 = (1 << 64) - 1
MQTT_PREFIX = "plantstream-sim"


# --- counter-based noise -----------------------------------------------------------------------


def _mix(z: int) -> int:
    """splitmix64 finalizer: a bijective 64-bit scramble (Steele et al., 2014)."""
    z = (z + 0x9E3779B97F4A7C15) & MASK64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & MASK64
    return z ^ (z >> 31)


def stable_key(*parts: object) -> int:
    """A 64-bit key from names and numbers; stable across processes (unlike ``hash(str)``)."""
    digest = hashlib.blake2b("|".join(map(str, parts)).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little")


def uniform(key: int, n: int) -> float:
    """Uniform in [0, 1) for counter ``n`` of stream ``key``."""
    return (_mix(key ^ _mix(n & MASK64)) >> 11) * (1.0 / (1 << 53))


def gauss(key: int, n: int) -> float:
    """Approximately N(0, 1), bounded to [-3, 3] (scaled Irwin-Hall of three uniforms), so a
    signal's excursion is bounded by construction and range tests cannot flake."""
    h = _mix(key ^ _mix(n & MASK64))
    a, b, c = h & 0x1FFFFF, (h >> 21) & 0x1FFFFF, (h >> 42) & 0x1FFFFF
    return ((a + b + c) / float(0x1FFFFF) - 1.5) * 2.0


def smooth(key: int, t: float, period_s: float) -> float:
    """Smooth value noise in [-1, 1]: lattice points every ``period_s``, smoothstep between."""
    x = t / period_s
    i = math.floor(x)
    f = x - i
    f = f * f * (3.0 - 2.0 * f)
    a = uniform(key, i) * 2.0 - 1.0
    b = uniform(key, i + 1) * 2.0 - 1.0
    return a + (b - a) * f


# --- run identity and the sim clock ------------------------------------------------------------

_B36 = "0123456789abcdefghijklmnopqrstuvwxyz"


def run_id(t0_us: int) -> str:
    """The run's name in lot ids: its simulated start (ms since the epoch) in base 36.

    Lot ``i`` of a plant and seed starts at ``t0 + offset + i * period`` whatever the speed or rate,
    so runs with the same start serve the same lots (the same ids, reproducibly) and runs with
    different starts never share an id: a lot id names one lot, forever.
    """
    n = max(0, t0_us // 1000)
    out = ""
    while True:
        n, d = divmod(n, 36)
        out = _B36[d] + out
        if n == 0:
            return out


def lot_prefix(seed: int, run: str) -> str:
    """``007`` for seed 7 without a run (pure model tests), ``007-<run>`` in a served run.

    A served run keeps the whole seed (``1007`` stays ``1007``), so no two seeds share ids.
    """
    return f"{seed:03d}-{run}" if run else f"{seed % 1000:03d}"


@dataclass(frozen=True, slots=True)
class SimClock:
    """What sample ``k`` is stamped and when it may go out: never stamped after the wall clock.

    Sample ``k`` is stamped ``t0_us + k * step_us`` (``step_us`` = speed / rate). A loop started
    at wall time ``start_us`` (sample 0 went out then) schedules it at ``start_us + k / rate``,
    but never before its stamp: ``due_us(k) = max(schedule, stamp)``. :meth:`backfill` starts the
    sim clock ``(speed - 1) * duration`` before now, so a fast run fast-forwards through history
    that ends at the wall clock when its duration is up. With a shorter backfill (or none: no
    duration, or ``speed <= 1``) the stamp gates once it reaches the wall clock and sim time then
    runs at wall-clock pace, one sample per ``step_us``. All times are epoch microseconds.
    """

    t0_us: int
    step_us: int
    rate: float

    def __post_init__(self) -> None:
        if self.step_us < 1 or not self.rate > 0:
            raise ValueError(f"step must be >= 1 us and rate > 0 (got {self.step_us} us, {self.rate}/s)")

    @staticmethod
    def default_backfill_s(speed: float, duration_s: float | None) -> float:
        """Sim seconds of history a run of ``duration_s`` wall seconds at ``speed`` covers beyond
        wall time: ``(speed - 1) * duration``; 0 without a duration or at ``speed <= 1``."""
        return (speed - 1.0) * duration_s if speed > 1.0 and duration_s else 0.0

    @classmethod
    def backfill(
        cls, now_us: int, speed: float, rate: float, duration_s: float | None, backfill_s: float | None = None
    ) -> SimClock:
        """The clock of a run starting at ``now_us``: ``backfill_s`` sim seconds of history
        (default :meth:`default_backfill_s`), whole milliseconds (the run id's resolution)."""
        back_s = cls.default_backfill_s(speed, duration_s) if backfill_s is None else backfill_s
        if not back_s >= 0:
            raise ValueError(f"backfill must be >= 0 s (got {back_s})")
        return cls((now_us - round(back_s * 1e6)) // 1000 * 1000, round(1e6 * speed / rate), rate)

    @property
    def run(self) -> str:
        return run_id(self.t0_us)

    def stamp(self, k: int) -> int:
        return self.t0_us + k * self.step_us

    def schedule_us(self, k: int, start_us: int) -> int:
        return start_us + math.ceil(k * 1e6 / self.rate)

    def due_us(self, k: int, start_us: int) -> int:
        return max(self.schedule_us(k, start_us), self.stamp(k))

    def ready(self, wall_us: int) -> int:
        """How many samples (``0 .. n-1``) carry a stamp at or before ``wall_us`` (exact integers)."""
        if wall_us < self.t0_us:
            return 0
        return (wall_us - self.t0_us) // self.step_us + 1

    def due_count(self, wall_us: int, start_us: int) -> int:
        """How many samples are due at ``wall_us``: exactly those ``k`` with ``due_us(k) <= wall_us``."""
        if wall_us < start_us:
            return 0
        n = math.floor((wall_us - start_us) * self.rate / 1e6) + 1
        # The float estimate may be one off at a boundary; settle it on the integer schedule.
        while self.schedule_us(n, start_us) <= wall_us:
            n += 1
        while n > 0 and self.schedule_us(n - 1, start_us) > wall_us:
            n -= 1
        return min(n, self.ready(wall_us))


# --- signals -----------------------------------------------------------------------------------

Signal = Callable[[int, float], Value]
"""``signal(k, t)``: value of sample ``k`` at sim time ``t`` seconds."""


@dataclass(frozen=True, slots=True)
class Analog:
    """base + white noise + slow wander + oscillation, optionally sample-and-hold.

    Deviation from ``base`` is at most :attr:`bound` (noise is bounded at 3 sd), which is how
    the catalog keeps every unfaulted value inside its engineering range and spec window.
    """

    key: int
    base: float | Callable[[float], float]
    noise: float = 0.0  # sd of white noise
    wander: float = 0.0  # amplitude of smooth noise
    wander_s: float = 600.0
    wave: float = 0.0  # amplitude of a sinusoid (control-loop cycling, shifts)
    wave_s: float = 900.0
    hold_s: float = 0.0  # > 0: value changes only every hold_s (analyzers, spot readings)
    decimals: int = 3

    @property
    def bound(self) -> float:
        return 3.0 * self.noise + self.wander + self.wave

    def __call__(self, k: int, t: float) -> float:
        n = k
        if self.hold_s > 0:
            n = int(t // self.hold_s)
            t = n * self.hold_s
        base = self.base(t) if callable(self.base) else self.base
        v = base
        if self.noise:
            v += self.noise * gauss(self.key, n)
        if self.wander:
            v += self.wander * smooth(self.key + 1, t, self.wander_s)
        if self.wave:
            v += self.wave * math.sin(2.0 * math.pi * (t / self.wave_s + uniform(self.key, -1)))
        return round(v, self.decimals)


def running(key: int, block_s: float = 300.0, off_share: float = 0.03) -> Signal:
    """A run flag that is off for whole ``block_s`` blocks, ``off_share`` of them."""

    def sig(k: int, t: float) -> bool:
        return uniform(key, int(t // block_s)) >= off_share

    return sig


# --- lots --------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class LotStream:
    """Lots of one kind on one equipment, back to back: lot ``i`` runs ``[start(i), start(i+1))``.

    ``parents(i)`` gives the genealogy (a genealogy event follows the lot start); ``lab`` lists
    the properties the lab tests at lot end (+ ``lab_delay_s``), drawn against ``material``.
    """

    name: str
    equipment: str
    lot_kind: str
    material: str
    period_s: float
    lot_id: Callable[[int], str]
    offset_s: float = 0.0
    parents: Callable[[int], tuple[str, ...]] | None = None
    relation: str = ""
    attrs: Callable[[int], dict[str, float]] | None = None
    lab: tuple[str, ...] = ()
    lab_delay_s: float = 0.0

    def index_at(self, t: float) -> int | None:
        if t < self.offset_s:
            return None
        return int((t - self.offset_s) // self.period_s)

    def start(self, i: int) -> float:
        return self.offset_s + i * self.period_s

    def current(self, t: float) -> str:
        i = self.index_at(t)
        return "" if i is None else self.lot_id(i)


OUT_OF_SPEC_SHARE = 0.15


def draw_lab(
    material: str,
    properties: Sequence[str],
    attrs: dict[str, float],
    key: int,
    i: int,
    typical: dict[str, tuple[float, float]] | None = None,
) -> tuple[dict[str, tuple[float, str]], list[str]]:
    """Lab results of lot ``i``: ``({property: (value, unit)}, [properties drawn out of spec])``.

    About ``OUT_OF_SPEC_SHARE`` of lots get one property drawn outside its governing limit
    (by 3-20 % of the limit); the rest stay inside (in ``typical`` ranges where given).
    """
    limits = lab_limits(material, attrs)
    props = [p for p in properties if p in limits]
    bad: list[str] = []
    if props and uniform(key, i * 64 + 63) < OUT_OF_SPEC_SHARE:
        bad = [props[int(uniform(key, i * 64 + 62) * len(props))]]
    results: dict[str, tuple[float, str]] = {}
    for j, prop in enumerate(props):
        lim = limits[prop]
        u = uniform(key, i * 64 + j)
        if prop in bad:
            over = 0.03 + 0.17 * u
            if lim.max is not None and (lim.min is None or uniform(key, i * 64 + 61) < 0.5):
                v = lim.max * (1 + over) if lim.max > 0 else lim.max + over
            else:
                assert lim.min is not None
                v = lim.min * (1 - over) if lim.min > 0 else lim.min - over
        else:
            lo, hi = _typical_range(lim, (typical or {}).get(prop))
            v = lo + (hi - lo) * u
        results[prop] = (_round_sig(v, 4), lim.unit)
    return results, bad


def _typical_range(lim: PropertyLimit, typical: tuple[float, float] | None) -> tuple[float, float]:
    if typical is not None:
        return typical
    if lim.min is not None and lim.max is not None:
        w = lim.max - lim.min
        return lim.min + 0.15 * w, lim.max - 0.15 * w
    if lim.max is not None:
        return 0.3 * lim.max, 0.85 * lim.max
    assert lim.min is not None
    return lim.min * 1.03, lim.min * 1.15


def _round_sig(v: float, digits: int) -> float:
    if v == 0:
        return 0.0
    return round(v, digits - 1 - math.floor(math.log10(abs(v))))


# --- faults ------------------------------------------------------------------------------------


class FaultKind(enum.StrEnum):
    STUCK = "stuck"  # value frozen at the onset value
    SPIKE = "spike"  # large excursion, beyond the spec window (or engineering range)
    DROPOUT = "dropout"  # no updates; one bad-quality write at onset
    DRIFT = "drift"  # ramp that ends beyond the spec window


@dataclass(frozen=True, slots=True)
class Fault:
    tag: str
    kind: FaultKind
    start_k: int
    end_k: int  # exclusive

    def active(self, k: int) -> bool:
        return self.start_k <= k < self.end_k


# --- plant -------------------------------------------------------------------------------------


class SimTagOptions(TypedDict, total=False):
    """The keyword options of `sim_tag`, so plant builders can forward them with precise types."""

    datatype: Literal["float", "int", "bool", "str"]
    transport: Literal["opcua", "mqtt"]
    grade: Literal["core", "important", "general"]
    spec_property: str
    material: str
    description: str
    std_property: str


def sim_tag(
    plant: str,
    tag: str,
    equipment: str,
    unit: str,
    lo: float,
    hi: float,
    *,
    datatype: Literal["float", "int", "bool", "str"] = "float",
    transport: Literal["opcua", "mqtt"] = "opcua",
    grade: Literal["core", "important", "general"] = "general",
    spec_property: str = "",
    material: str = "",
    description: str = "",
    std_property: str = "",
) -> SimTag:
    """A catalog entry with its OPC-UA NodeId or MQTT topic filled in."""
    return SimTag(
        tag=tag,
        equipment=equipment,
        unit=unit,
        lo=lo,
        hi=hi,
        datatype=datatype,
        transport=transport,
        node_id=f"ns=2;s={tag}" if transport == "opcua" else "",
        mqtt_topic=f"{MQTT_PREFIX}/{plant}/{equipment}/{tag}" if transport == "mqtt" else "",
        grade=grade,
        spec_property=spec_property,
        material=material,
        description=description,
        std_property=std_property,
    )


@dataclass(slots=True)
class TagModel:
    meta: SimTag
    signal: Signal
    limit: PropertyLimit | None = None  # process spec window, when spec-checked


@dataclass
class PlantModel:
    """A simulated plant: tags with signals, lot streams, and the faults injected so far.

    ``sample(k)`` gives ``(value, good)`` per tag; a dropout gives ``(None, False)``.
    """

    name: str
    seed: int
    tags: list[TagModel]
    streams: list[LotStream]
    step_us: int = 1_000_000
    lab_typical: dict[str, tuple[float, float]] = field(default_factory=dict)
    faults: list[Fault] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.index = {t.meta.tag: i for i, t in enumerate(self.tags)}
        if len(self.index) != len(self.tags):
            raise ValueError(f"{self.name}: duplicate tag names")
        for t in self.tags:
            if t.meta.spec_property and t.limit is None:
                t.limit = process_limit(t.meta.material, t.meta.spec_property)
                if t.limit is None:
                    raise ValueError(f"{t.meta.tag}: no process limit {t.meta.spec_property!r} in {t.meta.material!r}")
        self._by_tag: dict[str, list[Fault]] = {}

    # time
    def t_of(self, k: int) -> float:
        return k * self.step_us / 1e6

    def samples_for(self, seconds: float) -> int:
        return max(1, round(seconds * 1e6 / self.step_us))

    # values
    def raw(self, i: int, k: int) -> Value:
        return self.tags[i].signal(k, self.t_of(k))

    def value(self, i: int, k: int) -> tuple[Value | None, bool]:
        tm = self.tags[i]
        faults = self._by_tag.get(tm.meta.tag)
        if faults:
            for f in reversed(faults):  # the latest injected fault wins
                if f.active(k):
                    return self._faulted(i, f, k)
        return tm.signal(k, self.t_of(k)), True

    def sample(self, k: int) -> list[tuple[Value | None, bool]]:
        return [self.value(i, k) for i in range(len(self.tags))]

    def add_fault(self, tag: str, kind: str, start_k: int, duration_s: float) -> Fault:
        """Schedule a fault; ValueError for an unknown tag/kind or a kind the tag's type cannot take."""
        if tag not in self.index:
            raise ValueError(f"unknown tag {tag!r} in plant {self.name}")
        try:
            fk = FaultKind(kind)
        except ValueError:
            raise ValueError(f"unknown fault kind {kind!r}; one of {', '.join(k.value for k in FaultKind)}") from None
        if not duration_s > 0:
            raise ValueError("fault duration must be > 0 s")
        dt = self.tags[self.index[tag]].meta.datatype
        if (fk is FaultKind.DRIFT and dt not in ("float", "int")) or (fk is FaultKind.SPIKE and dt == "str"):
            raise ValueError(f"fault {fk.value} does not apply to {dt} tag {tag!r}")
        fault = Fault(tag, fk, start_k, start_k + self.samples_for(duration_s))
        self.faults.append(fault)
        self._by_tag.setdefault(tag, []).append(fault)
        return fault

    def excursion_limits(self, i: int) -> tuple[float | None, float | None, float]:
        """(low, high, span) a spike/drift must leave: the spec window, else the engineering range."""
        tm = self.tags[i]
        span = tm.meta.hi - tm.meta.lo
        if tm.limit is not None:
            return tm.limit.min, tm.limit.max, span
        return tm.meta.lo, tm.meta.hi, span

    def _faulted(self, i: int, f: Fault, k: int) -> tuple[Value | None, bool]:
        meta = self.tags[i].meta
        if f.kind is FaultKind.DROPOUT:
            return None, False
        onset = self.raw(i, f.start_k)
        if f.kind is FaultKind.STUCK:
            return onset, True
        raw = self.raw(i, k)
        if isinstance(raw, bool):  # a spiking switch chatters
            return (not raw) if (k - f.start_k) % 2 == 0 else raw, True
        lo, hi, span = self.excursion_limits(i)
        assert isinstance(raw, int | float) and isinstance(onset, int | float)
        up = hi is not None
        edge = hi if up else lo
        assert edge is not None
        sign = 1.0 if up else -1.0
        if f.kind is FaultKind.SPIKE:
            v = (max(raw, edge) if up else min(raw, edge)) + sign * span * (0.2 + 0.05 * uniform(f.start_k, k))
        else:  # drift: linear ramp ending 25 % of the span beyond the edge
            frac = (k - f.start_k + 1) / (f.end_k - f.start_k)
            v = raw + frac * (edge + sign * 0.25 * span - onset)
        if meta.datatype == "int":
            return round(v), True
        return round(v, 3), True

    # lots
    def events(self, a_s: float, b_s: float, t0_us: int) -> list[ContextEvent]:
        """Context events with sim time in ``(a_s, b_s]``, in time order."""
        out: list[tuple[float, int, ContextEvent]] = []
        for s in self.streams:
            first = max(0, math.floor((a_s - s.offset_s - s.lab_delay_s) / s.period_s) - 1)
            last = math.floor((b_s - s.offset_s) / s.period_s)
            for i in range(first, last + 1):
                for t, order, ev in self._lot_events(s, i, t0_us):
                    if a_s < t <= b_s:
                        out.append((t, order, ev))
        out.sort(key=lambda x: (x[0], x[1]))
        return [ev for _, _, ev in out]

    def _lot_events(self, s: LotStream, i: int, t0_us: int) -> list[tuple[float, int, ContextEvent]]:
        lot = s.lot_id(i)
        attrs = s.attrs(i) if s.attrs else {}
        start, end = s.start(i), s.start(i + 1)

        def ev(kind: ContextKind, t: float, **kw: object) -> ContextEvent:
            return ContextEvent(
                kind=kind,
                plant=self.name,
                equipment=s.equipment,
                ts_us=t0_us + round(t * 1e6),
                lot=lot,
                lot_kind=s.lot_kind,
                material=s.material,
                **kw,  # type: ignore[arg-type]
            )

        # Order within one instant: ends before starts, so a lot handover reads naturally.
        out = [(start, 1, ev(ContextKind.LOT_START, start, attrs=dict(attrs)))]
        if s.parents is not None:
            out.append((start, 2, ev(ContextKind.GENEALOGY, start, parents=s.parents(i), relation=s.relation)))
        out.append((end, 0, ev(ContextKind.LOT_END, end)))
        if s.lab and s.material in MATERIALS:
            results, _ = draw_lab(s.material, s.lab, attrs, stable_key(self.seed, s.name, "lab"), i, self.lab_typical)
            t_lab = end + s.lab_delay_s
            out.append(
                (t_lab, 3, ev(ContextKind.LAB_RESULT, t_lab, results=results, attrs={**attrs, "sample": f"{lot}-L1"}))
            )
        return out

    def stream(self, name: str) -> LotStream:
        for s in self.streams:
            if s.name == name:
                return s
        raise KeyError(name)


def lot_signal(stream: LotStream) -> Signal:
    """The current lot id of ``stream`` ("" before its first lot)."""

    def sig(k: int, t: float) -> str:
        return stream.current(t)

    return sig


def lot_count(stream: LotStream) -> Signal:
    """Lots started so far on ``stream`` (an Int64 counter)."""

    def sig(k: int, t: float) -> int:
        i = stream.index_at(t)
        return 0 if i is None else i + 1

    return sig


def lot_phase(stream: LotStream, t: float) -> float:
    """How far through its current lot ``stream`` is at ``t``: 0 <= phase < 1 (0 before the first)."""
    i = stream.index_at(t)
    if i is None:
        return 0.0
    return (t - stream.start(i)) / stream.period_s
